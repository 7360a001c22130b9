"""Partition storage: segment files, sparse indexes, recovery, retention (docs/storage.md).

``AsyncLog`` is what the server uses; ``Log`` is its synchronous core.
"""

from broker.storage.async_log import AsyncLog
from broker.storage.config import CleanupPolicy, FlushPolicy, LogConfig
from broker.storage.file_handle import FileRegion
from broker.storage.log import Log, LogAppend, RetentionResult

__all__ = [
    "AsyncLog",
    "CleanupPolicy",
    "FileRegion",
    "FlushPolicy",
    "Log",
    "LogAppend",
    "LogConfig",
    "RetentionResult",
]
