"""The ClickHouse store: one clickhouse-connect client, embedded (chDB) or a server.

``chdb://PATH`` opens the real ClickHouse engine in this process (one process owns a
path); ``http(s)://user:pass@host:8123/db`` talks to a ClickHouse server or cluster.
The same SQL serves both.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import clickhouse_connect
import pyarrow as pa
from clickhouse_connect.driver.client import Client

from otel_meter.errors import StoreError, StoreLockedError
from otel_meter.storage import queries

if TYPE_CHECKING:
    from otel_meter.rating.rate_card import CardVersion, RateCard

logger = logging.getLogger(__name__)

INSERT_SETTINGS = {
    # Set explicitly: defaults differ across ClickHouse versions (26.x turned async_insert on).
    "async_insert": 0,
    "deduplicate_blocks_in_dependent_materialized_views": 1,
    # A backfill may span years of monthly partitions in one block; refusing it would stall
    # the queue behind it for good.
    "max_partitions_per_insert_block": 0,
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
    """Schema, inserts and queries; safe to share between threads."""

    def __init__(self, location: StoreLocation, connect_timeout: float = 10.0) -> None:
        self.location = location
        self.client = self._connect(connect_timeout)

    def _connect(self, connect_timeout: float) -> Client:
        location = self.location
        try:
            if location.embedded_path is not None:
                location.embedded_path.mkdir(parents=True, exist_ok=True)
                bootstrap = clickhouse_connect.get_client(dsn=location.dsn)
                bootstrap.command(f"CREATE DATABASE IF NOT EXISTS {quote_identifier(location.database)}")
                return clickhouse_connect.get_client(dsn=location.dsn, database=location.database)
            parts = urlsplit(location.dsn)
            bootstrap = clickhouse_connect.get_client(dsn=location.dsn, database="default",
                                                      connect_timeout=connect_timeout)
            bootstrap.command(f"CREATE DATABASE IF NOT EXISTS {quote_identifier(location.database)}")
            return clickhouse_connect.get_client(dsn=parts._replace(path="").geturl(), database=location.database,
                                                 connect_timeout=connect_timeout)
        except Exception as error:  # clickhouse-connect and chDB raise several unrelated types
            text = str(error)
            if "Cannot lock file" in text or "already running" in text or "EmbeddedServer" in text:
                raise StoreLockedError(
                    f"{location.describe()} is in use by another process (one process owns an embedded store); "
                    f"stop it, or query it through its usage API") from None
            raise StoreError(f"cannot open {location.describe()}: {text.splitlines()[0] if text else error!r}") from None

    def migrate(self) -> list[str]:
        """Apply the numbered SQL migrations not yet recorded; returns the names applied."""
        self.client.command(queries.CREATE_MIGRATIONS_TABLE)
        applied = {row[0] for row in self.client.query(queries.APPLIED_MIGRATIONS).result_rows}
        done = []
        for version, name, sql in available_migrations():
            if version in applied:
                continue
            for statement in split_statements(sql):
                self.client.command(statement)
            self.client.insert("schema_migrations", [[version, name]], column_names=["version", "name"],
                               settings={"async_insert": 0})
            done.append(name)
            logger.info("applied migration %s", name)
        return done

    def insert_usage(self, table: pa.Table, token: str) -> None:
        """Insert one block; the token makes a retry of the same block a no-op in every table."""
        self.client.insert_arrow("usage_ingest", table,
                                 settings={**INSERT_SETTINGS, "insert_deduplication_token": token})

    def recent_event_ids(self, since_ns: int) -> list[tuple[str, int]]:
        result = self.client.query(queries.RECENT_EVENT_IDS, parameters={"since": since_ns})
        return [(row[0], row[1]) for row in result.result_rows]

    def stored_event_ids(self, event_ids: list[str], min_ns: int, max_ns: int) -> set[str]:
        result = self.client.query(queries.STORED_EVENT_IDS,
                                   parameters={"ids": event_ids, "min": min_ns, "max": max_ns})
        return {row[0] for row in result.result_rows}

    def metric_series(self) -> list[tuple[str, int, Decimal]]:
        """The last cumulative value of each metric series seen in the past week, to resume deltas."""
        rows = self.client.query(queries.METRIC_SERIES).result_rows
        return [(series, int(event_id.rsplit(":", 2)[1]), Decimal(value)) for series, event_id, value in rows]

    def rate_card_versions(self) -> list[CardVersion]:
        """Every applied card version, in the order applied (a version's first application wins)."""
        from otel_meter.rating.rate_card import parse_rate_card

        versions: list[CardVersion] = []
        parsed: dict[tuple[str, str], RateCard] = {}
        for card_id, version, document, source in self.client.query(queries.RATE_CARD_VERSIONS).result_rows:
            card = parsed.get((document, source))
            if card is None:
                card = parsed[(document, source)] = parse_rate_card(document, source, default_id=card_id)
            versions.extend(found for found in card.versions if found.version == version)
        return versions

    def insert_rate_card_versions(self, versions: list[CardVersion], document: str, source: str) -> None:
        """All versions of one apply in one block: they land together or not at all."""
        applied_at = time.time_ns() // 1000
        rows = [[v.card_id, v.version, v.effective_from_ns, v.kind, v.currency, v.content, document, source,
                 applied_at] for v in versions]
        table = pa.table({
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
        self.client.insert_arrow("rate_cards", table, settings=dict(INSERT_SETTINGS))

    def query(self, sql: str, parameters: dict[str, Any]) -> list[tuple]:
        return self.client.query(sql, parameters=parameters).result_rows

    def ping(self) -> bool:
        try:
            self.client.command("SELECT 1")
            return True
        except Exception:
            return False

    def close(self) -> None:
        self.client.close()


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
