"""The ClickHouse store: one clickhouse-connect client, embedded (chDB) or a server.

``chdb://PATH`` opens the real ClickHouse engine in this process (one process owns a
path); ``http(s)://user:pass@host:8123/db`` talks to a ClickHouse server or cluster.
The same SQL serves both.

A server may be unreachable when the service starts, or go away for a while. The service
then starts anyway (:meth:`Store.open`): the store connects, creates the database and
applies the migrations on first use, at most one attempt a second. Until then calls fail
fast with :class:`StoreUnavailableError`, acknowledged usage waits in the exporters' local
queues (attached with :meth:`Store.attach_queue`, so the dedup and metric-series answers
include it), and the rate card history is answered from a local copy, with versions
applied meanwhile inserted before the next usage block.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, TypeVar, cast
from urllib.parse import urlsplit

import clickhouse_connect
import pyarrow as pa
import pyarrow.compute as pc
from clickhouse_connect.driver.client import Client

from otel_meter.errors import StoreAccessError, StoreError, StoreLockedError, StoreUnavailableError
from otel_meter.storage import queries

if TYPE_CHECKING:
    from otel_meter.rating.rate_card import CardVersion

logger = logging.getLogger(__name__)
T = TypeVar("T")

RECONNECT_INTERVAL = 1.0
"""Seconds between two attempts to reach a server that is not connected yet."""
ACCESS_ERROR_CODES = frozenset({192, 193, 194, 195, 497, 516})
"""UNKNOWN_USER, WRONG_PASSWORD, REQUIRED_PASSWORD, IP_ADDRESS_NOT_ALLOWED, ACCESS_DENIED,
AUTHENTICATION_FAILED: refused credentials or rights, which waiting does not fix."""
FAILURE_LOG_INTERVAL = 30.0
"""A failure that repeats (each request's dedup check, a refused password) is logged once per this many seconds."""
RATE_CARDS_COPY = "rate-cards.json"
"""The local copy of the applied rate card versions, in the state directory."""

QueuedUsage = Callable[[list[str]], Iterable[pa.Table]]
"""Given column names, the blocks of usage acknowledged but not yet stored (oldest first)."""

INSERT_SETTINGS = {
    # Set explicitly: defaults differ across ClickHouse versions (26.x turned async_insert on).
    "async_insert": 0,
    "deduplicate_blocks_in_dependent_materialized_views": 1,
    # A backfill may span years of monthly partitions in one block; refusing it would stall
    # the queue behind it for good.
    "max_partitions_per_insert_block": 0,
    # On a cluster (deploy/cluster) the landing table is Distributed: forward to the shards
    # before answering, so an acknowledged insert is on them. The old name works on every
    # version (it is an alias of distributed_foreground_insert since 23.x).
    "insert_distributed_sync": 1,
}


@dataclass(frozen=True)
class StoreLocation:
    dsn: str
    database: str
    embedded_path: Path | None

    def describe(self) -> str:
        if self.embedded_path is not None:
            return f"embedded ClickHouse (chDB) at {self.embedded_path}"
        parts = urlsplit(self.dsn)
        return f"ClickHouse server {parts.hostname}:{parts.port or ''}".rstrip(":")


def resolve_location(endpoint: str, database: str) -> StoreLocation:
    """Normalise an exporter endpoint; a relative chDB path resolves against the working directory."""
    if endpoint.startswith("chdb://"):
        path_text = endpoint[len("chdb://"):]
        if not path_text:
            raise StoreError("clickhouse endpoint chdb:// needs a path, e.g. chdb://./data")
        path = Path(path_text).expanduser().resolve()
        return StoreLocation(dsn=f"chdb://{path}", database=database, embedded_path=path)
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https"):
        raise StoreError(f"clickhouse endpoint {endpoint!r}: use chdb://PATH or http(s)://user:pass@host:8123/db")
    db_in_path = parts.path.strip("/")
    return StoreLocation(dsn=endpoint, database=db_in_path or database, embedded_path=None)


class Store:
    """Schema, inserts and queries; safe to share between threads.

    ``Store(location)`` connects at once and raises :class:`StoreError` if it cannot (the
    CLI's way). :meth:`open` is the service's: a server that cannot be reached yet is
    connected to on first use instead.
    """

    def __init__(self, location: StoreLocation, connect_timeout: float = 10.0, *,
                 send_receive_timeout: float | None = None, connect: bool = True, migrate_on_connect: bool = False,
                 state_directory: Path | None = None) -> None:
        self.location = location
        self.connect_timeout = connect_timeout
        self.send_receive_timeout = send_receive_timeout
        self.migrate_on_connect = migrate_on_connect
        self.state_directory = state_directory
        self._client: Client | None = None
        self._connecting = threading.Lock()
        self._next_attempt = 0.0
        self._failures = 0
        self._down_since: float | None = None
        self._last_error = "not connected yet"
        self._queues: list[QueuedUsage] = []
        self._closed = threading.Event()
        self._failure_logged: dict[str, float] = {}
        self._cards_lock = threading.Lock()
        self._pending_cards: list[list[Any]] = self._read_cards_copy().get("pending", [])
        """Rate card version rows applied while the store was unreachable, not inserted yet."""
        if connect:
            self._client = self._connect(connect_timeout)

    @classmethod
    def open(cls, location: StoreLocation, *, migrate: bool, state_directory: Path | None = None,
             connect_timeout: float = 10.0, send_receive_timeout: float | None = None) -> Store:
        """The service's store. An embedded store opens (and migrates) now or raises; a server
        that cannot be reached is logged and connected to (and migrated) on first use. A
        server that refuses the credentials or rights raises StoreAccessError now."""
        store = cls(location, connect_timeout, send_receive_timeout=send_receive_timeout, connect=False,
                    migrate_on_connect=migrate, state_directory=state_directory)
        if location.embedded_path is not None:
            store._client = store._connect(connect_timeout)
            if migrate:
                store.migrate()
            return store
        try:
            store._ready_client()
        except StoreUnavailableError as error:
            logger.warning("%s; starting anyway: acknowledged usage waits in the local queue and is stored "
                           "once the server answers (retried every %.0fs)", error, RECONNECT_INTERVAL)
            threading.Thread(target=store._keep_connecting, name="store-connect", daemon=True).start()
        return store

    def _keep_connecting(self) -> None:
        """Until connected: so that the schema is ready and health checks see the server
        come back even when no usage is waiting to be inserted."""
        while self._client is None and not self._closed.wait(RECONNECT_INTERVAL):
            try:
                self._ready_client()
            except StoreUnavailableError:
                pass
            except StoreAccessError as error:  # e.g. a password changed meanwhile
                self._log_throttled("access", logging.ERROR, "%s", error)
            except Exception:  # noqa: BLE001 - never expected on a server
                logger.exception("connecting to %s failed", self.location.describe())

    @property
    def client(self) -> Client:
        """The connected client; connects first if needed. Raises StoreUnavailableError when a
        server cannot be reached (fast, while the last attempt is less than a second old)."""
        return self._ready_client()

    @property
    def connected(self) -> bool:
        return self._client is not None

    def _ready_client(self) -> Client:
        client = self._client
        if client is not None:
            return client
        if time.monotonic() < self._next_attempt or not self._connecting.acquire(blocking=False):
            raise self._unavailable()
        try:
            if self._client is not None:
                return self._client
            try:
                client = self._connect(self.connect_timeout)
                if self.migrate_on_connect:
                    applied = _migrate(client)
                    if applied:
                        logger.info("applied %d migration(s) to %s: %s", len(applied), self.location.describe(),
                                    ", ".join(applied))
            except StoreLockedError:
                raise
            except StoreAccessError as error:
                self._failed(str(error))
                raise
            except StoreError as error:
                self._failed(str(error))
                raise self._unavailable() from None
            except Exception as error:  # a migration statement failing on a server going away
                self._failed(f"cannot prepare {self.location.describe()}: {first_line(error)}")
                raise self._unavailable() from None
            if self._failures:
                logger.info("connected to %s after %d failed attempt(s) over %.1fs", self.location.describe(),
                            self._failures, time.monotonic() - (self._down_since or time.monotonic()))
            else:
                logger.info("connected to %s", self.location.describe())
            self._failures, self._down_since = 0, None
            self._client = client
            return client
        finally:
            self._connecting.release()

    def _failed(self, message: str) -> None:
        self._failures += 1
        self._last_error = message
        if self._down_since is None:
            self._down_since = time.monotonic()
        self._next_attempt = time.monotonic() + RECONNECT_INTERVAL

    def _unavailable(self) -> StoreUnavailableError:
        return StoreUnavailableError(f"{self.location.describe()} is unreachable ({self._last_error})")

    def own_client(self) -> Client:
        """A client of its own for one thread's work: its queries run beside those of the store's
        shared client (which serializes its callers: one chDB handle takes one call at a time)."""
        return self._connect(self.connect_timeout)

    def engine_connection(self) -> Any:
        """A chDB connection of its own to the embedded engine (a ``chdb.state.Connection``), for
        streaming an insert's bytes to the engine with ``send_insert``: clickhouse-connect's chDB
        backend writes every raw insert to a temporary file and inserts ``FROM INFILE``, which
        costs the engine hot path ~0.8 us a span. It uses the store's database, as :meth:`own_client` does."""
        if self.location.embedded_path is None:
            raise StoreError(f"{self.location.describe()} is not an embedded engine; it has no chDB connection")
        import chdb  # lazy: importing the engine takes ~0.3 s, which a store on a server never needs

        self.location.embedded_path.mkdir(parents=True, exist_ok=True)
        connection = chdb.connect(str(self.location.embedded_path))
        connection.query(f"USE {quote_identifier(self.location.database)}")
        return connection

    def _connect(self, connect_timeout: float) -> Client:
        location = self.location
        try:
            if location.embedded_path is not None:
                location.embedded_path.mkdir(parents=True, exist_ok=True)
                bootstrap = clickhouse_connect.get_client(dsn=location.dsn)
                bootstrap.command(f"CREATE DATABASE IF NOT EXISTS {quote_identifier(location.database)}")
                return clickhouse_connect.get_client(dsn=location.dsn, database=location.database)
            parts = urlsplit(location.dsn)
            # No HTTP session: the exporter, the dedup checks of requests and the usage API
            # share this client from several threads, and a ClickHouse session takes one
            # query at a time (clickhouse-connect refuses a second one at once: "Attempt to
            # execute concurrent queries within the same session"). Nothing here needs
            # session state.
            options: dict[str, Any] = {"connect_timeout": connect_timeout, "autogenerate_session_id": False}
            if self.send_receive_timeout is not None:
                options["send_receive_timeout"] = self.send_receive_timeout
            bootstrap = clickhouse_connect.get_client(dsn=location.dsn, database="default", **options)
            try:
                bootstrap.command(f"CREATE DATABASE IF NOT EXISTS {quote_identifier(location.database)}")
            finally:
                bootstrap.close()
            return clickhouse_connect.get_client(dsn=parts._replace(path="").geturl(), database=location.database,
                                                 **options)
        except Exception as error:  # clickhouse-connect and chDB raise several unrelated types
            text = str(error)
            if "Cannot lock file" in text or "already running" in text or "EmbeddedServer" in text:
                raise StoreLockedError(
                    f"{location.describe()} is in use by another process (one process owns an embedded store); "
                    f"stop it, or query it through its usage API") from None
            if getattr(error, "code", None) in ACCESS_ERROR_CODES:
                raise StoreAccessError(
                    f"{location.describe()} refused the connection's user or rights: "
                    f"{text.splitlines()[0] if text else error!r}; check the user and password in the endpoint "
                    f"and that the user may create the database and tables") from None
            first_line = text.splitlines()[0] if text else repr(error)
            raise StoreError(f"cannot open {location.describe()}: {first_line}") from None

    def _call(self, what: str, operation: Callable[[Client], T]) -> T:
        """Run a read the service cannot answer without: any failure is the store being
        unavailable (the caller's request is refused retryably), never a wrong answer."""
        try:
            client = self._ready_client()
        except StoreAccessError as error:  # refused credentials mid-run: the request is retried
            raise StoreUnavailableError(str(error)) from None
        try:
            return operation(client)
        except Exception as error:
            # Each request's dedup check would log it: once per interval.
            self._log_throttled(what, logging.WARNING, "%s failed on %s: %s", what, self.location.describe(),
                                first_line(error))
            raise StoreUnavailableError(f"{what} failed on {self.location.describe()}: {first_line(error)}") from None

    def _log_throttled(self, key: str, level: int, message: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._failure_logged.get(key, -FAILURE_LOG_INTERVAL) >= FAILURE_LOG_INTERVAL:
            self._failure_logged[key] = now
            logger.log(level, message, *args)

    # -- the local queues --------------------------------------------------------------------------

    def attach_queue(self, queued: QueuedUsage) -> None:
        """An exporter's queue of usage acknowledged but not stored yet: what the store will
        hold. The dedup and metric-series answers include it."""
        self._queues.append(queued)

    def _queued(self, columns: list[str]) -> Iterable[pa.Table]:
        for queued in self._queues:
            yield from queued(columns)

    def queued_event_ids(self) -> list[tuple[str, int]]:
        """(event id, event time ns) of the usage in the local queues."""
        found: list[tuple[str, int]] = []
        for table in self._queued(["event_id", "event_time"]):
            times = table["event_time"].cast(pa.int64()).to_pylist()
            found.extend(zip(table["event_id"].to_pylist(), times))
        return found

    def _queued_metric_series(self) -> dict[tuple[str, int], tuple[int, str]]:
        """(series, start time ns) -> (event time ns, cumulative value) of each run's newest queued point."""
        latest: dict[tuple[str, int], tuple[int, str]] = {}
        for table in self._queued(["event_id", "event_time", "dimensions"]):
            series = pc.map_lookup(table["dimensions"], "otel_meter.series", "first")
            values = pc.map_lookup(table["dimensions"], "otel_meter.cumulative", "first")
            times = table["event_time"].cast(pa.int64())
            for key, event_id, event_time, value in zip(series.to_pylist(), table["event_id"].to_pylist(),
                                                        times.to_pylist(), values.to_pylist()):
                if key is not None and value is not None:
                    run = (key, int(event_id.rsplit(":", 2)[1]))
                    if run not in latest or event_time >= latest[run][0]:
                        latest[run] = (event_time, value)
        return latest

    def migrate(self) -> list[str]:
        """Apply the numbered SQL migrations not yet recorded; returns the names applied."""
        return _migrate(self.client)

    def insert_usage(self, table: pa.Table, token: str) -> None:
        """Insert one block; the token makes a retry of the same block a no-op in every table.

        Rate card versions applied while the store was unreachable go in first, so stored
        usage never names a version the store does not hold."""
        client = self._ready_client()
        if self._pending_cards:
            self._insert_pending_cards(client)
        client.insert_arrow("usage_ingest", table, settings={**INSERT_SETTINGS, "insert_deduplication_token": token})

    def insert_usage_select(self, client: Client, columns: list[str], select: str, token: str,
                            settings: dict[str, Any] | None = None) -> None:
        """Insert the rows a SELECT computes in the engine (``columns`` of ``usage_ingest``, in the
        SELECT's order) as one block, on ``client`` (a thread's own, see :meth:`own_client`); the
        same guarantees as :meth:`insert_usage`: pending rate card versions first, and the token.
        ``settings``: the SELECT's own."""
        if self._pending_cards:
            self._insert_pending_cards(self._ready_client())
        client.command(f"INSERT INTO usage_ingest ({', '.join(columns)}) {select}",
                       settings={**(settings or {}), **INSERT_SETTINGS, "insert_deduplication_token": token})

    def recent_event_ids(self, since_ns: int) -> list[tuple[str, int]]:
        """Ids of the events stored since ``since_ns``, and of every event in the local queues.
        Raises StoreUnavailableError when the store cannot be read (then only
        :meth:`queued_event_ids` can be known)."""
        queued = self.queued_event_ids()  # before the store: a record stored meanwhile is then seen twice, not never
        result = self._call("reading recent event ids",
                            lambda client: client.query(queries.RECENT_EVENT_IDS, parameters={"since": since_ns}))
        return [(row[0], row[1]) for row in result.result_rows] + queued

    def stored_event_ids(self, event_ids: list[str], min_ns: int, max_ns: int) -> set[str]:
        """The given ids already stored. Raises StoreUnavailableError (retryable) when the
        store cannot answer: an event must not be counted on a guess."""
        result = self._call("checking event ids", lambda client: client.query(
            queries.STORED_EVENT_IDS, parameters={"ids": event_ids, "min": min_ns, "max": max_ns}))
        return {row[0] for row in result.result_rows}

    def metric_series(self) -> list[tuple[str, int, int, Decimal]]:
        """(series, start time ns, time ns, cumulative value) of the newest point of each run of
        each metric series seen in the past week (stored or queued), to resume deltas. Raises
        StoreUnavailableError when the store cannot be read."""
        latest = self._queued_metric_series()  # before the store, as in recent_event_ids
        rows = self._call("reading metric series", lambda client: client.query(queries.METRIC_SERIES).result_rows)
        for series, start, event_id, value in rows:
            event_time = int(event_id.rsplit(":", 1)[1])
            run = (series, int(start))
            if run not in latest or event_time > latest[run][0]:
                latest[run] = (event_time, value)
        return [(series, start, event_time, Decimal(value)) for (series, start), (event_time, value) in latest.items()]

    def applied_rate_card_rows(self) -> list[tuple[str, str, str, str]]:
        """Every applied card version as (card id, version, card document, source), in the order
        applied (a version's first application wins; rating.rate_card.applied_versions parses them).

        From the store, keeping a local copy (with a state directory); while a server is
        unreachable, from that copy plus the versions applied meanwhile. Raises
        StoreUnavailableError when neither is there."""
        try:
            rows = [list(row) for row in self._call(
                "reading rate cards", lambda client: client.query(queries.RATE_CARD_VERSIONS).result_rows)]
            with self._cards_lock:
                pending = list(self._pending_cards)
                self._write_cards_copy(rows)
        except StoreUnavailableError as error:
            copy = self._read_cards_copy()
            if "rows" not in copy:
                where = self.state_directory / RATE_CARDS_COPY if self.state_directory else "none kept"
                raise StoreUnavailableError(
                    f"{error}, and there is no local copy of the applied rate cards ({where}): rating cannot "
                    f"start without them. Start once the store is reachable; the copy is kept from then on") from None
            logger.warning("rate cards: %s; rating with the local copy of %s", error,
                           self.state_directory / RATE_CARDS_COPY if self.state_directory else "")
            rows = copy["rows"]
            with self._cards_lock:
                pending = list(self._pending_cards)
        known = {(row[0], row[1]) for row in rows}
        rows = rows + [[row[0], row[1], row[6], row[7]] for row in pending if (row[0], row[1]) not in known]
        return [(card_id, version, document, source) for card_id, version, document, source in rows]

    def insert_rate_card_versions(self, versions: list[CardVersion], document: str, source: str) -> None:
        """All versions of one apply in one block: they land together or not at all. While
        a server is unreachable they are kept locally and inserted before the next usage."""
        applied_at = time.time_ns() // 1000
        rows = [[v.card_id, v.version, v.effective_from_ns, v.kind, v.currency, v.content, document, source,
                 applied_at] for v in versions]
        if self.location.embedded_path is not None or self.state_directory is None:
            self.client.insert_arrow("rate_cards", rate_cards_table(rows), settings=dict(INSERT_SETTINGS))
            return
        with self._cards_lock:
            self._pending_cards.extend(rows)
            self._write_cards_copy(None)
        try:
            self._insert_pending_cards(self._ready_client())
        except StoreUnavailableError as error:
            logger.warning("rate card version(s) %s kept locally and inserted once the store answers: %s",
                           ", ".join(f"{row[0]}/{row[1]}" for row in rows), error)
        except Exception as error:  # the server failing: the next usage insert tries again
            logger.warning("rate card version(s) %s kept locally, insert failed (retried before the next usage "
                           "insert): %s", ", ".join(f"{row[0]}/{row[1]}" for row in rows), first_line(error))

    def _insert_pending_cards(self, client: Client) -> None:
        with self._cards_lock:
            pending = list(self._pending_cards)
            if not pending:
                return
            # One block per apply (same applied_at). A retry after a lost answer may store a
            # version twice: harmless, a version's first application is the one read.
            groups: dict[int, list[list[Any]]] = {}
            for row in pending:
                groups.setdefault(row[8], []).append(row)
            for _, rows in sorted(groups.items()):
                client.insert_arrow("rate_cards", rate_cards_table(rows), settings=dict(INSERT_SETTINGS))
            self._pending_cards = self._pending_cards[len(pending):]
            stored = self._read_cards_copy().get("rows")
            self._write_cards_copy(None if stored is None else stored + [[r[0], r[1], r[6], r[7]] for r in pending])
            logger.info("rate cards: inserted %d version(s) applied while the store was unreachable", len(pending))

    def _read_cards_copy(self) -> dict[str, Any]:
        if self.state_directory is None:
            return {}
        path = self.state_directory / RATE_CARDS_COPY
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as error:
            logger.warning("ignoring the local copy of the rate cards %s: %s", path, error)
            return {}

    def _write_cards_copy(self, rows: list[list[Any]] | None) -> None:
        """Rewrite the copy (atomically): ``rows`` as the stored versions (None: keep them),
        and the versions not inserted yet. Call with ``_cards_lock`` held."""
        if self.state_directory is None:
            return
        copy = self._read_cards_copy()
        if rows is not None:
            copy["rows"] = rows
        copy["pending"] = self._pending_cards
        path = self.state_directory / RATE_CARDS_COPY
        try:
            self.state_directory.mkdir(parents=True, exist_ok=True)
            temporary = path.with_suffix(".tmp")
            with open(temporary, "w") as handle:
                json.dump(copy, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, path)
        except OSError as error:
            logger.warning("cannot write the local copy of the rate cards %s: %s", path, error.strerror)

    def query(self, sql: str, parameters: dict[str, Any]) -> list[tuple]:
        # clickhouse-connect answers each row as a tuple (its annotations say Sequence)
        return cast(list[tuple], self.client.query(sql, parameters=parameters).result_rows)

    def ping(self) -> bool:
        """Whether the store answers now; never waits more than about two seconds (a
        server not connected yet is being connected to in the background)."""
        client = self._client
        if client is None:
            return False
        try:
            if self.location.embedded_path is None:
                return client.ping(timeout=2)
            client.command("SELECT 1")
            return True
        except Exception:
            return False

    def close(self) -> None:
        self._closed.set()
        if self._client is not None:
            self._client.close()


def _migrate(client: Client) -> list[str]:
    client.command(queries.CREATE_MIGRATIONS_TABLE)
    applied = {row[0] for row in client.query(queries.APPLIED_MIGRATIONS).result_rows}
    done = []
    for version, name, sql in available_migrations():
        if version in applied:
            continue
        for statement in split_statements(sql):
            client.command(statement)
        client.insert("schema_migrations", [[version, name]], column_names=["version", "name"],
                      settings={"async_insert": 0})
        done.append(name)
        logger.info("applied migration %s", name)
    return done


def rate_cards_table(rows: list[list[Any]]) -> pa.Table:
    return pa.table({
        "card_id": pa.array([r[0] for r in rows], pa.string()),
        "version": pa.array([r[1] for r in rows], pa.string()),
        "effective_from": pa.array([r[2] for r in rows], pa.int64()).cast(pa.timestamp("ns", tz="UTC")),
        "kind": pa.array([r[3] for r in rows], pa.string()),
        "currency": pa.array([r[4] for r in rows], pa.string()),
        "content": pa.array([r[5] for r in rows], pa.string()),
        "document": pa.array([r[6] for r in rows], pa.string()),
        "source": pa.array([r[7] for r in rows], pa.string()),
        "applied_at": pa.array([r[8] for r in rows], pa.int64()).cast(pa.timestamp("us", tz="UTC")),
    })


def first_line(error: BaseException) -> str:
    text = str(error)
    return text.splitlines()[0] if text else repr(error)


def available_migrations() -> list[tuple[int, str, str]]:
    folder = resources.files("otel_meter.storage").joinpath("migrations")
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            version = int(entry.name.split("_", 1)[0])
            found.append((version, entry.name.removesuffix(".sql"), entry.read_text()))
    return sorted(found)


def split_statements(sql: str) -> list[str]:
    """Split a migration file on semicolons at line ends; comments are dropped."""
    lines = [line for line in sql.splitlines() if not line.lstrip().startswith("--")]
    return [part.strip() for part in "\n".join(lines).split(";\n") if part.strip().rstrip(";").strip()]


def quote_identifier(name: str) -> str:
    if not name.replace("_", "").isalnum():
        raise StoreError(f"database name {name!r} may contain only letters, digits and underscores")
    return f"`{name}`"


def new_token() -> str:
    return f"{time.time_ns():x}-{uuid.uuid4().hex}"
