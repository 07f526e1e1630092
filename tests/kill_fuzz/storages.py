"""Open any storage the tests use from one string, so child processes can be told where to go.

* an SQLAlchemy URL (``sqlite:///...``, ``postgresql+psycopg://...``, ``mysql+pymysql://...``);
* ``grpc://HOST:PORT``: a :class:`optuna.storages.GrpcStorageProxy`;
* ``journal-file:///PATH``: a :class:`optuna.storages.JournalStorage` on a file;
* ``journal-redis://HOST:PORT/DB?prefix=P``: a :class:`optuna.storages.JournalStorage` on Redis.

Imported by ``child.py`` (run as a script, from this folder) and by the tests.
"""

from __future__ import annotations

from urllib.parse import parse_qs
from urllib.parse import urlsplit

import optuna
from optuna.storages import BaseStorage


def open_storage(address: str) -> str | BaseStorage:
    """The storage (or URL, for Optuna to open) that ``address`` names."""
    scheme, _, rest = address.partition("://")
    if scheme == "grpc":
        host, _, port = rest.partition(":")
        proxy = optuna.storages.GrpcStorageProxy(host=host, port=int(port))
        proxy.wait_server_ready(timeout=30)
        return proxy
    if scheme == "journal-file":
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(rest))
    if scheme == "journal-redis":
        parts = urlsplit("redis://" + rest)
        prefix = parse_qs(parts.query).get("prefix", [""])[0]
        url = parts._replace(query="").geturl()
        return optuna.storages.JournalStorage(
            optuna.storages.journal.JournalRedisBackend(url, prefix=prefix)
        )
    return address
