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

Plain REST through :mod:`otel_meter.http`, not the official ``chargebee`` SDK (3.29): the SDK
builds its URL as ``{protocol}://{site}.{domain}/api/v2``, so it cannot point at a local
test server without bending ``site`` and ``domain`` around a host name; its retry loop
retries 429 without a bound (``max_retries`` only bounds 5xx); it opens a new HTTP client
per request and logs request payloads at debug level. We need two form-encoded POSTs and one
GET, over one pooled client, with the bounded retries the target contract asks for.

Chargebee caps a subscription's lifetime at 5,000 usages (support can raise it): daily
windows give one usage per item price per day, hourly windows exhaust the cap in seven months.
"""

from __future__ import annotations

import base64
import logging
import re
import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, Callable
from urllib.parse import quote, urlencode

import httpx
from pydantic import Field, field_validator, model_validator

from otel_meter.billing.target import (
    SendResult,
    TargetConfig,
    TargetFactory,
    UsageRecord,
    check_retry_durations,
    http_url,
    record_key,
    register_target,
)
from otel_meter.component_model import Duration
from otel_meter.http import FullJitter, HttpAnswer, HttpRequest, RetryPolicy, new_client, send

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


def describe(answer: HttpAnswer) -> str:
    """Chargebee's own words: ``message`` [``api_error_code``, param ``param``] (HTTP status)."""
    if answer.status == 0:
        return f"no answer from Chargebee ({answer.error})"
    body = answer.document
    message = str(body.get("message") or ("" if body else answer.text(200)) or "no message")
    tags = [str(body["api_error_code"])] if body.get("api_error_code") else []
    tags += [f"param {body['param']}"] if body.get("param") else []
    return message + (f" [{', '.join(tags)}]" if tags else "") + f" (HTTP {answer.status})"


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
        self._auth = "Basic " + base64.b64encode(f"{config.api_key}:".encode()).decode()
        initial, ceiling = config.initial_backoff.total_seconds(), config.max_backoff.total_seconds()
        # 429, 5xx and no answer are retried; Retry-After is honoured on 429 only.
        self._policy = RetryPolicy(max_attempts=config.max_attempts, backoff=FullJitter(initial, ceiling),
                                   max_wait=ceiling, retry_after_on=frozenset({429}))
        self._client: httpx.Client | None = None

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
        if self._client is not None:
            self._client.close()
            self._client = None

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

    def _create(self, subscription: str, form: dict[str, str]) -> HttpAnswer:
        return self._request("POST", f"/subscriptions/{quote(subscription, safe='')}/usages", form,
                             idempotency_key=form["id"])

    def _created(self, record: UsageRecord, answer: HttpAnswer) -> SendResult:
        if answer.headers.get(REPLAYED_HEADER) == "true":
            logger.debug("billing target %s: usage %s was created earlier (idempotent replay)", self.name, record.key)
        usage = answer.document.get("usage") or {}
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
        usage = answer.document.get("usage") or {}
        if (usage.get("item_price_id") == form["item_price_id"] and str(usage.get("usage_date")) == form["usage_date"]
                and _decimal(usage.get("quantity")) == Decimal(form["quantity"])):
            return SendResult(record.key, True, external_id=str(usage.get("id") or record.key))
        raise _Failure(f"usage {record.key} already exists on subscription {record.reference} with item price "
                       f"{usage.get('item_price_id')}, usage_date {usage.get('usage_date')} and quantity "
                       f"{usage.get('quantity')}, but this record sends {form['quantity']} of "
                       f"{form['item_price_id']} on {form['usage_date']}: Chargebee and the export ledger "
                       "disagree; delete the usage in Chargebee and send again", retryable=False)

    @staticmethod
    def _refusal_message(record: UsageRecord, answer: HttpAnswer) -> str:
        text = (f"Chargebee refused usage {record.key} ({record.meter} on subscription {record.reference}, "
                f"usage_date {_iso(record.window_start_ns)}): {describe(answer)}")
        message = str(answer.document.get("message", "")).lower()
        if "already" in message or "exist" in message or answer.document.get("api_error_code") == "duplicate_entry":
            text += ("; Chargebee keeps one usage per subscription, item price and usage_date and another "
                     "usage (not sent by this target) holds that date: delete it in Chargebee and send again")
        return text

    @staticmethod
    def _term_refusal(answer: HttpAnswer) -> bool:
        message = str(answer.document.get("message", "")).lower()
        return answer.document.get("param") == "usage_date" and "already" not in message and "exist" not in message

    @staticmethod
    def _term_message(record: UsageRecord, answer: HttpAnswer) -> str:
        return (f"usage_date {_iso(record.window_start_ns)} of {record.meter} is outside an active term of "
                f"subscription {record.reference}: Chargebee takes usage only for dates where the subscription "
                f"is active or non_renewing (and not in an invoice already closed); Chargebee said: "
                f"{describe(answer)}")

    def _failure(self, record: UsageRecord, what: str, answer: HttpAnswer) -> _Failure:
        where = f"{what} for {record.meter} on subscription {record.reference}"
        if self._policy.retry_on(answer):
            return _Failure(f"Chargebee {where} failed after {self.config.max_attempts} attempts: "
                            f"{describe(answer)}", retryable=True)
        if answer.status == 401:
            return _Failure(f"Chargebee site {self.config.site} refused the API key (api_key): {describe(answer)}; "
                            "set a valid key", retryable=False, auth=True)
        if answer.status == 404:
            return _Failure(f"Chargebee {where}: not found: {describe(answer)}; check the subscription id in "
                            "customers and the item price in meters", retryable=False)
        return _Failure(f"Chargebee refused the {where}: {describe(answer)}", retryable=False)

    # -- HTTP -----------------------------------------------------------------------------------

    def _request(self, method: str, path: str, form: dict[str, str] | None = None,
                 idempotency_key: str | None = None) -> HttpAnswer:
        """One request with retries of 429, 5xx and transport failures; the last answer."""
        headers = {"Authorization": self._auth, "Accept": "application/json"}
        if form is not None:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        body = urlencode(form).encode() if form is not None else None
        request = HttpRequest(method, self.config.base_url + path, content=body, headers=headers,
                              redact=(self.config.api_key,),  # never in an error or a log line
                              idempotency_key=(IDEMPOTENCY_HEADER, idempotency_key) if idempotency_key else None)

        def announce(answer: HttpAnswer, attempt: int, wait: float) -> None:
            logger.info("billing target %s: Chargebee %s %s answered %s; attempt %d of %d in %.2fs", self.name,
                        method, path.split("?")[0], answer.status or describe(answer), attempt,
                        self.config.max_attempts, wait)

        if self._client is None:  # verifies the certificate and host name by default
            self._client = new_client(self.config.timeout.total_seconds())
        return send(self._client, request, self._policy, sleep=self._sleep, clock=self._clock,
                    before_retry=announce).result


def _decimal(value: Any) -> Decimal | None:
    try:
        return Decimal(str(value))
    except ArithmeticError:
        return None


def _iso(ns: int) -> str:
    return datetime.fromtimestamp(ns // 1_000_000_000, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


FACTORY = register_target(TargetFactory(type="chargebee", config_model=ChargebeeTargetConfig,
                                        create=lambda name, config: ChargebeeTarget(name, config)))
