"""The ``stripe`` billing target: each record becomes one Stripe v1 meter event.

``POST /v1/billing/meter_events`` through the official SDK (``stripe.StripeClient``), form
encoded: ``event_name`` is the mapping's ``to``, ``payload[<customer_key>]`` the record's
reference (a ``cus_...`` id), ``payload[<value_key>]`` the record's value as a whole number,
``identifier`` the record's key and ``timestamp`` the window's start (Unix seconds), so a
re-sent record is the same event byte for byte. The record's key is also the request's
``Idempotency-Key``: a retry whose first attempt did land is answered from Stripe's saved
response instead of creating a second event.

Stripe's rules this module follows (see docs/billing-exports.md, "Stripe"):

- values are whole numbers (``integer_values``: the export job sends whole units and carries
  the remainder); a correction is a negative value (``negative_values``), which only means
  something on a meter that aggregates by ``sum``;
- an event's timestamp must lie within the past 35 days: an older window is refused here,
  without a request, and left for someone to bill by hand;
- Stripe refuses an identifier it has seen (400, "An event already exists with identifier
  ..."): that event is there already, so the record counts as delivered;
- at most one request at a time per (customer, meter): records are sent in lanes, one lane
  per pair, ``max_concurrent_requests`` lanes at once.

The API key is held as a ``SecretStr`` and never written to a log or an error: Stripe's own
messages mask all but its last characters, and every message leaving this module has any
key-shaped text replaced.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

import stripe
from pydantic import ConfigDict, Field, SecretStr, field_validator, model_validator

from otel_meter.billing.target import SendResult, TargetConfig, TargetFactory, UsageRecord, register_target
from otel_meter.component_model import Duration

logger = logging.getLogger(__name__)

TYPE = "stripe"
EVENT_AGE_LIMIT = timedelta(days=35)
"""Stripe takes meter events whose timestamp lies within the past 35 calendar days."""
_KEY_SHAPED = re.compile(r"\b(?:sk|rk|pk)_(?:test|live)_[A-Za-z0-9*]+")
_DUPLICATE_IDENTIFIER = "an event already exists with identifier"
_DUPLICATE_CODES = frozenset({"resource_already_exists", "duplicate_meter_event"})


class StripeTargetConfig(TargetConfig):
    """A Stripe account to send meter events to.

    ```yaml
    billing:
      targets:
        stripe:
          api_key: ${env:STRIPE_API_KEY}
          customers: {acme: cus_NciAYcXfLnqBoz}
          meters: [{meter: input_tokens, to: input_tokens, unit: 1000}]
    ```
    """

    # The key must never appear in an error's text, even as the rejected input.
    model_config = ConfigDict(hide_input_in_errors=True)

    api_key: SecretStr
    """A secret (``sk_...``) or restricted (``rk_...``) key with write access to billing meter
    events. Give it as ``${env:STRIPE_API_KEY}``, never in the file."""
    api_base: str = "https://api.stripe.com"
    """Where the API is; tests point it at a local fake."""
    max_network_retries: int = Field(default=3, ge=0, le=10)
    """Retries the SDK makes itself for network errors, 409 and 5xx (with the same
    idempotency key, exponential backoff from 0.5 s to 5 s, honouring ``Stripe-Should-Retry``)."""
    timeout: Duration = timedelta(seconds=30)
    """Per request (connect and read); the SDK's own default is 80 s."""
    max_concurrent_requests: int = Field(default=4, ge=1, le=32)
    """Requests in flight at once, over distinct (customer, meter) pairs; one pair never has
    more than one (Stripe's limit for v1 meter events)."""
    customer_key: str = Field(default="stripe_customer_id", min_length=1, max_length=100)
    """The payload key the Stripe meter maps customers by (its ``customer_mapping.event_payload_key``)."""
    value_key: str = Field(default="value", min_length=1, max_length=100)
    """The payload key the Stripe meter reads the value from (its ``value_settings.event_payload_key``)."""

    @field_validator("api_key")
    @classmethod
    def _secret_or_restricted_key(cls, value: SecretStr) -> SecretStr:
        key = value.get_secret_value().strip()
        if key.startswith("pk_"):
            raise ValueError("this is a publishable key (pk_...), which cannot send meter events; "
                             "give a secret (sk_...) or restricted (rk_...) key, as ${env:STRIPE_API_KEY}")
        if not key.startswith(("sk_", "rk_")):
            raise ValueError("expected a Stripe secret key (sk_...) or restricted key (rk_...), "
                             "given as ${env:STRIPE_API_KEY}")
        return SecretStr(key)

    @field_validator("api_base")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not re.fullmatch(r"https?://[^\s/]+(/[^\s]*)?", value):
            raise ValueError(f"{value!r} is not an http(s) URL such as https://api.stripe.com")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _distinct_payload_keys(self) -> StripeTargetConfig:
        if self.customer_key == self.value_key:
            raise ValueError(f"customer_key and value_key are both {self.customer_key!r}; "
                             "they name two different payload fields of the Stripe meter")
        return self


class _MaskedKeyFilter(logging.Filter):
    """The SDK logs Stripe's error messages, which show the last characters of a wrong key
    ("Invalid API Key provided: sk_test_****abcd"); nothing key-shaped leaves this process."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if _KEY_SHAPED.search(message):
            record.msg, record.args = _KEY_SHAPED.sub("<api key>", message), None
        return True


logging.getLogger("stripe").addFilter(_MaskedKeyFilter())


def _utc(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class StripeTarget:
    """Sends records as Stripe meter events; see the module docstring."""

    integer_values = True
    negative_values = True

    def __init__(self, name: str, config: StripeTargetConfig, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.name = name
        self.config = config
        self._clock = clock
        self._api_key = config.api_key.get_secret_value()
        self._http_client = stripe.RequestsClient(timeout=config.timeout.total_seconds())
        self._client = stripe.StripeClient(
            self._api_key,
            base_addresses={"api": config.api_base},
            max_network_retries=config.max_network_retries,
            http_client=self._http_client,
        )

    # -- the BillingTarget interface --------------------------------------------------------

    def send(self, records: list[UsageRecord], progress: Callable[[int], None]) -> list[SendResult]:
        """One meter event per record; one lane per (customer, meter), lanes in parallel."""
        results: list[SendResult | None] = [None] * len(records)
        lanes: dict[tuple[str, str], list[int]] = {}
        for index, record in enumerate(records):
            lanes.setdefault((record.reference, record.meter), []).append(index)
        progress_lock = threading.Lock()

        def run_lane(indexes: list[int]) -> None:
            for index in indexes:
                results[index] = self._send_one(records[index])
                with progress_lock:
                    progress(1)

        workers = min(self.config.max_concurrent_requests, len(lanes))
        if workers <= 1:
            for indexes in lanes.values():
                run_lane(indexes)
        else:
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"billing-{self.name}") as pool:
                for _ in pool.map(run_lane, lanes.values()):
                    pass
        done = [result for result in results if result is not None]
        failed = [result for result in done if not result.delivered]
        if records:
            logger.info("billing target %s: %d of %d meter event(s) delivered, %d failed (%d to retry)",
                        self.name, len(done) - len(failed), len(records), len(failed),
                        sum(result.retryable for result in failed))
        return done

    def close(self) -> None:
        self._http_client.close()  # type: ignore[no-untyped-call]  # the stripe SDK leaves it unannotated

    # -- one record -------------------------------------------------------------------------

    def _send_one(self, record: UsageRecord) -> SendResult:
        refusal = self._local_refusal(record)
        if refusal:
            return self._failed(record, refusal, retryable=False)
        params: dict[str, Any] = {
            "event_name": record.meter,
            "payload": {self.config.customer_key: record.reference, self.config.value_key: str(int(record.value))},
            "identifier": record.key,
            "timestamp": self._timestamp(record),
        }
        try:
            event = self._client.v1.billing.meter_events.create(params=params,  # type: ignore[arg-type]
                                                                options={"idempotency_key": record.key})
        except stripe.StripeError as error:
            return self._refused(record, error)
        except Exception as error:  # never raise for one record: park it for someone to look at
            return self._failed(record, f"unexpected {type(error).__name__} while sending: {error}", retryable=False)
        return SendResult(record.key, True, external_id=str(getattr(event, "identifier", None) or record.key))

    @staticmethod
    def _timestamp(record: UsageRecord) -> int:
        """The window's start: inside the window, and the same on every send."""
        return record.window_start_ns // 1_000_000_000

    def _local_refusal(self, record: UsageRecord) -> str:
        """Why the record cannot be sent at all (a retry would not help), or ''."""
        if record.value != record.value.to_integral_value():
            return (f"value {record.value} is not a whole number; Stripe meter events take whole numbers only "
                    "(the export job sends whole units and carries the remainder)")
        timestamp, now = self._timestamp(record), self._clock()
        if now - timestamp > EVENT_AGE_LIMIT.total_seconds():
            return (f"the window starting {_utc(timestamp)} is older than Stripe's 35-day limit for meter events; "
                    "bill it by hand (an invoice item or credit on the customer's invoice); the record stays parked")
        if timestamp > now:
            return (f"the window starting {_utc(timestamp)} is in the future (now {_utc(int(now))}); "
                    "Stripe refuses meter events more than 5 minutes ahead: check this host's clock")
        return ""

    def _refused(self, record: UsageRecord, error: stripe.StripeError) -> SendResult:
        status = error.http_status
        body = (error.json_body or {}).get("error", {}) if isinstance(error.json_body, dict) else {}
        message = str(body.get("message") or error.user_message or type(error).__name__)
        code = str(body.get("code") or error.code or "")
        kind = str(body.get("type") or "")
        if status == 400 and (code in _DUPLICATE_CODES or _DUPLICATE_IDENTIFIER in message.lower()):
            logger.info("billing target %s: Stripe already holds meter event %s (%s for %s); counted as delivered",
                        self.name, record.key, record.meter, record.reference)
            return SendResult(record.key, True, external_id=record.key)
        what = f"HTTP {status}" if status else type(error).__name__
        if kind or code:
            what += f" {'/'.join(part for part in (kind, code) if part)}"
        request = f" (request {error.request_id})" if error.request_id else ""
        retried = f"after the SDK's retries, max_network_retries {self.config.max_network_retries}"
        if isinstance(error, stripe.APIConnectionError):
            return self._failed(record, f"Stripe at {self.config.api_base} could not be reached ({retried}): "
                                        f"{message}; the next export run sends it again", retryable=True)
        if status == 429:
            after = error.headers.get("retry-after") if error.headers else None
            wait = f", Stripe asks to wait {after} s" if after else ""
            return self._failed(record, f"Stripe rate limited the request ({what}{wait}): {message}{request}; "
                                        "the next export run sends it again", retryable=True)
        if status is not None and (status == 409 or status >= 500):
            return self._failed(record, f"Stripe failed ({what}, {retried}): {message}{request}; "
                                        "the next export run sends it again", retryable=True)
        if status == 401:
            fix = "check api_key: a secret (sk_...) or restricted (rk_...) key of this Stripe account"
        elif status == 403:
            fix = "give the restricted key write access to billing meter events"
        elif status == 404:
            fix = f"check api_base ({self.config.api_base})"
        elif kind == "idempotency_error":
            fix = ("the record changed since it was first sent under this key (a customer reference edited?); "
                   "check the ledger and the Stripe meter's events before resending")
        elif code == "timestamp_too_far_in_past":
            fix = "bill it by hand (an invoice item or credit on the customer's invoice)"
        else:
            fix = (f"fix the meter mapping ({record.meter}) or the customer reference ({record.reference}), "
                   "then send it again with --retry-parked")
        return self._failed(record, f"Stripe refused the meter event ({what}): {message}{request}; {fix}",
                            retryable=False)

    def _failed(self, record: UsageRecord, reason: str, retryable: bool) -> SendResult:
        error = self._without_key(
            f"{record.meter} for {record.reference}, window from "
            f"{_utc(self._timestamp(record))}, revision {record.revision}: {reason}")
        logger.warning("billing target %s: meter event %s not delivered (%s): %s", self.name, record.key,
                       "will retry" if retryable else "parked", error)
        return SendResult(record.key, False, error=error, retryable=retryable)

    def _without_key(self, text: str) -> str:
        if self._api_key:
            text = text.replace(self._api_key, "<api key>")
        return _KEY_SHAPED.sub("<api key>", text)


def create_stripe_target(name: str, config: StripeTargetConfig) -> StripeTarget:
    return StripeTarget(name, config)


FACTORY = register_target(TargetFactory(type=TYPE, config_model=StripeTargetConfig, create=create_stripe_target,
                                        integer_values=StripeTarget.integer_values))
