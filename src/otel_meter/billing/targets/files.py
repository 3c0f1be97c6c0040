"""File targets ``csv`` and ``jsonl``: every record of a send, with all its fields, in one new file.

For finance teams, data warehouses and platforms without an API we support: a directory that another
tool picks up. Each :meth:`FileTarget.send` writes one file (nothing for an empty send) named
``<target>-<UTC time>-<content hash>.<csv|jsonl>``; its name is every record's ``external_id``.

The file appears complete or not at all: it is written to a hidden temporary file in the same
directory, flushed and fsynced, then renamed into place (and the directory fsynced), so a reader
that lists the directory never sees half a file. Decimals are exact strings (``"0.000001"``, never
floats); window bounds are ISO 8601 UTC (``2024-05-01T00:00:00Z``).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import re
import tempfile
import time
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable, Literal

from pydantic import Field, field_validator

from otel_meter.billing.target import SendResult, TargetConfig, TargetFactory, UsageRecord, register_target

__all__ = [
    "RECORD_FIELDS",
    "CsvTargetConfig",
    "FileTarget",
    "JsonlTargetConfig",
    "decimal_text",
    "iso_utc",
    "record_fields",
    "write_atomically",
]

logger = logging.getLogger(__name__)

RECORD_FIELDS = ("target", "customer", "reference", "meter", "window_start", "window_end", "revision", "value",
                 "total", "quantity", "amount", "currency", "key", "is_correction")
"""The fields of a record in files and webhook bodies, in this order (the CSV header)."""


def decimal_text(value: Decimal) -> str:
    """An exact plain decimal: no exponent, no trailing fractional zeros, no ``-0`` (``1.500`` -> ``1.5``)."""
    if not value.is_finite():
        raise ValueError(f"{value} is not a finite decimal")
    if value == 0:
        return "0"
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def iso_utc(nanoseconds: int) -> str:
    """``2024-05-01T00:00:00Z``; a fraction of a second only when there is one (9 digits)."""
    seconds, fraction = divmod(nanoseconds, 1_000_000_000)
    text = datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{text}.{fraction:09d}Z" if fraction else f"{text}Z"


def record_fields(record: UsageRecord) -> dict[str, Any]:
    """The record as JSON values in :data:`RECORD_FIELDS` order: decimals as exact strings, times ISO 8601 UTC."""
    return {"target": record.target, "customer": record.customer, "reference": record.reference,
            "meter": record.meter, "window_start": iso_utc(record.window_start_ns),
            "window_end": iso_utc(record.window_end_ns), "revision": record.revision,
            "value": decimal_text(record.value), "total": decimal_text(record.total),
            "quantity": decimal_text(record.quantity), "amount": decimal_text(record.amount),
            "currency": record.currency, "key": record.key, "is_correction": record.is_correction}


def write_atomically(path: Path, content: bytes) -> None:
    """Write ``content`` to ``path`` so that ``path`` holds either all of it or nothing new.

    Temporary file in the same directory (so the rename stays on one file system), fsync, rename
    over ``path``, fsync of the directory so the rename itself survives a power cut."""
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(content)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def file_stem(target: str, now: float, content: bytes) -> str:
    """``<target>-<YYYYmmddTHHMMSSZ>-<12 hex of SHA-256(content)>``; the target name made file-name safe."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", target).lstrip(".") or "target"
    stamp = datetime.fromtimestamp(now, timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"{safe}-{stamp}-{hashlib.sha256(content).hexdigest()[:12]}"


class _FileTargetConfig(TargetConfig):
    directory: Path
    """Where the files are written; created if missing."""

    @field_validator("directory")
    @classmethod
    def _usable_directory(cls, directory: Path) -> Path:
        if directory.exists() and not directory.is_dir():
            raise ValueError(f"directory {directory} exists and is not a directory")
        return directory


class CsvTargetConfig(_FileTargetConfig):
    delimiter: str = Field(default=",", min_length=1, max_length=1)
    """One character, e.g. ``;`` for spreadsheets in locales with a decimal comma."""

    @field_validator("delimiter")
    @classmethod
    def _plain_delimiter(cls, delimiter: str) -> str:
        if delimiter in '"\r\n' or delimiter.isalnum() or delimiter in ".-":
            raise ValueError(f"delimiter {delimiter!r} would be ambiguous with values; use e.g. ',', ';', '|' or tab")
        return delimiter


class JsonlTargetConfig(_FileTargetConfig):
    pass


class FileTarget:
    """Writes each send as one file; a file that cannot be written fails every record, retryably."""

    integer_values = False
    negative_values = True
    """A correction is a row with the (negative) change, like any other revision."""

    def __init__(self, name: str, config: CsvTargetConfig | JsonlTargetConfig, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.name = name
        self.config = config
        self.format: Literal["csv", "jsonl"] = "csv" if isinstance(config, CsvTargetConfig) else "jsonl"
        self._clock = clock

    def encode(self, records: list[UsageRecord]) -> bytes:
        """The file's content: CSV with a header line, or one JSON object per line; ``\\n`` line ends."""
        rows = [record_fields(record) for record in records]
        if self.format == "jsonl":
            return "".join(json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n" for row in rows).encode()
        assert isinstance(self.config, CsvTargetConfig)
        text = io.StringIO()
        writer = csv.writer(text, delimiter=self.config.delimiter, lineterminator="\n")
        writer.writerow(RECORD_FIELDS)
        for row in rows:
            writer.writerow(["true" if row[field] is True else "false" if row[field] is False else row[field]
                             for field in RECORD_FIELDS])
        return text.getvalue().encode()

    def send(self, records: list[UsageRecord], progress: Callable[[int], None]) -> list[SendResult]:
        if not records:
            return []
        try:
            content = self.encode(records)
        except ValueError as error:  # a non-finite decimal: nothing to retry until the data is fixed
            progress(len(records))
            return [SendResult(record.key, False, error=f"{self.name}: record {record.key}: {error}")
                    for record in records]
        file_name = f"{file_stem(self.name, self._clock(), content)}.{self.format}"
        try:
            self.config.directory.mkdir(parents=True, exist_ok=True)
            write_atomically(self.config.directory / file_name, content)
        except OSError as error:
            logger.warning("billing target %s: cannot write %s: %s", self.name, self.config.directory / file_name,
                           error)
            progress(len(records))
            error_text = f"{self.name}: cannot write {self.config.directory / file_name}: {error}"
            return [SendResult(record.key, False, error=error_text, retryable=True) for record in records]
        logger.info("billing target %s: wrote %d records to %s", self.name, len(records),
                    self.config.directory / file_name)
        progress(len(records))
        return [SendResult(record.key, True, external_id=file_name) for record in records]

    def close(self) -> None:
        pass


CSV_FACTORY = register_target(TargetFactory("csv", CsvTargetConfig, lambda name, config: FileTarget(name, config)))
JSONL_FACTORY = register_target(TargetFactory("jsonl", JsonlTargetConfig,
                                              lambda name, config: FileTarget(name, config)))
