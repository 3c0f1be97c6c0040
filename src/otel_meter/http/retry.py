"""The one retry policy of outgoing HTTP calls.

A call is made again while its answer is worth another attempt (:attr:`RetryPolicy.retry_on`: no
answer, and the statuses each caller names, such as 429 and 5xx), at most ``max_attempts`` times and,
with a ``deadline``, only while the next attempt can start before it. Before retry ``n`` (from 1) it
waits ``backoff(n)`` (:class:`FullJitter` or :class:`Doubling`), or what the server asked for in
``Retry-After`` (seconds or an HTTP date; ``RateLimit-Reset`` too where a caller names it), either
way at most ``max_wait``. An idempotency key is part of the request (:class:`HttpRequest`), set
unchanged on every attempt, so a server that got an attempt whose answer was lost recognises the next.

Built on tenacity (``tenacity.Retrying``), not stamina and not a loop of our own. The callers need
four things, each an argument of ``Retrying``: retry decisions on *answers* (an HTTP status, NetSuite's
concurrency codes in a 400 body), not only on exceptions (``retry_if_result``); the backoff each of
them documents, which differ (full jitter between ``initial_backoff`` and ``max_backoff`` for webhooks
and billing targets, doubling within +-20 % for the events client, plain doubling for ``replay``),
and a wait that reads the last answer's ``Retry-After`` (a ``wait`` callable); stops that combine
attempts, a deadline and a shutdown (``stop_after_attempt | stop_before_delay | ...``); and a sleep
per call (a webhook sender's wait returns early on shutdown; tests record the waits of one sender).
stamina, a layer over tenacity, fixes one backoff formula (exponential plus additive jitter),
retries on exceptions only, and turns waits off for tests process-wide (``stamina.set_testing``):
each of the four would have to be worked around. Seven hand-written loops had drifted apart (five
copies of the ``Retry-After`` parser); the policy is now data, and the loop is tenacity's.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from datetime import timezone
from email.utils import parsedate_to_datetime
from typing import Callable, Generic, TypeVar

import httpx
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    retry_if_result,
    stop_after_attempt,
    stop_before_delay,
)
from tenacity.stop import stop_base

from otel_meter.http.client import HttpAnswer, HttpRequest, exchange

__all__ = ["Backoff", "Doubling", "FullJitter", "Outcome", "RetryPolicy", "RetryStatuses", "TransientError",
           "call_with_retries", "retry_after_seconds", "send"]

T = TypeVar("T")

Backoff = Callable[[int], float]
"""Seconds to wait before retry ``n`` (1 for the second attempt) when the server did not say."""

_MAX_DOUBLINGS = 64
"""Beyond this many doublings every cap has long been reached; keeps ``2**n`` a float."""


@dataclass(frozen=True)
class FullJitter:
    """Retry ``n`` waits a uniform random time between ``initial`` and ``min(ceiling, initial * 2**n)``:
    clients that failed together do not retry together."""

    initial: float
    ceiling: float

    def __call__(self, retry: int) -> float:
        return random.uniform(self.initial, min(self.ceiling, self.initial * 2.0 ** min(retry, _MAX_DOUBLINGS)))


@dataclass(frozen=True)
class Doubling:
    """Retry ``n`` waits ``base * 2**(n - 1)``, times a uniform factor in ``[1 - spread, 1 + spread]``."""

    base: float
    spread: float = 0.0

    def __call__(self, retry: int) -> float:
        wait = self.base * 2.0 ** min(retry - 1, _MAX_DOUBLINGS)
        return wait * random.uniform(1 - self.spread, 1 + self.spread) if self.spread else wait


@dataclass(frozen=True)
class RetryStatuses:
    """Answers worth another attempt: no answer at all (status 0: refused, reset, timed out), the
    ``statuses`` named and, with ``server_errors``, every 5xx."""

    statuses: frozenset[int]
    server_errors: bool = True

    def __call__(self, answer: HttpAnswer) -> bool:
        return (answer.status == 0 or answer.status in self.statuses
                or (self.server_errors and 500 <= answer.status < 600))


RATE_LIMITED_OR_FAILED = RetryStatuses(frozenset({429}))
"""No answer, 429 and 5xx."""


@dataclass(frozen=True)
class RetryPolicy:
    """When to try a call again and how long to wait first."""

    max_attempts: int
    """Attempts in all, counting the first."""
    backoff: Backoff
    """The wait before retry ``n`` when the server did not ask for one."""
    max_wait: float
    """Caps every wait, a server's ``Retry-After`` too."""
    retry_on: Callable[[HttpAnswer], bool] = RATE_LIMITED_OR_FAILED
    """Answers worth another attempt; any other answer is final."""
    retry_after_on: frozenset[int] | None = frozenset({429, 503})
    """Statuses whose ``Retry-After`` is honoured; None: every answer retried."""
    retry_after_headers: tuple[str, ...] = ("retry-after",)
    """Read in this order; the first readable one counts (e.g. ``ratelimit-reset`` after ``retry-after``)."""
    retry_after_is_minimum: bool = False
    """Wait the longer of the backoff and what the server asked (as the OpenTelemetry Collector does),
    instead of exactly what it asked."""
    deadline: float | None = None
    """Seconds from the first attempt after which no retry starts (None: attempts alone bound the call)."""

    def asked_wait(self, answer: HttpAnswer, now: float) -> float | None:
        """Seconds the server asked for in ``answer`` (``now``: unix seconds, for an HTTP date)."""
        if self.retry_after_on is not None and answer.status not in self.retry_after_on:
            return None
        for name in self.retry_after_headers:
            seconds = retry_after_seconds(answer.headers.get(name), now)
            if seconds is not None:
                return seconds
        return None

    def wait_before(self, retry: int, asked: float | None) -> float:
        """Seconds to wait before retry ``retry`` (from 1), given what the server asked (None: nothing)."""
        own = self.backoff(retry)
        if asked is None:
            wait = own
        else:
            wait = max(own, asked) if self.retry_after_is_minimum else asked
        return min(self.max_wait, wait)


class TransientError(Exception):
    """Raised by an attempt that failed outside HTTP in a way worth retrying (e.g. a gRPC
    ``UNAVAILABLE``); ``retry_after``: seconds the server asked for, if it did. Re-raised when the
    retries run out, with ``attempts`` set."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.attempts = 0


@dataclass(frozen=True)
class Outcome(Generic[T]):
    """The last attempt's result and how many attempts were made."""

    result: T
    attempts: int
    interrupted: bool = False
    """The call stopped early because ``interrupted()`` said so, on an answer worth retrying."""


class _Interrupted(Exception):
    pass


def retry_after_seconds(value: str | None, now: float) -> float | None:
    """Seconds asked for by a ``Retry-After`` value: a number of seconds or an HTTP date (counted from
    ``now``, unix seconds); None when absent or unreadable. Never negative."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            moment = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return max(0.0, moment.replace(tzinfo=moment.tzinfo or timezone.utc).timestamp() - now)
    return None if math.isnan(seconds) else max(0.0, seconds)


class StopWhenInterrupted(stop_base):
    """Stops the attempts once ``interrupted()`` says so (e.g. the process is shutting down)."""

    def __init__(self, interrupted: Callable[[], bool]) -> None:
        self.interrupted = interrupted

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self.interrupted()


def call_with_retries(attempt: Callable[[], T], policy: RetryPolicy, *, sleep: Callable[[float], object] = time.sleep,
                      clock: Callable[[], float] = time.time, interrupted: Callable[[], bool] | None = None,
                      before_retry: Callable[[T | TransientError, int, float], None] | None = None) -> Outcome[T]:
    """Run ``attempt`` until its result is not an :class:`HttpAnswer` the policy retries, or the
    attempts or the deadline run out; the last result. An attempt may raise :class:`TransientError`
    to be retried too (re-raised with ``attempts`` set when the retries run out); any other exception
    ends the call at once.

    ``sleep`` waits between attempts; ``clock`` gives unix seconds (for ``Retry-After`` dates);
    ``interrupted`` is checked before and after each wait, and stops the call (a shutdown);
    ``before_retry(last result or error, next attempt number, wait)`` is called before each wait."""
    attempts = 0
    last: list[T | TransientError] = []

    def counted() -> T:
        nonlocal attempts
        attempts += 1
        try:
            result = attempt()
        except TransientError as error:
            last[:] = [error]
            raise
        last[:] = [result]
        return result

    def retryable(result: object) -> bool:
        return isinstance(result, HttpAnswer) and policy.retry_on(result)

    def wait(state: RetryCallState) -> float:
        assert state.outcome is not None
        failure = state.outcome.exception()
        if isinstance(failure, TransientError):
            asked = failure.retry_after
        else:
            result = state.outcome.result()
            asked = policy.asked_wait(result, clock()) if isinstance(result, HttpAnswer) else None
        return policy.wait_before(state.attempt_number, asked)

    def pause(seconds: float) -> None:
        sleep(seconds)
        if interrupted is not None and interrupted():
            raise _Interrupted

    def announce(state: RetryCallState) -> None:
        assert state.outcome is not None and before_retry is not None
        failure = state.outcome.exception()
        before_retry(failure if isinstance(failure, TransientError) else state.outcome.result(),
                     state.attempt_number + 1, state.upcoming_sleep)

    stop: stop_base = stop_after_attempt(policy.max_attempts)
    if policy.deadline is not None:
        stop = stop | stop_before_delay(policy.deadline)
    if interrupted is not None:
        stop = stop | StopWhenInterrupted(interrupted)
    retrying = Retrying(sleep=pause, stop=stop, wait=wait,
                        retry=retry_if_exception_type(TransientError) | retry_if_result(retryable),
                        before_sleep=announce if before_retry is not None else None,
                        retry_error_callback=lambda state: state.outcome.result() if state.outcome else None,
                        reraise=True)
    try:
        try:
            result = retrying(counted)
        except _Interrupted:
            if isinstance(last[0], TransientError):
                raise last[0] from None
            result = last[0]
    except TransientError as error:
        error.attempts = attempts
        raise
    stopped = interrupted is not None and retryable(result) and interrupted()
    return Outcome(result, attempts, stopped)


def send(client: httpx.Client, request: HttpRequest, policy: RetryPolicy, *,
         sleep: Callable[[float], object] = time.sleep, clock: Callable[[], float] = time.time,
         interrupted: Callable[[], bool] | None = None,
         before_retry: Callable[[HttpAnswer, int, float], None] | None = None) -> Outcome[HttpAnswer]:
    """``request`` through ``client`` with retries by ``policy``: the last answer (status 0 if none came)."""
    return call_with_retries(lambda: exchange(client, request), policy, sleep=sleep, clock=clock,
                             interrupted=interrupted, before_retry=before_retry)  # type: ignore[arg-type]
