"""The ``chargebee`` billing target: Chargebee's Usages API (Product Catalog 2.0).

Each record becomes one usage ``POST /api/v2/subscriptions/{subscription}/usages`` with
``id`` = the record key, ``item_price_id`` = the mapping's ``to``, ``usage_date`` = the window
start (Unix seconds, UTC) and ``quantity`` = the window's **total** as a plain decimal string.
Chargebee keeps one usage per (subscription, item price, usage date) and has no update, so a
record never sends its delta: a correction (revision n > 1) deletes the usage of revision
n - 1 (``POST /api/v2/subscriptions/{subscription}/delete_usage`` with ``id``, the endpoint
the official SDK's ``Usage.delete`` calls) and creates the new total under its own key.
Afterwards Chargebee holds exactly the window's total, once. A window whose total became
zero is only deleted (there is nothing to bill).

Delivery is idempotent on three levels: the ledger sends each key once; every POST carries
``chargebee-idempotency-key`` (the usage key, or ``delete-`` + the deleted key), so a
retried request is answered from Chargebee's replay; and a create refused because the id
exists is checked by reading that usage back: if it holds what this record sends it counts
as delivered (an earlier attempt landed but its answer was lost), otherwise the record fails
with both values in the message. A 404 on a delete means the usage is gone already: done.

Retries: 429 (waiting what ``Retry-After`` asks, capped at ``max_backoff``), 5xx and
transport failures are retried inside :meth:`ChargebeeTarget.send` up to ``max_attempts``
per request with exponential backoff and jitter; after that the record fails with
``retryable=True``. 400/401/404 are not retried (``retryable=False``) and the error carries
Chargebee's ``message``, ``api_error_code`` and ``param``, never the API key. A 401 fails the
rest of the batch without further calls. A ``usage_date`` outside a span where the
subscription is active or non-renewing is refused by Chargebee with a 400; the error says so.

Plain REST with the standard library, not the official ``chargebee`` SDK (3.29): the SDK
builds its URL as ``{protocol}://{site}.{domain}/api/v2``, so it cannot point at a local
test server without bending ``site`` and ``domain`` around a host name; its retry loop
retries 429 without a bound (``max_retries`` only bounds 5xx); it opens a new HTTP client
per request and logs request payloads at debug level. We need two form-encoded POSTs and one
GET, which ``http.client`` does in a few lines with one kept-alive connection, the bounded
retries the target contract asks for, and no new dependency.

Chargebee caps a subscription's lifetime at 5,000 usages (support can raise it): daily
windows give one usage per item price per day, hourly windows exhaust the cap in seven months.
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import random
import re
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from email.utils import parsedate_to_datetime
from typing import Any, Callable
from urllib.parse import quote, urlencode, urlsplit

from pydantic import Field, field_validator, model_validator

from otel_meter import __version__
from otel_meter.billing.target import (
    SendResult,
    TargetConfig,
    TargetFactory,
    HttpAnswer,
    UsageRecord,
    check_retry_durations,
    http_url,
    record_key,
    register_target,
)
from otel_meter.component import Duration

__all__ = ["ChargebeeTarget", "ChargebeeTargetConfig", "format_quantity"]

logger = logging.getLogger(__name__)

QUANTITY_MAX_CHARS = 40
"""Chargebee's ``quantity`` is a string of at most 40 characters."""
IDEMPOTENCY_HEADER = "chargebee-idempotency-key"
REPLAYED_HEADER = "chargebee-idempotency-replayed"
_SITE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


class ChargebeeTargetConfig(TargetConfig):
    """``customers`` maps our customer id to the Chargebee **subscription id**; each meter's
    ``to`` is a metered item price id on that subscription."""

    site: str = Field(min_length=1)
    """The site name: ``acme`` for ``https://acme.chargebee.com`` (test sites: ``acme-test``)."""
    api_key: str = Field(min_length=1, repr=False)
    """A full-access (or usage-write) API key; sent as the Basic auth user name, never logged."""
    api_base: str | None = None
    """Overrides ``https://{site}.chargebee.com/api/v2`` (e.g. a local test server)."""
    timeout: Duration = timedelta(seconds=30)
    """Per request: for connecting and for each read of the response."""
    max_attempts: int = Field(default=5, ge=1, le=20)
    """Attempts per request before the record is reported as a retryable failure."""
    initial_backoff: Duration = timedelta(milliseconds=500)
    max_backoff: Duration = timedelta(seconds=60)
    """Caps the exponential backoff and a ``Retry-After``."""

    @field_validator("site")
    @classmethod
    def _site_name(cls, site: str) -> str:
        if not _SITE.match(site):
            raise ValueError(f"site {site!r} is not a Chargebee site name; write e.g. 'acme' for "
                             "https://acme.chargebee.com (or 'acme-test')")
        return site

    @field_validator("api_base")
    @classmethod
    def _http_url(cls, url: str | None) -> str | None:
        return http_url(url, "api_base", "such as https://acme.chargebee.com/api/v2")

    @model_validator(mode="after")
    def _durations(self) -> ChargebeeTargetConfig:
        check_retry_durations(self.timeout, self.initial_backoff, self.max_backoff, "", "30s", "500ms and 60s")
        return self

    @property
    def base_url(self) -> str:
        return self.api_base or f"https://{self.site}.chargebee.com/api/v2"


def format_quantity(value: Decimal) -> str:
    """A Chargebee ``quantity``: plain decimal text, no exponent, no trailing zeros, at most 40
    characters. Raises ValueError for a negative, non-finite or too long value."""
    if not value.is_finite() or value < 0:
        raise ValueError(f"quantity {value} cannot be sent to Chargebee: it takes a total of zero or more")
    text = format(value, "f") if value else "0"  # never normalize(): it rounds to 28 digits
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    if len(text) > QUANTITY_MAX_CHARS:
        raise ValueError(f"quantity {text} has {len(text)} characters; Chargebee takes at most "
                         f"{QUANTITY_MAX_CHARS}: send fewer decimals (a larger mapping unit)")
    return text


@dataclass(frozen=True)
class _Answer(HttpAnswer):
    def describe(self) -> str:
        """Chargebee's own words: ``message`` [``api_error_code``, param ``param``] (HTTP status)."""
        if self.status == 0:
            return self.detail
        message = str(self.body.get("message") or self.detail or "no message")
        tags = [str(self.body["api_error_code"])] if self.body.get("api_error_code") else []
        tags += [f"param {self.body['param']}"] if self.body.get("param") else []
        return message + (f" [{', '.join(tags)}]" if tags else "") + f" (HTTP {self.status})"


class _Failure(Exception):
    def __init__(self, error: str, retryable: bool, auth: bool = False) -> None:
        super().__init__(error)
        self.error, self.retryable, self.auth = error, retryable, auth


class ChargebeeTarget:
    """Sends records as Chargebee usages; see the module docstring for the protocol."""

    integer_values = False
    negative_values = False
    """Corrections replace the window's usage (delete + create), so values are never negative."""

    def __init__(self, name: str, config: ChargebeeTargetConfig, *, sleep: Callable[[float], Any] = time.sleep,
                 clock: Callable[[], float] = time.time) -> None:
        self.name = name
        self.config = config
        self._sleep = sleep
        self._clock = clock
        url = urlsplit(config.base_url)
        self._https = url.scheme == "https"
        self._host, self._port = url.hostname or "", url.port
        self._path = url.path.rstrip("/")
        self._auth = "Basic " + base64.b64encode(f"{config.api_key}:".encode()).decode()
        self._connection: http.client.HTTPConnection | None = None

    # -- the BillingTarget interface ------------------------------------------------------------

    def send(self, records: list[UsageRecord], progress: Callable[[int], None]) -> list[SendResult]:
        results: list[SendResult] = []
        auth_failure = ""
        for record in records:
            if auth_failure:
                results.append(SendResult(record.key, False, error=auth_failure))
            else:
                try:
                    results.append(self._send_one(record))
                except _Failure as failure:
                    results.append(SendResult(record.key, False, error=failure.error, retryable=failure.retryable))
                    if failure.auth:
                        auth_failure = failure.error + " (not attempted: an earlier record of this batch was refused)"
                        logger.error("billing target %s: Chargebee site %s refused the API key; "
                                     "the rest of the batch is not sent", self.name, self.config.site)
                    else:
                        logger.warning("billing target %s: usage %s for subscription %s not delivered: %s",
                                       self.name, record.key, record.reference, failure.error)
                except Exception as error:  # a bug must fail one record, not the batch
                    logger.exception("billing target %s: usage %s failed", self.name, record.key)
                    results.append(SendResult(record.key, False, error=f"internal error: {error!r}", retryable=True))
            progress(1)
        return results

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    # -- one record -----------------------------------------------------------------------------

    def _send_one(self, record: UsageRecord) -> SendResult:
        quantity = self._quantity(record)
        subscription = record.reference
        if record.is_correction:
            self._delete(record, record.revision - 1)
        if Decimal(quantity) == 0:
            return SendResult(record.key, True, external_id="")
        form = {"id": record.key, "item_price_id": record.meter, "quantity": quantity,
                "usage_date": str(record.window_start_ns // 1_000_000_000), "note": self._note(record)}
        answer = self._create(subscription, form)
        if answer.ok:
            return self._created(record, answer)
        if answer.status != 400:
            raise self._failure(record, "create", answer)
        delivered = self._landed_before(record, form)
        if delivered is not None:
            return delivered
        if self._term_refusal(answer):
            raise _Failure(self._term_message(record, answer), retryable=False)
        if record.revision > 2:
            # An older revision may still hold the date (a correction that failed after its
            # delete was superseded): remove every earlier revision of this window and retry once.
            for revision in range(record.revision - 2, 0, -1):
                self._delete(record, revision)
            answer = self._create(subscription, form)
            if answer.ok:
                return self._created(record, answer)
            if answer.status != 400:
                raise self._failure(record, "create", answer)
        raise _Failure(self._refusal_message(record, answer), retryable=False)

    def _create(self, subscription: str, form: dict[str, str]) -> _Answer:
        return self._request("POST", f"/subscriptions/{quote(subscription, safe='')}/usages", form,
                             idempotency_key=form["id"])

    def _created(self, record: UsageRecord, answer: _Answer) -> SendResult:
        if answer.headers.get(REPLAYED_HEADER) == "true":
            logger.debug("billing target %s: usage %s was created earlier (idempotent replay)", self.name, record.key)
        usage = answer.body.get("usage") or {}
        return SendResult(record.key, True, external_id=str(usage.get("id") or record.key))

    def _quantity(self, record: UsageRecord) -> str:
        try:
            return format_quantity(record.total)
        except ValueError as error:
            raise _Failure(f"{record.meter} for subscription {record.reference}: {error}", retryable=False) from None

    def _note(self, record: UsageRecord) -> str:
        start = _iso(record.window_start_ns)
        end = _iso(record.window_end_ns)
        return f"otel-meter {self.name}: {record.customer} {start}..{end} revision {record.revision}"[:500]

    def _delete(self, record: UsageRecord, revision: int) -> None:
        """Delete the usage revision ``revision`` of the record's window created (gone already is fine).
        Its id is the key the ledger has for that revision (a ledger written before the currency
        joined the key has the old ones), else the key rule's."""
        usage_id = (record.earlier_keys[revision - 1] if revision <= len(record.earlier_keys) else
                    record_key(record.target, record.customer, record.meter, record.window_start_ns,
                               record.window_end_ns, revision, currency=record.currency))
        answer = self._request("POST", f"/subscriptions/{quote(record.reference, safe='')}/delete_usage",
                               {"id": usage_id}, idempotency_key=f"delete-{usage_id}")
        if answer.ok or answer.status == 404:
            return
        raise self._failure(record, f"delete of revision {revision}'s usage {usage_id}", answer)

    def _landed_before(self, record: UsageRecord, form: dict[str, str]) -> SendResult | None:
        """After a 400 on create: if the usage with this key exists with the same values, an
        earlier attempt landed (delivered); with other values the ledger and Chargebee
        disagree (a failure); None if there is no such usage."""
        answer = self._request("GET", f"/subscriptions/{quote(record.reference, safe='')}/usages?"
                               + urlencode({"id": record.key}))
        if answer.status == 404:
            return None
        if not answer.ok:
            raise self._failure(record, f"read-back of usage {record.key}", answer)
        usage = answer.body.get("usage") or {}
        if (usage.get("item_price_id") == form["item_price_id"] and str(usage.get("usage_date")) == form["usage_date"]
                and _decimal(usage.get("quantity")) == Decimal(form["quantity"])):
            return SendResult(record.key, True, external_id=str(usage.get("id") or record.key))
        raise _Failure(f"usage {record.key} already exists on subscription {record.reference} with item price "
                       f"{usage.get('item_price_id')}, usage_date {usage.get('usage_date')} and quantity "
                       f"{usage.get('quantity')}, but this record sends {form['quantity']} of "
                       f"{form['item_price_id']} on {form['usage_date']}: Chargebee and the export ledger "
                       "disagree; delete the usage in Chargebee and send again", retryable=False)

    @staticmethod
    def _refusal_message(record: UsageRecord, answer: _Answer) -> str:
        text = (f"Chargebee refused usage {record.key} ({record.meter} on subscription {record.reference}, "
                f"usage_date {_iso(record.window_start_ns)}): {answer.describe()}")
        message = str(answer.body.get("message", "")).lower()
        if "already" in message or "exist" in message or answer.body.get("api_error_code") == "duplicate_entry":
            text += ("; Chargebee keeps one usage per subscription, item price and usage_date and another "
                     "usage (not sent by this target) holds that date: delete it in Chargebee and send again")
        return text

    @staticmethod
    def _term_refusal(answer: _Answer) -> bool:
        message = str(answer.body.get("message", "")).lower()
        return answer.body.get("param") == "usage_date" and "already" not in message and "exist" not in message

    @staticmethod
    def _term_message(record: UsageRecord, answer: _Answer) -> str:
        return (f"usage_date {_iso(record.window_start_ns)} of {record.meter} is outside an active term of "
                f"subscription {record.reference}: Chargebee takes usage only for dates where the subscription "
                f"is active or non_renewing (and not in an invoice already closed); Chargebee said: "
                f"{answer.describe()}")

    def _failure(self, record: UsageRecord, what: str, answer: _Answer) -> _Failure:
        where = f"{what} for {record.meter} on subscription {record.reference}"
        if answer.transient:
            return _Failure(f"Chargebee {where} failed after {self.config.max_attempts} attempts: "
                            f"{answer.describe()}", retryable=True)
        if answer.status == 401:
            return _Failure(f"Chargebee site {self.config.site} refused the API key (api_key): {answer.describe()}; "
                            "set a valid key", retryable=False, auth=True)
        if answer.status == 404:
            return _Failure(f"Chargebee {where}: not found: {answer.describe()}; check the subscription id in "
                            "customers and the item price in meters", retryable=False)
        return _Failure(f"Chargebee refused the {where}: {answer.describe()}", retryable=False)

    # -- HTTP -----------------------------------------------------------------------------------

    def _request(self, method: str, path: str, form: dict[str, str] | None = None,
                 idempotency_key: str | None = None) -> _Answer:
        """One request with retries of 429, 5xx and transport failures; the last answer."""
        initial, ceiling = self.config.initial_backoff.total_seconds(), self.config.max_backoff.total_seconds()
        answer = _Answer(0, {}, {}, "not sent")
        for attempt in range(1, self.config.max_attempts + 1):
            answer = self._attempt(method, path, form, idempotency_key)
            if not answer.transient:
                return answer
            if attempt == self.config.max_attempts:
                break
            wait = random.uniform(initial, min(ceiling, initial * 2**attempt))
            if answer.status == 429:
                asked = _retry_after(answer.headers.get("retry-after"), self._clock())
                wait = min(ceiling, asked) if asked is not None else wait
            logger.info("billing target %s: Chargebee %s %s answered %s; attempt %d of %d in %.2fs", self.name,
                        method, path.split("?")[0], answer.status or answer.detail, attempt + 1,
                        self.config.max_attempts, wait)
            self._sleep(wait)
        return answer

    def _attempt(self, method: str, path: str, form: dict[str, str] | None, idempotency_key: str | None) -> _Answer:
        headers = {"Authorization": self._auth, "Accept": "application/json",
                   "User-Agent": f"otel-meter/{__version__}"}
        body = None
        if form is not None:
            body = urlencode(form).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        if idempotency_key is not None:
            headers[IDEMPOTENCY_HEADER] = idempotency_key
        try:
            connection = self._connect()
            connection.request(method, self._path + path, body, headers)
            response = connection.getresponse()
            raw = response.read()
        except (OSError, http.client.HTTPException) as error:
            self.close()
            return _Answer(0, {}, {}, self._scrub(f"no answer from Chargebee ({type(error).__name__}: {error})"))
        response_headers = {name.lower(): value for name, value in response.getheaders()}
        if response.will_close:
            self.close()
        try:
            document = json.loads(raw) if raw else {}
        except ValueError:
            document = {}
        if not isinstance(document, dict):
            document = {}
        detail = "" if document else self._scrub(raw[:200].decode(errors="replace"))
        document = {key: self._scrub(value) if isinstance(value, str) else value for key, value in document.items()}
        return _Answer(response.status, document, response_headers, detail)

    def _connect(self) -> http.client.HTTPConnection:
        if self._connection is None:
            timeout = self.config.timeout.total_seconds()
            if self._https:  # verifies the certificate and host name by default
                self._connection = http.client.HTTPSConnection(self._host, self._port, timeout=timeout)
            else:
                self._connection = http.client.HTTPConnection(self._host, self._port, timeout=timeout)
        return self._connection

    def _scrub(self, text: str) -> str:
        """Never let the API key reach an error message or a log line, even if echoed back."""
        return text.replace(self.config.api_key, "***") if self.config.api_key in text else text


def _decimal(value: Any) -> Decimal | None:
    try:
        return Decimal(str(value))
    except ArithmeticError:
        return None


def _iso(ns: int) -> str:
    return datetime.fromtimestamp(ns // 1_000_000_000, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _retry_after(value: str | None, now: float) -> float | None:
    """Seconds asked for by ``Retry-After`` (seconds or an HTTP date); None if absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.replace(tzinfo=moment.tzinfo or timezone.utc).timestamp() - now)


FACTORY = register_target(TargetFactory(type="chargebee", config_model=ChargebeeTargetConfig,
                                        create=lambda name, config: ChargebeeTarget(name, config)))
