"""A real embedded store (chDB) owned by a child process, for tests that need one without a server.

One process can open one chDB path for its whole life: a second path fails ("Error initializing
EmbeddedServer"), even after the first store is closed. Tests therefore never open a store in
the pytest process (it would break every later test that opens another path); a spawned child
owns the store and runs module-level functions ``function(store, *args)`` sent to it. Arguments,
results and exceptions travel pickled, so they are the real objects (``CreditGrant``,
``CreditLedger``, ``CreditError``).
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Callable

_store = None


def _open(path: str, database: str) -> None:
    global _store
    from otel_meter.storage.store import Store, resolve_location

    _store = Store(resolve_location(f"chdb://{path}", database))
    _store.migrate()


def _run(function: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
    return function(_store, *args, **kwargs)


class ChdbWorker:
    """A child process that opens the store at ``path`` (migrated) and runs functions on it."""

    def __init__(self, path: Path, database: str = "otel_meter") -> None:
        self._pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                                         initializer=_open, initargs=(str(path), database))

    def call(self, function: Callable[..., Any], *args: Any, timeout: float = 60, **kwargs: Any) -> Any:
        return self._pool.submit(_run, function, args, kwargs).result(timeout)

    def close(self) -> None:
        """End the child, which releases the path (a server may open it then)."""
        self._pool.shutdown(wait=True)

    def __enter__(self) -> ChdbWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def store_migrated_before(store: Any, database: str, version: int) -> Any:
    """A store in ``database`` beside the worker's ``store``, with the migrations before
    ``version`` applied and recorded, as an older otel-meter left it (run in the worker)."""
    from otel_meter.storage.store import Store, available_migrations, resolve_location, split_statements

    old = Store(resolve_location(store.location.dsn, database))
    old.client.command("CREATE TABLE IF NOT EXISTS schema_migrations (version UInt32, name String, applied_at "
                       "DateTime64(3, 'UTC') DEFAULT now64(3)) ENGINE = MergeTree ORDER BY version")
    for number, name, sql in available_migrations():
        if number < version:
            for statement in split_statements(sql):
                old.client.command(statement)
            old.client.insert("schema_migrations", [[number, name]], column_names=["version", "name"])
    return old
