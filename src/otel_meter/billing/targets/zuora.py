"""Billing target ``zuora``: Zuora's classic usage file (CSV), written for audit and optionally uploaded.

New usage (revision 1 of a window) becomes one row of the classic usage upload format::

    ACCOUNT_ID,UOM,QTY,STARTDATE,ENDDATE,SUBSCRIPTION_ID,CHARGE_ID,DESCRIPTION

``ACCOUNT_ID`` is the account number from ``customers``; ``UOM`` the mapping's ``to``; ``QTY`` the
record's value; ``STARTDATE`` the window's first day and ``ENDDATE`` its last day (UTC, in
``date_format``, which must match the locale of the Zuora user who uploads: MM/DD/YYYY for en_US);
``SUBSCRIPTION_ID`` and ``CHARGE_ID`` from the optional ``subscriptions`` and ``charges`` maps;
``DESCRIPTION`` carries the record's key and the window's id, so a usage row leads back to the ledger.

Zuora imports a file atomically: one bad row and the whole file is rolled back. So every row is
checked here first (account number, unit of measure, quantity not negative, at most
``decimal_places`` decimals, at most 16 characters, valid dates) and a batch with a bad row is
refused before anything is written, each record with its own error, none retryable.

Every file is written atomically to ``directory`` (temporary file, fsync, rename), uploaded or not.
With ``upload: true`` it is then sent: ``POST /v1/usage`` (multipart ``file``, at most 4 MB, so a
large batch is split into several files) with an OAuth client-credentials token and an
``Idempotency-Key`` that is the SHA-256 of the file content, so the same file sent twice within
Zuora's 24 hours yields one import. The ``checkImportStatus`` URL is polled until ``Completed``
(every record delivered, ``external_id`` = the import id) or ``Failed``/``Canceled`` (every record
failed with Zuora's message, not retryable). 429, 5xx and connection failures are retried with
backoff; if they persist before Zuora has taken the file, the records fail retryably.

Corrections (revision > 1). The classic usage file takes no negative quantities (negative usage is a
beta feature of the single-record API that needs Unbilled Usage), and Zuora has no per-record dedup
outside Active Rating. What Zuora documents for a correction is to update or delete usage that is
not billed yet. So a correction sets the window's existing usage row to the window's new ``total``:
it finds the row with a ZOQL query (account, unit of measure, start date, then the window id in its
description), and ``PUT /v1/object/usage/{id}`` with ``Quantity`` = total. Setting a total is
idempotent, so a retried correction cannot count twice. Usage already billed (``RbeStatus``
``Processed``) is not changed: the record fails, not retryable, for a credit memo or a true-up on
the next invoice. Without ``upload`` a correction cannot be applied and fails the same way.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import re
import threading
import time
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable, Literal
from urllib.parse import urlencode, urlsplit

import httpx
from pydantic import Field, field_validator, model_validator

from otel_meter.billing.target import SendResult, TargetConfig, TargetFactory, UsageRecord, register_target
from otel_meter.billing.targets.files import decimal_text, write_atomically
from otel_meter.component_model import Duration
from otel_meter.errors import OtelMeterError
from otel_meter.http import (
    FullJitter,
    HttpAnswer,
    HttpRequest,
    RetryPolicy,
    RetryStatuses,
    call_with_retries,
    exchange,
    new_client,
    send,
)

__all__ = ["COLUMNS", "MAX_FILE_BYTES", "ZuoraError", "ZuoraTarget", "ZuoraTargetConfig", "window_id"]

logger = logging.getLogger(__name__)

COLUMNS = ("ACCOUNT_ID", "UOM", "QTY", "STARTDATE", "ENDDATE", "SUBSCRIPTION_ID", "CHARGE_ID", "DESCRIPTION")
MAX_FILE_BYTES = 4_000_000
"""Zuora's limit is 4 MB per usage file; we stay under 4,000,000 bytes."""
MAX_QUANTITY_CHARS = 16
"""Zuora's character limit of a usage quantity."""
MAX_DESCRIPTION_CHARS = 200
RETRIED = RetryStatuses(frozenset({408, 409, 425, 429}))
"""Besides every 5xx and no answer. 409: a concurrent request with the same Idempotency-Key is still running."""
_DATE_TOKENS = {"YYYY": "%Y", "MM": "%m", "DD": "%d"}
_DATE_FORMAT = re.compile(r"(YYYY|MM|DD)([/.-])(YYYY|MM|DD)\2(YYYY|MM|DD)")
_UNSAFE = re.compile(r"[\x00-\x1f\x7f,\"]")
"""Characters not written to a usage file's identifier columns: control characters, commas, quotes."""


class ZuoraError(OtelMeterError):
    """A Zuora call failed; ``retryable`` says whether sending the same records later may succeed."""

    def __init__(self, message: str, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


class ZuoraTargetConfig(TargetConfig):
    directory: Path
    """Every usage file is written here (kept for audit), uploaded or not."""
    date_format: str = "MM/DD/YYYY"
    """STARTDATE and ENDDATE: YYYY, MM and DD with one separator (``/``, ``-`` or ``.``); Zuora reads
    them in the locale of the uploading user (MM/DD/YYYY for en_US, DD/MM/YYYY for en_GB)."""
    end_date: Literal["last_day", "empty"] = "last_day"
    """ENDDATE: the window's last day (its end minus one day for daily windows), or empty (Zuora does
    not rate by it)."""
    decimal_places: int = Field(default=6, ge=0, le=12)
    """At most this many decimals in QTY: set it to the decimal places of the units of measure in Zuora."""
    subscriptions: dict[str, str] = Field(default_factory=dict)
    """Our customer id -> subscription number (SUBSCRIPTION_ID)."""
    charges: dict[str, dict[str, str]] = Field(default_factory=dict)
    """Our customer id -> {unit of measure -> charge number} (CHARGE_ID). Without a subscription or a
    charge, Zuora applies usage to every charge of the account with that unit of measure."""
    max_file_bytes: int = Field(default=MAX_FILE_BYTES, ge=1024, le=MAX_FILE_BYTES)
    """A batch whose file would be larger is split into several files."""
    upload: bool = False
    """Upload each file to Zuora; without it the files wait in ``directory`` for a manual upload."""
    api_base: str | None = None
    """E.g. ``https://rest.zuora.com``, ``https://rest.apisandbox.zuora.com``, ``https://rest.eu.zuora.com``."""
    client_id: str | None = None
    client_secret: str | None = Field(default=None, repr=False)
    """OAuth client of a Zuora API user (Settings > Administration > Manage Users > OAuth clients)."""
    timeout: Duration = timedelta(seconds=60)
    """Per HTTP request: connecting and each read."""
    max_attempts: int = Field(default=6, ge=1)
    """Per HTTP request, counting the first; 429, 5xx, 409 and connection failures are retried."""
    initial_backoff: Duration = timedelta(seconds=1)
    max_backoff: Duration = timedelta(minutes=1)
    poll_interval: Duration = timedelta(seconds=5)
    """Between two reads of an import's status."""
    poll_timeout: Duration = timedelta(minutes=30)
    """An import not finished by then fails its records, not retryably, naming the import to check."""

    @field_validator("date_format")
    @classmethod
    def _date_format(cls, value: str) -> str:
        match = _DATE_FORMAT.fullmatch(value)
        if match is None or len({match.group(1), match.group(3), match.group(4)}) != 3:
            raise ValueError(f"date_format {value!r}: use YYYY, MM and DD once each with one separator, "
                             "e.g. MM/DD/YYYY (en_US), DD/MM/YYYY (en_GB) or YYYY-MM-DD")
        return value

    @field_validator("api_base")
    @classmethod
    def _api_base(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"api_base {value!r} must be an http(s) URL such as https://rest.zuora.com")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _consistent(self) -> ZuoraTargetConfig:
        if self.upload:
            missing = [key for key in ("api_base", "client_id", "client_secret") if not getattr(self, key)]
            if missing:
                raise ValueError(f"upload: true needs {', '.join(missing)} (the Zuora REST endpoint and an OAuth "
                                 "client); or set upload: false to only write the files")
        for key in ("subscriptions", "charges"):
            for customer in getattr(self, key):
                if self.customers and customer not in self.customers:
                    raise ValueError(f"{key}.{customer}: no such customer in customers; add its account number "
                                     "there or remove the entry")
        units = {mapping.to for mapping in self.meters}
        for customer, by_unit in self.charges.items():
            for unit in by_unit:
                if unit not in units:
                    raise ValueError(f"charges.{customer}.{unit}: no meter is sent as unit of measure {unit!r} "
                                     f"(meters[].to: {', '.join(sorted(units))})")
        if not timedelta(0) <= self.initial_backoff <= self.max_backoff:
            raise ValueError("initial_backoff must be between 0 and max_backoff (defaults 1s and 1m)")
        if self.timeout <= timedelta(0) or self.poll_interval < timedelta(0) or self.poll_timeout <= timedelta(0):
            raise ValueError("timeout and poll_timeout must be positive, poll_interval not negative")
        return self


def window_id(record: UsageRecord) -> str:
    """16 hex characters naming the record's (target, customer, unit of measure, currency, window): the
    same for every revision, so a correction finds the window's usage row by its description."""
    text = "\x1f".join((record.target, record.customer, record.meter, record.currency, str(record.window_start_ns),
                        str(record.window_end_ns)))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def earlier_window_id(record: UsageRecord) -> str:
    """The window id rows imported before the currency joined it carry (ledger migration 0005)."""
    text = "\x1f".join((record.target, record.customer, record.meter, str(record.window_start_ns),
                        str(record.window_end_ns)))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def description(record: UsageRecord) -> str:
    return f"otel-meter key {record.key} window {window_id(record)} revision {record.revision}"


def _day(nanoseconds: int) -> date:
    return datetime.fromtimestamp(nanoseconds // 1_000_000_000, timezone.utc).date()


@dataclass(frozen=True)
class _Outcome:
    delivered: bool
    external_id: str = ""
    error: str = ""
    retryable: bool = False


class ZuoraTarget:
    integer_values = False
    negative_values = False
    """Corrections update the window's unbilled usage row to the new total (see the module docstring)."""

    def __init__(self, name: str, config: ZuoraTargetConfig, *, sleep: Callable[[float], Any] = time.sleep,
                 clock: Callable[[], float] = time.time) -> None:
        self.name = name
        self.config = config
        self._sleep = sleep
        self._clock = clock
        self._strftime = "".join(_DATE_TOKENS.get(part, part) for part in re.split(r"(YYYY|MM|DD)", config.date_format))
        self._token: tuple[str, float] | None = None
        self._token_lock = threading.Lock()
        self._client: httpx.Client | None = None
        self._client_lock = threading.Lock()

    # -- rows --------------------------------------------------------------------------------------------

    def row(self, record: UsageRecord, quantity: Decimal) -> tuple[list[str], list[str]]:
        """The usage file row of ``record`` with ``quantity`` in QTY, and what Zuora would reject in it."""
        problems: list[str] = []
        if not record.reference:
            problems.append("ACCOUNT_ID (the account number from customers) is empty")
        if not record.meter.strip():
            problems.append("UOM (meters[].to) is empty")
        subscription = self.config.subscriptions.get(record.customer, "")
        charge = self.config.charges.get(record.customer, {}).get(record.meter, "")
        for column, value in (("ACCOUNT_ID", record.reference), ("UOM", record.meter),
                              ("SUBSCRIPTION_ID", subscription), ("CHARGE_ID", charge)):
            if _UNSAFE.search(value):
                problems.append(f"{column} {value!r} contains a comma, a quote or a control character")
        qty = ""
        if not quantity.is_finite():
            problems.append(f"QTY {quantity} is not a number")
        else:
            qty = decimal_text(quantity)
            places = max(0, -quantity.normalize().as_tuple().exponent) if quantity else 0  # type: ignore[operator]
            if quantity < 0:
                problems.append(f"QTY {qty} is negative; a classic usage file takes no negative quantity")
            if places > self.config.decimal_places:
                problems.append(f"QTY {qty} has {places} decimal places, more than decimal_places "
                                f"({self.config.decimal_places}); use a larger meters[].unit or raise decimal_places "
                                "to the unit of measure's decimal places in Zuora")
            if len(qty) > MAX_QUANTITY_CHARS:
                problems.append(f"QTY {qty} is longer than Zuora's {MAX_QUANTITY_CHARS} characters")
        start = end = ""
        try:
            first_day = _day(record.window_start_ns)
            last_day = _day(record.window_end_ns - 1)
            if record.window_end_ns <= record.window_start_ns:
                raise ValueError("the window ends before it starts")
            start = first_day.strftime(self._strftime)
            end = last_day.strftime(self._strftime) if self.config.end_date == "last_day" else ""
        except (ValueError, OverflowError, OSError) as error:
            problems.append(f"STARTDATE/ENDDATE: window {record.window_start_ns}..{record.window_end_ns} ns is not "
                            f"a valid date range ({error})")
        text = description(record)
        if len(text) > MAX_DESCRIPTION_CHARS:
            problems.append(f"DESCRIPTION is longer than {MAX_DESCRIPTION_CHARS} characters")
        return [record.reference, record.meter, qty, start, end, subscription, charge, text], problems

    def files(self, rows: list[tuple[UsageRecord, list[str]]]) -> list[tuple[bytes, list[UsageRecord]]]:
        """The rows as usage files of at most ``max_file_bytes`` each, in order: (content, its records)."""
        def encode(values: list[str]) -> bytes:
            text = io.StringIO()
            csv.writer(text, lineterminator="\r\n").writerow(values)
            return text.getvalue().encode()

        header = encode(list(COLUMNS))
        files: list[tuple[bytes, list[UsageRecord]]] = []
        content, records = bytearray(header), list[UsageRecord]()
        for record, values in rows:
            line = encode(values)
            if records and len(content) + len(line) > self.config.max_file_bytes:
                files.append((bytes(content), records))
                content, records = bytearray(header), []
            content += line
            records.append(record)
        if records:
            files.append((bytes(content), records))
        return files

    # -- send --------------------------------------------------------------------------------------------

    def send(self, records: list[UsageRecord], progress: Callable[[int], None]) -> list[SendResult]:
        outcomes: dict[str, _Outcome] = {}
        new = [record for record in records if not record.is_correction]
        if new:
            outcomes.update(self._send_new(new, progress))
        for record in records:
            if record.is_correction:
                try:
                    outcomes[record.key] = self._correct(record)
                except ZuoraError as error:
                    outcomes[record.key] = _Outcome(False, error=f"{self.name}: {error}", retryable=error.retryable)
                progress(1)
        results = []
        for record in records:
            outcome = outcomes[record.key]
            if not outcome.delivered:
                logger.warning("billing target %s: record %s not sent: %s", self.name, record.key, outcome.error)
            results.append(SendResult(record.key, outcome.delivered, outcome.external_id, outcome.error,
                                      outcome.retryable))
        return results

    def _send_new(self, records: list[UsageRecord], progress: Callable[[int], None]) -> dict[str, _Outcome]:
        rows, refused = [], {}
        for record in records:
            values, problems = self.row(record, record.value)
            rows.append((record, values))
            if problems:
                refused[record.key] = (f"record {record.key} (customer {record.customer}, account "
                                       f"{record.reference}, UOM {record.meter}, revision {record.revision}): "
                                       + "; ".join(problems))
        if refused:
            first = next(iter(refused))
            note = (f"Zuora rejects a whole usage file for one bad row, so none of the {len(records)} records "
                    "was written or uploaded")
            progress(len(records))
            return {record.key: _Outcome(False, error=f"{self.name}: {refused[record.key]}. {note}"
                                         if record.key in refused else
                                         f"{self.name}: record {record.key} not sent: {refused[first]}. {note}")
                    for record in records}
        outcomes: dict[str, _Outcome] = {}
        for content, file_records in self.files(rows):
            outcome = self._send_file(content)
            outcomes.update({record.key: outcome for record in file_records})
            progress(len(file_records))
        return outcomes

    def _send_file(self, content: bytes) -> _Outcome:
        digest = hashlib.sha256(content).hexdigest()
        stamp = datetime.fromtimestamp(self._clock(), timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        file_name = f"usage-{stamp}-{digest[:12]}.csv"  # 39 characters: Zuora allows 50
        path = self.config.directory / file_name
        try:
            self.config.directory.mkdir(parents=True, exist_ok=True)
            write_atomically(path, content)
        except OSError as error:
            return _Outcome(False, error=f"{self.name}: cannot write usage file {path}: {error}", retryable=True)
        logger.info("billing target %s: wrote usage file %s (%d bytes)", self.name, path, len(content))
        if not self.config.upload:
            return _Outcome(True, external_id=file_name)
        try:
            import_id = self._upload(file_name, content, digest)
        except ZuoraError as error:
            return _Outcome(False, error=f"{self.name}: usage file {file_name}: {error}", retryable=error.retryable)
        return _Outcome(True, external_id=import_id)

    def _upload(self, file_name: str, content: bytes, digest: str) -> str:
        """POST the file and wait for its import; the import id, or :class:`ZuoraError`."""
        boundary = f"otel-meter-{digest[:32]}"
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{file_name}\"\r\n"
                f"Content-Type: text/csv\r\n\r\n").encode() + content + f"\r\n--{boundary}--\r\n".encode()
        response = self._call("POST", "/v1/usage", body, f"multipart/form-data; boundary={boundary}",
                              f"upload of {file_name}", idempotency_key=digest)
        answer = response.json()
        if not isinstance(answer, dict) or not answer.get("success") or not answer.get("checkImportStatus"):
            raise ZuoraError(f"Zuora did not take the file: {_reasons(answer, _detail('POST', '/v1/usage', response))}",
                             False)
        status_path = urlsplit(str(answer["checkImportStatus"]))
        path = status_path.path + (f"?{status_path.query}" if status_path.query else "")
        prefix = urlsplit(self.config.api_base or "").path.rstrip("/")
        if prefix and path.startswith(prefix + "/"):  # _request puts api_base's path in front again
            path = path[len(prefix):]
        match = re.search(r"/usage/([^/]+)/status", status_path.path)
        import_id = match.group(1) if match else path
        logger.info("billing target %s: uploaded %s as import %s", self.name, file_name, import_id)
        deadline = time.monotonic() + self.config.poll_timeout.total_seconds()
        state = ""
        while True:
            try:
                status = self._call("GET", path, None, None, f"status of import {import_id}").json()
            except ZuoraError as error:  # the file is in Zuora: sending it again could import it twice
                raise ZuoraError(f"import {import_id}: {error}; its outcome is unknown: check the import in Zuora "
                                 "(Billing > Usage > imported files) before sending again", False) from None
            state = str((status or {}).get("importStatus", "")) if isinstance(status, dict) else ""
            if state == "Completed":
                return import_id
            if state in ("Failed", "Canceled"):
                message = str(status.get("message") or "no reason given")
                raise ZuoraError(f"import {import_id} {state}: {message}", False)
            if time.monotonic() >= deadline:
                raise ZuoraError(f"import {import_id} still {state or 'unknown'} after {self.config.poll_timeout}; "
                                 "check it in Zuora before sending again", False)
            self._sleep(self.config.poll_interval.total_seconds())

    def _correct(self, record: UsageRecord) -> _Outcome:
        """Set the window's unbilled usage row to ``record.total``."""
        window = f"window {window_id(record)}"
        label = (f"correction {record.key} (customer {record.customer}, account {record.reference}, "
                 f"UOM {record.meter}, revision {record.revision})")
        if not self.config.upload:
            return _Outcome(False, error=f"{self.name}: {label}: a classic usage file takes no negative or replacing "
                            "quantity; corrections update the unbilled usage through the API and need upload: true. "
                            "Adjust the usage in Zuora by hand")
        values, problems = self.row(record, record.total)
        if problems:
            return _Outcome(False, error=f"{self.name}: {label}: " + "; ".join(problems))
        first_day = _day(record.window_start_ns)
        query = ("select Id, Quantity, Description, RbeStatus from Usage"
                 f" where AccountNumber = '{_zoql(record.reference)}' and UOM = '{_zoql(record.meter)}'"
                 f" and StartDateTime >= '{first_day - timedelta(days=1)}T00:00:00'"  # the tenant's time zone may
                 f" and StartDateTime < '{first_day + timedelta(days=2)}T00:00:00'")  # shift the day either way
        found = self._query(query)
        rows = [row for row in found if window in str(row.get("Description") or "")]
        if not rows and record.earlier_keys:  # the window's first revision predates the currency in its id
            earlier = f"window {earlier_window_id(record)}"
            rows = [row for row in found if earlier in str(row.get("Description") or "")
                    and any(f"key {key} " in str(row.get("Description")) for key in record.earlier_keys)]
        if not rows:
            return _Outcome(False, error=f"{self.name}: {label}: no usage of {window} in Zuora (its first revision "
                            "was never imported, or was deleted); nothing to correct")
        if any(row.get("RbeStatus") == "Importing" for row in rows):
            return _Outcome(False, error=f"{self.name}: {label}: the window's usage is still importing", retryable=True)
        billed = [str(row.get("Id")) for row in rows if row.get("RbeStatus") == "Processed"]
        if billed:
            return _Outcome(False, error=f"{self.name}: {label}: usage {', '.join(billed)} is already billed "
                            "(Processed); issue a credit memo or a true-up on the next invoice instead")
        if len(rows) > 1:
            return _Outcome(False, error=f"{self.name}: {label}: {len(rows)} usage records carry {window} "
                            f"({', '.join(str(row.get('Id')) for row in rows)}); leave one and send again")
        usage_id = str(rows[0].get("Id"))
        body = f'{{"Description":{json.dumps(values[7])},"Quantity":{values[2]}}}'.encode()
        response = self._call("PUT", f"/v1/object/usage/{usage_id}", body, "application/json",
                              f"update of usage {usage_id}")
        answer = response.json()
        if not isinstance(answer, dict) or not (answer.get("Success") or answer.get("success")):
            return _Outcome(False, error=f"{self.name}: {label}: Zuora did not update usage {usage_id}: "
                            f"{_reasons(answer, _detail('PUT', f'/v1/object/usage/{usage_id}', response))}")
        logger.info("billing target %s: usage %s of %s set from %s to %s", self.name, usage_id, window,
                    rows[0].get("Quantity"), values[2])
        return _Outcome(True, external_id=usage_id)

    def _query(self, query: str) -> list[dict[str, Any]]:
        answer = self._call("POST", "/v1/action/query", json.dumps({"queryString": query}).encode(),
                            "application/json", "usage query").json()
        rows: list[dict[str, Any]] = []
        while True:
            if not isinstance(answer, dict):
                raise ZuoraError(f"usage query: unexpected answer {answer!r}", True)
            rows.extend(row for row in answer.get("records") or [] if isinstance(row, dict))
            if answer.get("done", True) or not answer.get("queryLocator"):
                return rows
            answer = self._call("POST", "/v1/action/queryMore",
                                json.dumps({"queryLocator": answer["queryLocator"]}).encode(), "application/json",
                                "usage query (more)").json()

    # -- HTTP --------------------------------------------------------------------------------------------

    def _policy(self) -> RetryPolicy:
        """Full jitter between ``initial_backoff`` and ``max_backoff``; ``Retry-After`` (else
        ``RateLimit-Reset``) on 429 and 503, capped at ``max_backoff``."""
        initial, ceiling = self.config.initial_backoff.total_seconds(), self.config.max_backoff.total_seconds()
        return RetryPolicy(max_attempts=self.config.max_attempts, backoff=FullJitter(initial, ceiling),
                           max_wait=ceiling, retry_on=RETRIED, retry_after_on=frozenset({429, 503}),
                           retry_after_headers=("retry-after", "ratelimit-reset"))

    def _http(self) -> httpx.Client:
        with self._client_lock:
            if self._client is None:
                self._client = new_client(self.config.timeout.total_seconds())
            return self._client

    def _request(self, method: str, path: str, body: bytes | None, content_type: str | None,
                 idempotency_key: str | None = None, authorized: bool = True) -> HttpRequest:
        """A request to ``api_base`` + ``path``; ``authorized``: with a bearer token fetched for each attempt."""
        assert self.config.api_base is not None
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        return HttpRequest(method, self.config.api_base + path, content=body, headers=headers,
                           idempotency_key=("Idempotency-Key", idempotency_key) if idempotency_key else None,
                           attempt_headers=(lambda: {"Authorization": f"Bearer {self._access_token()}"})
                           if authorized else None)

    def _call(self, method: str, path: str, body: bytes | None, content_type: str | None, what: str,
              idempotency_key: str | None = None) -> HttpAnswer:
        """An authorized request with retries; a 2xx answer, or :class:`ZuoraError`. A 401 gets a new
        token and one more try (the token expired early or was revoked), not counted as an attempt."""
        request = self._request(method, path, body, content_type, idempotency_key)
        client = self._http()
        refreshed = False

        def attempt() -> HttpAnswer:
            nonlocal refreshed
            answer = exchange(client, request)
            if answer.status == 401 and not refreshed:
                refreshed = True
                with self._token_lock:
                    self._token = None
                answer = exchange(client, request)
            return answer

        outcome = call_with_retries(attempt, self._policy(), sleep=self._sleep, clock=self._clock)
        answer = outcome.result
        if answer.ok:
            return answer
        if not RETRIED(answer):
            raise ZuoraError(f"{what}: {_detail(method, path, answer)}", False)
        raise ZuoraError(f"{what}: gave up after {outcome.attempts} attempts: {_detail(method, path, answer)}", True)

    def _access_token(self) -> str:
        with self._token_lock:
            if self._token is not None and self._token[1] > time.monotonic():
                return self._token[0]
            form = urlencode({"client_id": self.config.client_id, "client_secret": self.config.client_secret,
                              "grant_type": "client_credentials"}).encode()
            outcome = send(self._http(), self._request("POST", "/oauth/token", form,
                                                       "application/x-www-form-urlencoded", authorized=False),
                           self._policy(), sleep=self._sleep, clock=self._clock)
            response = outcome.result
            answer = response.json()
            if response.ok and isinstance(answer, dict) and answer.get("access_token"):
                lifetime = float(answer.get("expires_in") or 3600)
                self._token = (str(answer["access_token"]), time.monotonic() + max(0.0, lifetime - 60))
                return self._token[0]
            detail = _detail("POST", "/oauth/token", response)
            if not RETRIED(response):
                raise ZuoraError(f"Zuora refused the OAuth client {self.config.client_id!r} ({detail}); "
                                 "check client_id and client_secret", False)
            raise ZuoraError(f"OAuth token: gave up after {outcome.attempts} attempts: {detail}", True)

    def close(self) -> None:
        with self._client_lock:
            if self._client is not None:
                self._client.close()
                self._client = None


def _detail(method: str, path: str, answer: HttpAnswer) -> str:
    """``METHOD path: HTTP status: <first 300 bytes of the body>``, or why no answer came."""
    if answer.status == 0:
        return f"{method} {path}: {answer.error}"
    text = answer.text(300)
    return f"{method} {path}: HTTP {answer.status}" + (f": {text}" if text else "")


def _zoql(value: str) -> str:
    """A ZOQL string literal's content: backslash and single quote escaped."""
    return value.replace("\\", "\\\\").replace("'", "\\'")


def _reasons(answer: Any, detail: str) -> str:
    """Zuora's error messages from a REST (``reasons``) or CRUD (``Errors``) answer."""
    if isinstance(answer, dict):
        items = answer.get("reasons") or answer.get("Errors") or []
        messages = [f"{item.get('code') or item.get('Code') or ''} {item.get('message') or item.get('Message') or ''}"
                    .strip() for item in items if isinstance(item, dict)]
        if messages:
            return "; ".join(messages)
        if answer.get("message"):
            return str(answer["message"])
    return detail


FACTORY = register_target(TargetFactory("zuora", ZuoraTargetConfig, lambda name, config: ZuoraTarget(name, config)))
