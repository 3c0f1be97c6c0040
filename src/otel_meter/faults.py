"""Crash the process on purpose at a named point: how the crash-safety tests pick their moment.

Set ``OTEL_METER_FAULT=POINT:N`` (several: ``POINT:N,POINT:M``) in the environment of
``otel-meter serve`` and the process kills itself with ``SIGKILL`` (as ``kill -9`` would: no
handler, no flush, no exit code of its own) at the ``N``-th time any thread reaches ``POINT``.
Just before, it writes ``otel-meter: fault injection: SIGKILL at POINT (hit N)`` to stderr.

The variable is read once, at import. When it is not set (always, outside tests),
:func:`crash_point` is a function that does nothing, so the calls left in the code cost one
call each.

Points, in the order a request meets them:

``after_receive``
    the receiver has the request (authenticated, admitted, decoded), nothing is queued yet;
``before_queue_append``
    the queue writer is about to append a group of requests to the local queue;
``after_queue_fsync``
    that record is fsync'd, its requests are not answered yet;
``before_ack``
    the pipeline has made the request durable, the answer is not sent yet;
``before_store_insert``
    the store writer is about to insert a block into ClickHouse (also on each retry and
    in the replay at start); with ``extraction: engine`` and the compiled pipeline, an
    extractor is about to make a block's rated insert, written down as under way;
``after_store_insert_before_checkpoint``
    ClickHouse took the block, the queue's checkpoint is not advanced yet;
``after_engine_store_before_checkpoint``
    (``extraction: engine``) the usage of a block of journaled requests is in the exporters'
    queues, or (compiled pipeline) inserted in the store with its insert still written down as
    under way; the request journal's checkpoint is not advanced yet.
"""

from __future__ import annotations

import itertools
import os
import signal
import sys
from typing import Callable

from otel_meter.errors import ConfigError

ENVIRONMENT_VARIABLE = "OTEL_METER_FAULT"
POINTS = ("after_receive", "before_queue_append", "after_queue_fsync", "before_ack", "before_store_insert",
          "after_store_insert_before_checkpoint", "after_engine_store_before_checkpoint")


def parse(text: str) -> dict[str, int]:
    """``POINT:N[,POINT:N...]`` -> {point: hit at which to crash}."""
    armed: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        point, separator, count = item.partition(":")
        if point not in POINTS:
            raise ConfigError(f"{ENVIRONMENT_VARIABLE}: unknown fault point {point!r}; use one of {', '.join(POINTS)}")
        if not separator or not count.isdigit() or int(count) < 1:
            raise ConfigError(f"{ENVIRONMENT_VARIABLE}: {item!r} needs a hit count of 1 or more, e.g. {point}:3")
        armed[point] = int(count)
    return armed


def kill_self(point: str, hit: int) -> None:
    sys.stderr.write(f"otel-meter: fault injection: SIGKILL at {point} (hit {hit})\n")
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def armed_crash_point(armed: dict[str, int], kill: Callable[[str, int], None] = kill_self) -> Callable[[str], None]:
    """A :func:`crash_point` that kills at the armed hits. Counting is thread-safe:
    ``next`` on an ``itertools.count`` is atomic, so exactly one thread sees hit N."""
    counters = {point: itertools.count(1) for point in armed}

    def crash_point(point: str) -> None:
        counter = counters.get(point)
        if counter is not None:
            hit = next(counter)
            if hit == armed[point]:
                kill(point, hit)

    return crash_point


def _no_fault(point: str) -> None:
    """Nothing armed: do nothing."""


_ARMED = parse(os.environ.get(ENVIRONMENT_VARIABLE, ""))
crash_point: Callable[[str], None] = armed_crash_point(_ARMED) if _ARMED else _no_fault
"""Call ``crash_point("NAME")`` at a point listed in POINTS; with nothing armed it does nothing."""
