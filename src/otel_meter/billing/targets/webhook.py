"""Billing target ``webhook``: POST rated usage records as signed JSON documents to a URL.

The records of a send go out in batches of ``batch_size``; each batch is one document in the envelope
of :mod:`otel_meter.webhooks` (``{"created", "data", "id", "type"}``, keys sorted, ``type``
``billing.usage_records``, ``data`` = ``{"records": [...], "target": <name>}``, each record with the
fields of the file targets). The batch ``id`` (also the ``Webhook-Id`` header) is a hash of the
batch's record keys, so the same batch has the same id on every attempt and in every later run: a
receiver deduplicates retries on it, and on each record's ``key`` across differently cut batches.

Every attempt is signed (``Otel-Meter-Signature: t=<unix seconds>,v1=<HMAC-SHA256>``, verify with
:func:`otel_meter.webhooks.verify`). Delivery is synchronous (the export job runs in its own thread)
with the retry rules of :class:`otel_meter.webhooks.WebhookSender`: connection errors, timeouts,
408, 425, 429 and 5xx are retried with exponential backoff and full jitter (``Retry-After`` honoured,
capped at ``max_backoff``); after ``max_attempts`` the batch's records fail retryably. Any other 4xx
fails them at once, not retryably: the receiver refuses the document and a resend would not change that.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import random
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable
from urllib.parse import urlsplit

from pydantic import Field

from otel_meter import __version__
from otel_meter.billing.target import SendResult, TargetConfig, TargetFactory, UsageRecord, register_target
from otel_meter.billing.targets.files import record_fields
from otel_meter.webhooks import (
    RETRY_STATUSES,
    SIGNATURE_HEADER,
    WebhookConfig,
    WebhookError,
    WebhookEvent,
    _retry_after,
    encode_body,
    sign,
)

__all__ = ["EVENT_TYPE", "WebhookTarget", "WebhookTargetConfig", "batch_id"]

logger = logging.getLogger(__name__)

EVENT_TYPE = "billing.usage_records"


class WebhookTargetConfig(TargetConfig, WebhookConfig):
    """``url``, ``timeout``, ``max_attempts``, ``initial_backoff``, ``max_backoff`` and ``headers`` as
    for alert webhooks (:class:`otel_meter.webhooks.WebhookConfig`); ``secret`` is required here."""

    secret: str = Field(min_length=1, repr=False)  # type: ignore[assignment]
    """HMAC-SHA256 key: billing data is always signed."""
    batch_size: int = Field(default=500, ge=1, le=10_000)
    """Records per POST."""


def batch_id(records: list[UsageRecord]) -> str:
    """32 hex characters of SHA-256 over the batch's keys: the same batch, the same id."""
    return hashlib.sha256("\n".join(record.key for record in records).encode()).hexdigest()[:32]


@dataclass(frozen=True)
class _Outcome:
    delivered: bool
    detail: str
    retryable: bool


class WebhookTarget:
    integer_values = False
    negative_values = True
    """A correction is a record with the (negative) change and ``is_correction`` true; ``total`` says
    what the window holds after it."""

    def __init__(self, name: str, config: WebhookTargetConfig, *, sleep: Callable[[float], Any] = time.sleep,
                 clock: Callable[[], float] = time.time) -> None:
        self.name = name
        self.config = config
        self._sleep = sleep
        self._clock = clock

    def send(self, records: list[UsageRecord], progress: Callable[[int], None]) -> list[SendResult]:
        results: list[SendResult] = []
        size = self.config.batch_size
        for start in range(0, len(records), size):
            batch = records[start:start + size]
            identifier = batch_id(batch)
            try:
                event = WebhookEvent(identifier, EVENT_TYPE,
                                     {"target": self.name, "records": [record_fields(record) for record in batch]})
                body = encode_body(event, datetime.fromtimestamp(self._clock(), timezone.utc))
            except (ValueError, WebhookError) as error:  # a non-finite decimal: the data must be fixed first
                outcome = _Outcome(False, str(error), False)
            else:
                outcome = self._deliver(identifier, body)
            if not outcome.delivered:
                logger.warning("billing target %s: batch %s (%d records) not delivered to %s: %s", self.name,
                               identifier, len(batch), self.config.url, outcome.detail)
            message = "" if outcome.delivered else f"{self.name}: batch {identifier}: {outcome.detail}"
            results.extend(SendResult(record.key, outcome.delivered, identifier if outcome.delivered else "", message,
                                      outcome.retryable) for record in batch)
            progress(len(batch))
        return results

    def _deliver(self, identifier: str, body: bytes) -> _Outcome:
        initial, ceiling = self.config.initial_backoff.total_seconds(), self.config.max_backoff.total_seconds()
        detail = ""
        for attempt in range(1, self.config.max_attempts + 1):
            status, detail, retry_after = self._attempt(identifier, body)
            if 200 <= status < 300:
                return _Outcome(True, detail, False)
            if status and status not in RETRY_STATUSES and not 500 <= status < 600:
                return _Outcome(False, detail, False)
            if attempt < self.config.max_attempts:
                backoff = random.uniform(initial, min(ceiling, initial * 2**attempt))
                self._sleep(min(ceiling, backoff if retry_after is None else retry_after))
        return _Outcome(False, f"gave up after {self.config.max_attempts} attempts: {detail}", True)

    def _attempt(self, identifier: str, body: bytes) -> tuple[int, str, float | None]:
        """One signed POST: (status, detail, Retry-After seconds); status 0 when no response came."""
        timestamp = int(self._clock())
        headers = {"Content-Type": "application/json", "User-Agent": f"otel-meter/{__version__}",
                   **self.config.headers, "Webhook-Id": identifier, "Webhook-Timestamp": str(timestamp),
                   SIGNATURE_HEADER: sign(self.config.secret, timestamp, body)}
        url = urlsplit(self.config.url)
        connection_type = http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
        connection = connection_type(url.hostname, url.port, timeout=self.config.timeout.total_seconds())
        try:
            connection.request("POST", (url.path or "/") + (f"?{url.query}" if url.query else ""), body, headers)
            response = connection.getresponse()
            text = response.read(4096).decode(errors="replace")[:200]
        except (OSError, http.client.HTTPException) as error:
            return 0, f"{type(error).__name__}: {error}", None
        finally:
            connection.close()
        wait = _retry_after(response.getheader("Retry-After"), self._clock()) if response.status in (429, 503) else None
        return response.status, f"HTTP {response.status}" + (f": {text}" if text else ""), wait

    def close(self) -> None:
        pass


FACTORY = register_target(TargetFactory("webhook", WebhookTargetConfig,
                                        lambda name, config: WebhookTarget(name, config)))
