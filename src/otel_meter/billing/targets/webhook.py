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
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable

import httpx
from pydantic import Field

from otel_meter.billing.target import SendResult, TargetConfig, TargetFactory, UsageRecord, register_target
from otel_meter.billing.targets.files import record_fields
from otel_meter.http import new_client
from otel_meter.webhooks import (
    RETRIED,
    WebhookConfig,
    WebhookError,
    WebhookEvent,
    deliver,
    delivery_detail,
    encode_body,
)

__all__ = ["EVENT_TYPE", "WebhookTarget", "WebhookTargetConfig", "batch_id"]

logger = logging.getLogger(__name__)

EVENT_TYPE = "billing.usage_records"


class WebhookTargetConfig(TargetConfig, WebhookConfig):
    """``url``, ``timeout``, ``max_attempts``, ``initial_backoff``, ``max_backoff`` and ``headers`` as
    for alert webhooks (:class:`otel_meter.webhooks.WebhookConfig`); ``secret`` is required here."""

    secret: str = Field(min_length=1, repr=False)
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
        with new_client(self.config.timeout.total_seconds()) as client:
            return self._send(client, records, progress)

    def _send(self, client: httpx.Client, records: list[UsageRecord],
              progress: Callable[[int], None]) -> list[SendResult]:
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
                outcome = self._deliver(client, identifier, body)
            if not outcome.delivered:
                logger.warning("billing target %s: batch %s (%d records) not delivered to %s: %s", self.name,
                               identifier, len(batch), self.config.url, outcome.detail)
            message = "" if outcome.delivered else f"{self.name}: batch {identifier}: {outcome.detail}"
            results.extend(SendResult(record.key, outcome.delivered, identifier if outcome.delivered else "", message,
                                      outcome.retryable) for record in batch)
            progress(len(batch))
        return results

    def _deliver(self, client: httpx.Client, identifier: str, body: bytes) -> _Outcome:
        outcome = deliver(client, self.config, identifier, body, sleep=self._sleep, clock=self._clock)
        detail = delivery_detail(outcome.result)
        if outcome.result.ok:
            return _Outcome(True, detail, False)
        if not RETRIED(outcome.result):
            return _Outcome(False, detail, False)
        return _Outcome(False, f"gave up after {outcome.attempts} attempts: {detail}", True)

    def close(self) -> None:
        pass


FACTORY = register_target(TargetFactory("webhook", WebhookTargetConfig,
                                        lambda name, config: WebhookTarget(name, config)))
