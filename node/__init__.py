"""metanode: a peer-to-peer node daemon for verifiable multi-party analytics."""

__version__ = "0.1.0"
