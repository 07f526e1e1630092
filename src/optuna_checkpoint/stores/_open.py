"""Which checkpoint store serves a given Optuna storage.

``store_for`` is what a sampler uses: it creates the side tables or side record on first use.
``existing_store`` is what read-only tools use: it creates nothing, and answers ``None`` for a
storage that has never held a checkpoint.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from optuna.storages import InMemoryStorage
from optuna.storages.journal import JournalFileBackend
import sqlalchemy as sa

from optuna_checkpoint._logging import get_logger
from optuna_checkpoint.stores._attrs import AttributeCheckpointStore
from optuna_checkpoint.stores._journal import SIDE_FILE_SUFFIX
from optuna_checkpoint.stores._journal import JournalCheckpointStore
from optuna_checkpoint.stores._journal import resolve_journal_storage
from optuna_checkpoint.stores._sql import SQLCheckpointStore
from optuna_checkpoint.stores._sql import resolve_rdb_storage
from optuna_checkpoint.stores._sql import streams as streams_table


if TYPE_CHECKING:
    from optuna.storages import BaseStorage

    from optuna_checkpoint.stores._base import CheckpointStore


_logger = get_logger(__name__)


def store_for(storage: BaseStorage) -> CheckpointStore:
    """The checkpoint store of ``storage``, created on first use."""
    rdb = resolve_rdb_storage(storage)
    if rdb is not None:
        return SQLCheckpointStore.for_storage(rdb)
    journal = resolve_journal_storage(storage)
    if journal is not None:
        return JournalCheckpointStore.for_storage(journal)
    if isinstance(storage, InMemoryStorage):
        _logger.warning(
            "The study is in memory: its checkpoints are kept in memory too, so it cannot be "
            "resumed by another process. Use a database URL such as sqlite:///study.db."
        )
    # GrpcStorageProxy, and any other storage: through Optuna's public storage API.
    return AttributeCheckpointStore.for_storage(storage)


def existing_store(storage: BaseStorage) -> CheckpointStore | None:
    """The checkpoint store of ``storage``, or ``None`` if it has never held a checkpoint.

    Unlike :func:`store_for`, this creates no tables and no side record.
    """
    rdb = resolve_rdb_storage(storage)
    if rdb is not None:
        if not sa.inspect(rdb.engine).has_table(streams_table.name):
            return None
        return SQLCheckpointStore.for_storage(rdb)
    journal = resolve_journal_storage(storage)
    if journal is not None:
        backend = getattr(journal, "_backend", None)
        path = getattr(backend, "_file_path", None)
        if (
            isinstance(backend, JournalFileBackend)
            and isinstance(path, (str, os.PathLike))
            and not os.path.exists(os.fspath(path) + SIDE_FILE_SUFFIX)
        ):
            return None
        return JournalCheckpointStore.for_storage(journal)
    return AttributeCheckpointStore.for_storage(storage)
