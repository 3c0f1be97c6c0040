"""The ``netsuite`` billing target: SuiteBilling usage as CSV import files.

Each :meth:`NetSuiteTarget.send` writes one CSV file for NetSuite's Import Assistant
(Setup > Import/Export > Import Tasks > Import CSV Records, type Transactions, record type
Usage) into ``directory``: one row per record, columns ``External ID`` (the record key),
``Subscription`` (the customer's reference), ``Subscription Line`` (from
``subscription_lines``, else empty), ``Item`` (the mapping's ``to``), ``Quantity`` (the
record's value), ``Usage Date`` (the window start in ``date_format``) and ``Memo``.

NetSuite rates usage rows additively, so a row carries the record's **change** (its value),
and a correction is one more row under its own External ID with the delta, negative when the
window shrank. Voiding a usage that a rating run has already used is done in NetSuite (the
target never edits a row it wrote). A ``Quantity`` is stored as NUMBER(18,8): a value needing
more than 8 decimals or 10 integer digits is refused with an error naming it (send a larger
mapping ``unit``), never rounded. A zero change writes no row (and counts as delivered).

Files appear atomically: written to a hidden temporary file in the same directory, flushed
and fsynced, renamed to ``{file_prefix}-{UTC time}-{first 16 hex of the content's SHA-256}.csv``
and the directory fsynced; a failure leaves no file and no temporary file behind. The file
name is each row's ``external_id``. A send whose rows are byte-identical to a file still in the
directory reuses that file instead of writing a second one; after the file was moved away, a
new file is written, and NetSuite's import (in "Add" mode) refuses rows whose External ID it
already has, so a row is never rated twice.

With ``rest`` instead of ``directory``, each record is created through SuiteTalk REST:
``POST {account}.suitetalk.api.netsuite.com/services/rest/record/v1/usage`` (JSON, the same
fields, ``externalId`` = the key), signed with token-based authentication (OAuth 1.0a,
HMAC-SHA256, realm = the account id). The request is synchronous: NetSuite's
``X-NetSuite-Idempotency-Key`` only applies to asynchronous jobs (``Prefer: respond-async``,
answered with a job to poll), so the external ID is the idempotency key instead. NetSuite
keeps external IDs unique per record type, so a repeated POST cannot create a second usage;
when a create is refused with a 400 the target reads ``/record/v1/usage/eid:{key}``: a usage
holding the same quantity and date is delivered (an earlier attempt landed), anything else
fails with NetSuite's ``o:errorDetails``. 429, 5xx, transport failures and NetSuite's
concurrency refusals are retried with backoff up to ``max_attempts``, then reported
retryable; a 401 fails the rest of the batch without further calls. Secrets never appear in
errors or logs.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import hmac
import io
import json
import logging
import os
import re
import secrets
import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote, unquote_plus, urlsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from otel_meter.billing.target import (
    SendResult,
    TargetConfig,
    TargetFactory,
    UsageRecord,
    check_retry_durations,
    http_url,
    register_target,
)
from otel_meter.component_model import Duration
from otel_meter.http import RATE_LIMITED_OR_FAILED, FullJitter, HttpAnswer, HttpRequest, RetryPolicy, new_client, send

__all__ = ["COLUMNS", "NetSuiteRestConfig", "NetSuiteTarget", "NetSuiteTargetConfig", "format_date",
           "format_quantity", "oauth1_signature"]

logger = logging.getLogger(__name__)

COLUMNS = ("External ID", "Subscription", "Subscription Line", "Item", "Quantity", "Usage Date", "Memo")
MAX_DECIMALS = 8
MAX_INTEGER_DIGITS = 10
"""NUMBER(18,8): 18 digits of which 8 after the point."""
_DATE_TOKEN = re.compile(r"YYYY|MM|DD|M|D|[A-Za-z]+|[^A-Za-z]+")
_DATE_FIELDS = {"YYYY": "%Y", "MM": "%m", "DD": "%d"}
_PREFIX = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


_ACCOUNT = re.compile(r"^[0-9A-Za-z]+(_[0-9A-Za-z]+)?$")
CONCURRENCY_ERRORS = frozenset({"CONCURRENCY_LIMIT_EXCEEDED", "SSS_REQUEST_LIMIT_EXCEEDED"})
"""NetSuite error codes that mean "too many requests right now": retried like a 429."""


class NetSuiteRestConfig(BaseModel):
    """SuiteTalk REST with token-based authentication (an integration record's consumer key and
    secret, and an access token's id and secret)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    account: str
    """The account id, e.g. ``1234567`` or ``1234567_SB1`` for a sandbox."""
    consumer_key: str = Field(min_length=1, repr=False)
    consumer_secret: str = Field(min_length=1, repr=False)
    token_id: str = Field(min_length=1, repr=False)
    token_secret: str = Field(min_length=1, repr=False)
    api_base: str | None = None
    """Overrides ``https://{account}.suitetalk.api.netsuite.com/services/rest`` (e.g. a test server)."""
    timeout: Duration = timedelta(seconds=60)
    max_attempts: int = Field(default=5, ge=1, le=20)
    initial_backoff: Duration = timedelta(seconds=1)
    max_backoff: Duration = timedelta(seconds=60)
    """Caps the exponential backoff and a ``Retry-After``."""

    @field_validator("account")
    @classmethod
    def _account_id(cls, account: str) -> str:
        if not _ACCOUNT.match(account):
            raise ValueError(f"rest.account {account!r} is not a NetSuite account id such as 1234567 or 1234567_SB1")
        return account.upper()

    @field_validator("api_base")
    @classmethod
    def _http_url(cls, url: str | None) -> str | None:
        return http_url(url, "rest.api_base", "ending in /services/rest")

    @model_validator(mode="after")
    def _durations(self) -> NetSuiteRestConfig:
        check_retry_durations(self.timeout, self.initial_backoff, self.max_backoff, "rest.", "60s", "1s and 60s")
        return self

    @property
    def base_url(self) -> str:
        host = self.account.lower().replace("_", "-")
        return self.api_base or f"https://{host}.suitetalk.api.netsuite.com/services/rest"


class NetSuiteTargetConfig(TargetConfig):
    """``customers`` maps our customer id to the NetSuite subscription (for CSV files as the
    import maps it: name, external ID or internal ID; for REST its internal ID); each meter's
    ``to`` is the NetSuite item (for REST its internal ID)."""

    directory: Path | None = None
    """Where the CSV files are written (created if missing). Either this or ``rest``."""
    rest: NetSuiteRestConfig | None = None
    """Create each usage through SuiteTalk REST instead of writing files."""
    date_format: str = "YYYY-MM-DD"
    """``Usage Date`` layout: ``YYYY``, ``MM``, ``DD`` (``M``, ``D`` without leading zero) and
    separators, e.g. ``MM/DD/YYYY`` to match the account's date preference."""
    subscription_lines: dict[str, dict[str, str]] = Field(default_factory=dict)
    """Our customer id -> NetSuite item -> subscription line number. Rows without an entry
    leave ``Subscription Line`` empty."""
    file_prefix: str = "netsuite-usage"

    @field_validator("date_format")
    @classmethod
    def _date_format(cls, layout: str) -> str:
        tokens = _DATE_TOKEN.findall(layout)
        letters = [token for token in tokens if token[0].isalpha()]
        unknown = [token for token in letters if token not in ("YYYY", "MM", "DD", "M", "D")]
        if unknown:
            raise ValueError(f"date_format {layout!r}: {unknown[0]!r} is not YYYY, MM, DD, M or D")
        if sorted(token[0] for token in letters) != ["D", "M", "Y"]:
            raise ValueError(f"date_format {layout!r} needs exactly one year (YYYY), month (MM or M) and day "
                             "(DD or D), e.g. YYYY-MM-DD or MM/DD/YYYY")
        return layout

    @field_validator("file_prefix")
    @classmethod
    def _file_prefix(cls, prefix: str) -> str:
        if not _PREFIX.match(prefix):
            raise ValueError(f"file_prefix {prefix!r}: use letters, digits, '_', '.' and '-' (at most 64)")
        return prefix

    @model_validator(mode="after")
    def _one_route(self) -> NetSuiteTargetConfig:
        if (self.directory is None) == (self.rest is None):
            raise ValueError("set exactly one of directory (CSV import files) and rest (SuiteTalk REST)")
        return self

    @model_validator(mode="after")
    def _lines_name_known_customers_and_items(self) -> NetSuiteTargetConfig:
        items = {mapping.to for mapping in self.meters}
        for customer, lines in self.subscription_lines.items():
            if customer not in self.customers:
                raise ValueError(f"subscription_lines.{customer}: no such customer in customers; add it there "
                                 "or remove the entry")
            for item, line in lines.items():
                if item not in items:
                    raise ValueError(f"subscription_lines.{customer}.{item}: no meter sends to item {item!r} "
                                     f"(meters' 'to': {', '.join(sorted(items))})")
                if not line.strip():
                    raise ValueError(f"subscription_lines.{customer}.{item}: empty subscription line")
        return self


def format_quantity(value: Decimal) -> str:
    """A NetSuite ``Quantity``: plain decimal text, at most 8 decimals and 10 integer digits
    (NUMBER(18,8)). Raises ValueError for a value that would need rounding."""
    if not value.is_finite():
        raise ValueError(f"quantity {value} is not a number")
    if value == 0:
        return "0"
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    whole, _, decimals = text.lstrip("-").partition(".")
    if len(decimals) > MAX_DECIMALS:
        raise ValueError(f"quantity {text} has {len(decimals)} decimals; NetSuite stores at most {MAX_DECIMALS} "
                         "(NUMBER(18,8)): send a larger unit in the meter mapping (e.g. unit: 1000)")
    if len(whole) > MAX_INTEGER_DIGITS:
        raise ValueError(f"quantity {text} has {len(whole)} integer digits; NetSuite stores at most "
                         f"{MAX_INTEGER_DIGITS} (NUMBER(18,8)): send a smaller unit or a shorter window")
    return text


def format_date(window_start_ns: int, layout: str) -> str:
    """The window start's UTC date in a ``date_format`` layout such as ``MM/DD/YYYY``."""
    day = datetime.fromtimestamp(window_start_ns // 1_000_000_000, timezone.utc).date()
    parts = []
    for token in _DATE_TOKEN.findall(layout):
        if token in _DATE_FIELDS:
            parts.append(day.strftime(_DATE_FIELDS[token]))
        elif token == "M":
            parts.append(str(day.month))
        elif token == "D":
            parts.append(str(day.day))
        else:
            parts.append(token)
    return "".join(parts)


def oauth1_signature(method: str, url: str, parameters: list[tuple[str, str]], consumer_secret: str,
                     token_secret: str, algorithm: str = "HMAC-SHA256") -> str:
    """The OAuth 1.0a signature (RFC 5849 section 3.4) of a request: ``parameters`` are the
    ``oauth_*`` parameters plus any query and form parameters (not a JSON body)."""
    parts = urlsplit(url)
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    default_port = {"http": 80, "https": 443}.get(scheme)
    authority = host if parts.port in (None, default_port) else f"{host}:{parts.port}"
    query = [(_decode(name), _decode(value)) for name, _, value in
             (pair.partition("=") for pair in parts.query.split("&") if pair)]
    pairs = sorted((_encode(name), _encode(value)) for name, value in [*parameters, *query])
    normalized = "&".join(f"{name}={value}" for name, value in pairs)
    base = "&".join([method.upper(), _encode(f"{scheme}://{authority}{parts.path or '/'}"), _encode(normalized)])
    digest = {"HMAC-SHA256": hashlib.sha256, "HMAC-SHA1": hashlib.sha1}[algorithm]
    key = f"{_encode(consumer_secret)}&{_encode(token_secret)}"
    return base64.b64encode(hmac.new(key.encode(), base.encode(), digest).digest()).decode()


def _encode(text: str) -> str:
    return quote(text, safe="~-._")


def _decode(text: str) -> str:
    return unquote_plus(text)


class _Failure(Exception):
    def __init__(self, error: str, retryable: bool, auth: bool = False) -> None:
        super().__init__(error)
        self.error, self.retryable, self.auth = error, retryable, auth


class NetSuiteTarget:
    """Writes each batch of records as one NetSuite usage CSV file, or creates each record
    through SuiteTalk REST; see the module docstring."""

    integer_values = False
    negative_values = True
    """A correction is a row with the (possibly negative) delta: NetSuite adds usage rows up."""

    def __init__(self, name: str, config: NetSuiteTargetConfig, *, clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], Any] = time.sleep) -> None:
        self.name = name
        self.config = config
        self._clock = clock
        self._sleep = sleep
        self._client: httpx.Client | None = None

    def send(self, records: list[UsageRecord], progress: Callable[[int], None]) -> list[SendResult]:
        if self.config.rest is not None:
            return self._send_rest(records, self.config.rest, progress)
        return self._send_file(records, progress)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    # -- what a record says ---------------------------------------------------------------------

    def _fields(self, record: UsageRecord) -> dict[str, str] | None:
        """The usage's fields (None for a zero change: nothing to write); ValueError if it cannot be sent."""
        if not record.reference.strip():
            raise ValueError("the customer's subscription reference is empty")
        quantity = format_quantity(record.value)
        if record.value == 0:
            return None
        start = datetime.fromtimestamp(record.window_start_ns // 1_000_000_000, timezone.utc)
        end = datetime.fromtimestamp(record.window_end_ns // 1_000_000_000, timezone.utc)
        memo = (f"otel-meter {self.name}: {record.customer} {start:%Y-%m-%dT%H:%M:%SZ}..{end:%Y-%m-%dT%H:%M:%SZ} "
                f"revision {record.revision}" + (" (correction)" if record.is_correction else ""))
        return {"key": record.key, "subscription": record.reference,
                "line": self.config.subscription_lines.get(record.customer, {}).get(record.meter, ""),
                "item": record.meter, "quantity": quantity, "date": start.date().isoformat(), "memo": memo}

    def _refused(self, record: UsageRecord, error: str, retryable: bool = False) -> SendResult:
        logger.warning("billing target %s: usage %s for subscription %s not delivered: %s", self.name, record.key,
                       record.reference, error)
        return SendResult(record.key, False, error=error, retryable=retryable)

    # -- CSV files ------------------------------------------------------------------------------

    def _send_file(self, records: list[UsageRecord], progress: Callable[[int], None]) -> list[SendResult]:
        results: dict[int, SendResult] = {}
        rows: list[tuple[str, ...]] = []
        row_records: list[int] = []
        keys_in_file: set[str] = set()
        for index, record in enumerate(records):
            try:
                fields = self._fields(record)
            except ValueError as error:
                results[index] = self._refused(record, f"{record.meter} for subscription {record.reference} "
                                               f"({record.key}): {error}")
                continue
            if fields is None:
                results[index] = SendResult(record.key, True, external_id="")
                continue
            row_records.append(index)
            if record.key not in keys_in_file:  # the same record twice in one batch: one row
                keys_in_file.add(record.key)
                rows.append((fields["key"], fields["subscription"], fields["line"], fields["item"],
                             fields["quantity"], format_date(record.window_start_ns, self.config.date_format),
                             fields["memo"]))
        if rows:
            try:
                file_name = self._write(rows)
            except OSError as error:
                message = (f"cannot write the NetSuite usage file in {self.config.directory}: "
                           f"{type(error).__name__}: {error}")
                logger.error("billing target %s: %s", self.name, message)
                for index in row_records:
                    results[index] = SendResult(records[index].key, False, error=message, retryable=True)
            else:
                for index in row_records:
                    results[index] = SendResult(records[index].key, True, external_id=file_name)
                logger.info("billing target %s: wrote %d usage rows to %s", self.name, len(rows), file_name)
        if records:
            progress(len(records))
        return [results[index] for index in range(len(records))]

    def _write(self, rows: list[tuple[str, ...]]) -> str:
        """Write the file atomically; its name. Reuses a file in the directory with the same content."""
        assert self.config.directory is not None
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\r\n")
        writer.writerow(COLUMNS)
        writer.writerows(rows)
        content = buffer.getvalue().encode("utf-8")
        digest = hashlib.sha256(content).hexdigest()[:16]
        directory = self.config.directory
        directory.mkdir(parents=True, exist_ok=True)
        for existing in sorted(directory.glob(f"{self.config.file_prefix}-*-{digest}.csv")):
            if existing.read_bytes() == content:
                return existing.name
        stamp = datetime.fromtimestamp(self._clock(), timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        name = f"{self.config.file_prefix}-{stamp}-{digest}.csv"
        temporary = directory / f".{name}.{os.getpid()}.tmp"
        try:
            with open(temporary, "xb") as file:
                file.write(content)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, directory / name)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        _fsync_directory(directory)
        return name

    # -- SuiteTalk REST -------------------------------------------------------------------------

    def _send_rest(self, records: list[UsageRecord], rest: NetSuiteRestConfig,
                   progress: Callable[[int], None]) -> list[SendResult]:
        results: list[SendResult] = []
        auth_failure = ""
        for record in records:
            if auth_failure:
                results.append(SendResult(record.key, False, error=auth_failure))
                progress(1)
                continue
            try:
                results.append(self._create_usage(record, rest))
            except _Failure as failure:
                results.append(self._refused(record, failure.error, failure.retryable))
                if failure.auth:
                    auth_failure = failure.error + " (not attempted: an earlier record of this batch was refused)"
            except Exception as error:  # a bug must fail one record, not the batch
                logger.exception("billing target %s: usage %s failed", self.name, record.key)
                results.append(SendResult(record.key, False, error=f"internal error: {error!r}", retryable=True))
            progress(1)
        return results

    def _create_usage(self, record: UsageRecord, rest: NetSuiteRestConfig) -> SendResult:
        try:
            fields = self._fields(record)
        except ValueError as error:
            raise _Failure(f"{record.meter} for subscription {record.reference} ({record.key}): {error}",
                           retryable=False) from None
        if fields is None:
            return SendResult(record.key, True, external_id="")
        if not fields["line"]:
            raise _Failure(f"subscription_lines.{record.customer}.{record.meter} is not set: a NetSuite usage "
                           "record needs its subscription line (usageSubscriptionLine); add the line's internal "
                           "ID there", retryable=False)
        slot = f"quantity-{secrets.token_hex(16)}"
        document = {"externalId": fields["key"], "usageSubscription": {"id": fields["subscription"]},
                    "usageSubscriptionLine": {"id": fields["line"]}, "item": {"id": fields["item"]},
                    "usageQuantity": slot, "usageDate": fields["date"], "memo": fields["memo"]}
        # usageQuantity goes out as the exact decimal text, not through a binary float.
        body = json.dumps(document).replace(json.dumps(slot), fields["quantity"], 1).encode()
        answer = self._request(rest, "POST", "/record/v1/usage", body)
        if answer.ok:
            location = answer.headers.get("location", "")
            return SendResult(record.key, True, external_id=location.rstrip("/").rsplit("/", 1)[-1] or record.key)
        if answer.status == 400 and not transient(answer):
            stored = self._request(rest, "GET", f"/record/v1/usage/eid:{quote(record.key, safe='')}")
            if stored.ok:
                usage = stored.document
                # NetSuite keeps usageQuantity as a double: compare as doubles.
                same = (_float(usage.get("usageQuantity")) == float(fields["quantity"])
                        and str(usage.get("usageDate", ""))[:10] == fields["date"])
                if same:
                    return SendResult(record.key, True, external_id=str(usage.get("id") or record.key))
                raise _Failure(f"NetSuite usage {record.key} already exists with quantity "
                               f"{usage.get('usageQuantity')} on {usage.get('usageDate')}, but this "
                               f"record sends {fields['quantity']} on {fields['date']}: NetSuite and the export "
                               "ledger disagree; void or delete that usage in NetSuite and send again",
                               retryable=False)
            if stored.status != 404:
                raise self._failure(rest, record, f"read-back of usage {record.key}", stored)
        raise self._failure(rest, record, "create", answer)

    def _failure(self, rest: NetSuiteRestConfig, record: UsageRecord, what: str, answer: HttpAnswer) -> _Failure:
        where = f"NetSuite usage {what} ({record.meter} on subscription {record.reference}, {record.key})"
        if transient(answer):
            return _Failure(f"{where} failed after {rest.max_attempts} attempts: {describe(answer)}", retryable=True)
        if answer.status == 401:
            return _Failure(f"NetSuite account {rest.account} refused the token-based authentication "
                            f"(rest.consumer_key, rest.token_id and their secrets): {describe(answer)}",
                            retryable=False, auth=True)
        return _Failure(f"{where} refused: {describe(answer)}", retryable=False)

    def _request(self, rest: NetSuiteRestConfig, method: str, path: str, body: bytes | None = None) -> HttpAnswer:
        """One request with retries of 429, 5xx, concurrency refusals and transport failures, each
        attempt signed anew (timestamp and nonce); ``Retry-After`` is honoured on any of them."""
        url = rest.base_url + path
        initial, ceiling = rest.initial_backoff.total_seconds(), rest.max_backoff.total_seconds()
        policy = RetryPolicy(max_attempts=rest.max_attempts, backoff=FullJitter(initial, ceiling), max_wait=ceiling,
                             retry_on=transient, retry_after_on=None)
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        request = HttpRequest(method, url, content=body, headers=headers,
                              attempt_headers=lambda: {"Authorization": self._authorization(rest, method, url)},
                              redact=(rest.consumer_secret, rest.token_secret, rest.consumer_key, rest.token_id))

        def announce(answer: HttpAnswer, attempt: int, wait: float) -> None:
            logger.info("billing target %s: NetSuite %s %s answered %s; attempt %d of %d in %.2fs", self.name,
                        method, path, answer.status or describe(answer), attempt, rest.max_attempts, wait)

        if self._client is None:  # verifies the certificate and host name by default
            self._client = new_client(rest.timeout.total_seconds())
        return send(self._client, request, policy, sleep=self._sleep, clock=self._clock, before_retry=announce).result

    def _authorization(self, rest: NetSuiteRestConfig, method: str, url: str) -> str:
        """Token-based authentication: OAuth 1.0a, HMAC-SHA256, a fresh timestamp and nonce."""
        oauth = [("oauth_consumer_key", rest.consumer_key), ("oauth_token", rest.token_id),
                 ("oauth_signature_method", "HMAC-SHA256"), ("oauth_timestamp", str(int(self._clock()))),
                 ("oauth_nonce", secrets.token_hex(16)), ("oauth_version", "1.0")]
        signature = oauth1_signature(method, url, oauth, rest.consumer_secret, rest.token_secret)
        return "OAuth " + ", ".join([f'realm="{rest.account}"'] + [f'{name}="{_encode(value)}"' for name, value in
                                                                   [*oauth, ("oauth_signature", signature)]])


def transient(answer: HttpAnswer) -> bool:
    """Worth retrying: no answer, 429, 5xx, and NetSuite's concurrency-limit refusals, which come as 400s."""
    details = answer.document.get("o:errorDetails") or []
    codes = {str(item.get("o:errorCode")) for item in details if isinstance(item, dict)}
    return RATE_LIMITED_OR_FAILED(answer) or bool(codes & CONCURRENCY_ERRORS)


def describe(answer: HttpAnswer) -> str:
    """NetSuite's ``o:errorDetails`` (else its ``title``, else the body) and the HTTP status."""
    if answer.status == 0:
        return f"no answer from NetSuite ({answer.error})"
    document = answer.document
    text = _details(document) or document.get("title") or ("" if document else answer.text(200)) or "no details"
    return f"{text} (HTTP {answer.status})"


def _details(document: dict[str, Any]) -> str:
    """NetSuite's ``o:errorDetails``: ``detail [o:errorCode]`` joined with ``; ``."""
    parts = []
    for item in document.get("o:errorDetails") or []:
        if isinstance(item, dict):
            code = item.get("o:errorCode")
            parts.append(f"{item.get('detail', '')}" + (f" [{code}]" if code else ""))
    return "; ".join(parts)


def _float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _fsync_directory(directory: Path) -> None:
    """Make the rename durable (POSIX); a no-op where directories cannot be opened."""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def _create(name: str, config: Any) -> NetSuiteTarget:
    return NetSuiteTarget(name, config)


FACTORY = register_target(TargetFactory(type="netsuite", config_model=NetSuiteTargetConfig, create=_create))
