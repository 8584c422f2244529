"""In-memory adapters: real behaviour (locks, transactions, same errors)."""

from ipm.adapters.memory.core import MemoryStorage, MemoryUnitOfWork

__all__ = ["MemoryStorage", "MemoryUnitOfWork"]
