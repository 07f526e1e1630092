"""An append-only log of checksummed records, with small overwritable slots beside it.

This is the storage layer of :mod:`optuna_checkpoint.stores._journal`: it knows frames,
positions, locking and compare-and-swap, and nothing of streams or checkpoints. This module
names the record log's parts, which live in the modules below it:

* :mod:`._record_format`: the bytes of a record (:class:`Record`) and of the slot values;
* :mod:`._record_log_base`: the contract, :class:`RecordLog` and its :class:`Transaction`;
* :mod:`._record_log_file`: :class:`FileRecordLog`, a file with two slot files beside it;
* :mod:`._record_log_redis`: :class:`RedisRecordLog`, one Redis key per record and two hashes.
"""

from __future__ import annotations

from optuna_checkpoint.stores._record_format import BASE_KEY
from optuna_checkpoint.stores._record_format import CATALOG_KEY
from optuna_checkpoint.stores._record_format import Record
from optuna_checkpoint.stores._record_log_base import LogBusyError
from optuna_checkpoint.stores._record_log_base import RecordLog
from optuna_checkpoint.stores._record_log_base import RecordSink
from optuna_checkpoint.stores._record_log_base import Transaction
from optuna_checkpoint.stores._record_log_file import FileRecordLog
from optuna_checkpoint.stores._record_log_redis import RedisRecordLog


__all__ = [
    "BASE_KEY",
    "CATALOG_KEY",
    "FileRecordLog",
    "LogBusyError",
    "Record",
    "RecordLog",
    "RecordSink",
    "RedisRecordLog",
    "Transaction",
]
