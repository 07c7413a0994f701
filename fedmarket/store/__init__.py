"""Content-addressed storage with IPFS-identical CIDs: LocalStore (embedded) and IpfsStore."""

from fedmarket.store.base import ContentStore
from fedmarket.store.cid import canonical, parse_cid
from fedmarket.store.ipfs import IpfsStore
from fedmarket.store.local import LocalStore

__all__ = ["ContentStore", "IpfsStore", "LocalStore", "canonical", "parse_cid"]
