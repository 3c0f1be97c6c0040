"""Every outgoing HTTP call of otel-meter: one httpx client setup, one answer type, one retry policy.

Webhooks, the events client, ``replay`` and the billing targets (except Stripe, which keeps its
official SDK) make their calls through :func:`send` (or :func:`exchange` and :func:`call_with_retries`
where an attempt needs more than one request) and read an :class:`HttpAnswer`.
"""

from otel_meter.http.client import USER_AGENT, HttpAnswer, HttpRequest, exchange, new_client
from otel_meter.http.retry import (
    RATE_LIMITED_OR_FAILED,
    Doubling,
    FullJitter,
    Outcome,
    RetryPolicy,
    RetryStatuses,
    TransientError,
    call_with_retries,
    retry_after_seconds,
    send,
)

__all__ = ["RATE_LIMITED_OR_FAILED", "USER_AGENT", "Doubling", "FullJitter", "HttpAnswer", "HttpRequest", "Outcome",
           "RetryPolicy", "RetryStatuses", "TransientError", "call_with_retries", "exchange", "new_client",
           "retry_after_seconds", "send"]
