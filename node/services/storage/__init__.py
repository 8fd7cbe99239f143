"""Storage service: content-addressed blobs, the dataset catalog, the blob protocol, replication.

* :class:`BlobStore` (blobstore.py): SHA-256-named files, atomic writes, verified reads.
* :class:`Catalog` (catalog.py): ``storage_catalog`` in the node database, schemas read by DuckDB, quotas.
* :class:`BlobServer` / :class:`BlobClient` (protocol.py): ``/metanode/blob/1.0.0``.
* :class:`StorageService` (service.py): store, replicate, fetch.
* :func:`register_storage_methods` (rpc.py): ``dataset_upload``, ``dataset_list``, ``dataset_get``.
"""

from node.services.storage.blobstore import BlobStore
from node.services.storage.catalog import Catalog, DatasetInfo, QuotaPolicy, inspect_dataset
from node.services.storage.errors import StorageError
from node.services.storage.protocol import BLOB_PROTOCOL, BlobClient, BlobServer
from node.services.storage.rpc import Uploads, register_storage_methods
from node.services.storage.service import StorageService

__all__ = [
    "BLOB_PROTOCOL", "BlobClient", "BlobServer", "BlobStore", "Catalog", "DatasetInfo", "QuotaPolicy",
    "StorageError", "StorageService", "Uploads", "inspect_dataset", "register_storage_methods",
]
