"""Storage service: content-addressed blobs, the dataset catalog, the blob protocol, replication.

* :class:`BlobStore` (blobstore.py): SHA-256-named files, atomic writes, verified reads.
* :class:`Catalog` (catalog.py): ``storage_catalog`` in the node database, quotas.
* :func:`inspect_upload` (ingest.py): validation at the door (schema, bad rows, empty and binary files).
* :class:`BlobServer` / :class:`BlobClient` (protocol.py): ``/metanode/blob/1.0.0``.
* :class:`StorageService` (service.py): store, replicate, fetch.
* :class:`RepairLoop` (repair.py): keeps the replicas this node holds present and verified.
* :func:`register_storage_methods` (rpc.py): ``dataset_upload``, ``dataset_upload_status``,
  ``dataset_list``, ``dataset_get``.

The formats are documented in docs/storage.md.
"""

from node.roles.storage.blobstore import BlobStore
from node.roles.storage.catalog import Catalog, DatasetInfo, Holdings, QuotaPolicy, inspect_dataset
from node.roles.storage.errors import StorageError
from node.roles.storage.ingest import Inspection, inspect_upload
from node.roles.storage.protocol import BLOB_PROTOCOL, BlobClient, BlobServer
from node.roles.storage.repair import RepairLoop, RepairSettings
from node.roles.storage.rpc import Uploads, register_storage_methods
from node.roles.storage.service import StorageService

__all__ = [
    "BLOB_PROTOCOL", "BlobClient", "BlobServer", "BlobStore", "Catalog", "DatasetInfo", "Holdings", "Inspection",
    "QuotaPolicy", "RepairLoop", "RepairSettings", "StorageError", "StorageService", "Uploads", "inspect_dataset",
    "inspect_upload", "register_storage_methods",
]
