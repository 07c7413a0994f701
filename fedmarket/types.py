"""Identifier types shared across fedmarket."""

from __future__ import annotations

from typing import NewType

DeviceId = NewType("DeviceId", str)
"""Stable name of a device (e.g. ``device-3``); keys its privacy ledger."""

DatasetId = NewType("DatasetId", str)
"""Content fingerprint of a device's local data set (hex sha256)."""

Cid = NewType("Cid", str)
"""Content identifier in its canonical text form: CIDv1, base32 (``bafy…`` / ``bafk…``)."""

Address = NewType("Address", str)
"""An Ethereum address in checksum form."""

TaskId = NewType("TaskId", int)
ListingId = NewType("ListingId", int)
PurchaseId = NewType("PurchaseId", int)
