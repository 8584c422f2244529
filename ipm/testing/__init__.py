"""Test support for hosts and adapters: in-memory ports and contract suites.

Each capability's storage contract lives in its own module here; an
adapter (a host's own, or a future PostgreSQL one) proves itself by
subclassing every contract class and providing a ``storage`` fixture.
Importing this package needs pytest.
"""

from ipm.adapters.blobs import MemoryBlobStore
from ipm.adapters.keyring import MemoryKeyring
from ipm.adapters.memory import MemoryStorage
from ipm.adapters.notifier import MemoryNotifier
from ipm.testing.jobs import BlobStoreContract, JobStorageContract
from ipm.testing.kpis import KpiStorageContract
from ipm.testing.storage import FixedClock, StorageContract, new_event
from ipm.testing.webhooks import (
    LocalReceiver,
    ScriptedTransport,
    WebhookStorageContract,
)

__all__ = [
    "BlobStoreContract",
    "FixedClock",
    "JobStorageContract",
    "KpiStorageContract",
    "LocalReceiver",
    "MemoryBlobStore",
    "MemoryKeyring",
    "MemoryNotifier",
    "MemoryStorage",
    "ScriptedTransport",
    "StorageContract",
    "WebhookStorageContract",
    "new_event",
]
