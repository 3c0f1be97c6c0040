"""Admission control, the memory limiter and fault points, without a server."""

from __future__ import annotations

import threading
from datetime import timedelta

import grpc
import pytest
from pydantic import ValidationError

from otel_meter import faults
from otel_meter.errors import ConfigError
from otel_meter.receivers.otlp.admission import Admission, Overloaded
from otel_meter.receivers.otlp.config import OtlpReceiverConfig
from otel_meter.receivers.otlp.memory_limiter import MIB, MemoryLimiter, MemoryLimiterConfig, resident_bytes


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def limiter(readings: list[int], clock: Clock, released: list[int] | None = None, **config: object) -> MemoryLimiter:
    values = iter(readings)
    settings = {"limit_mib": 1000, "spike_limit_mib": 200, "check_interval": timedelta(milliseconds=100), **config}
    return MemoryLimiter(MemoryLimiterConfig.model_validate(settings), "receivers.otlp.memory_limiter",
                         read_resident=lambda: next(values) * MIB,
                         release=lambda: (released if released is not None else []).append(1), clock=clock)


def test_memory_limiter_refuses_at_the_soft_limit_and_takes_again_below_it() -> None:
    clock = Clock()
    memory = limiter([700, 850, 820, 790], clock)
    assert memory.refusal() is None
    clock.now += 0.1
    reason = memory.refusal()  # 850, then 820 once memory was released: still above 800
    assert reason == ("otel-meter is using 820 MiB of memory, above the soft limit of 800 MiB "
                      "(receivers.otlp.memory_limiter); retry shortly")
    clock.now += 0.1
    assert memory.refusal() is None  # 790


def test_memory_limiter_reads_memory_at_most_once_per_check_interval() -> None:
    clock = Clock()
    readings = [700]
    memory = limiter(readings, clock)
    for _ in range(1000):
        assert memory.refusal() is None
        clock.now += 0.0001  # 0.1 s in all: the one reading taken must do


def test_memory_held_only_by_allocators_is_released_before_refusing() -> None:
    clock = Clock()
    released: list[int] = []
    memory = limiter([900, 600], clock, released)
    assert memory.refusal() is None
    assert released == [1]


def test_memory_is_released_at_most_once_a_second() -> None:
    clock = Clock()
    released: list[int] = []
    memory = limiter([900] * 6, clock, released)
    for _ in range(3):
        assert memory.refusal() is not None
        clock.now += 0.2
    assert released == [1]
    clock.now += 0.5
    memory.refusal()
    assert released == [1, 1]


def test_memory_staying_above_the_soft_limit_is_warned_about_once_a_minute(
        caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    memory = limiter([900] * 300, clock)
    for _ in range(130):  # 130 s above the soft limit, a reading each second
        assert memory.refusal() is not None
        clock.now += 1.0
    warnings = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
    assert warnings[0].startswith("memory use 900 MiB is at or above the soft limit of 800 MiB")
    assert [message[:74] for message in warnings[1:]] == [
        "memory use 900 MiB has stayed at or above the soft limit of 800 MiB for 60"] + [
        "memory use 900 MiB has stayed at or above the soft limit of 800 MiB for 12"]
    assert "raise limit_mib" in warnings[1]


def test_spike_limit_defaults_to_a_fifth_and_must_be_below_the_limit() -> None:
    assert MemoryLimiterConfig(limit_mib=1000).soft_limit_mib == 800
    with pytest.raises(ValidationError, match="spike_limit_mib .1000. must be below limit_mib .1000."):
        MemoryLimiterConfig(limit_mib=1000, spike_limit_mib=1000)
    with pytest.raises(ValidationError, match="check_interval must be more than 0"):
        MemoryLimiterConfig(limit_mib=1000, check_interval="0s")
    config = OtlpReceiverConfig.model_validate({"memory_limiter": {"limit_mib": 512}})
    assert config.memory_limiter is not None and config.memory_limiter.soft_limit_mib == 410


def test_resident_memory_is_read_from_proc() -> None:
    assert resident_bytes() > 10 * MIB


def test_admission_caps_requests_and_bytes_but_always_takes_a_request_alone() -> None:
    admission = Admission(max_requests=2, max_in_flight_mib=1, memory_limiter=None, where="receivers.otlp.protocols.http")
    alone = admission.admit(5 * MIB)  # bigger than the cap, but alone
    with pytest.raises(Overloaded) as refused:
        admission.admit(1)
    assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "exceed receivers.otlp.protocols.http.max_in_flight_mib (1 MiB)" in str(refused.value)
    alone.release()
    first, second = admission.admit(100), admission.admit(100)
    with pytest.raises(Overloaded, match=r"processing 2 requests, its limit \(receivers.otlp.protocols.http"
                                         r".max_concurrent_requests\)"):
        admission.admit(100)
    with pytest.raises(Overloaded):
        first.grow(MIB)  # its inflated body would not fit with the other request's
    second.release()
    first.grow(MIB)  # alone now
    first.release()
    first.release()  # twice is harmless
    assert (admission.requests, admission.bytes, admission.refused) == (0, 0, 3)


def test_admission_refuses_with_unavailable_while_memory_is_above_the_soft_limit() -> None:
    clock = Clock()
    admission = Admission(8, 64, limiter([900, 900], clock), "receivers.otlp.protocols.grpc")
    with pytest.raises(Overloaded) as refused:
        admission.admit(10)
    assert refused.value.code == grpc.StatusCode.UNAVAILABLE
    assert admission.requests == 0 and admission.refused == 1


def test_fault_spec_is_parsed_and_bad_ones_name_the_variable() -> None:
    assert faults.parse("after_queue_fsync:7, before_ack:1") == {"after_queue_fsync": 7, "before_ack": 1}
    assert faults.parse("") == {}
    with pytest.raises(ConfigError, match="OTEL_METER_FAULT: unknown fault point 'after_fsync'; use one of"):
        faults.parse("after_fsync:1")
    with pytest.raises(ConfigError, match="needs a hit count of 1 or more, e.g. before_ack:3"):
        faults.parse("before_ack:0")


def test_an_armed_point_kills_exactly_once_at_its_hit_across_threads() -> None:
    kills: list[tuple[str, int]] = []
    crash_point = faults.armed_crash_point({"before_ack": 250}, kill=lambda point, hit: kills.append((point, hit)))
    threads = [threading.Thread(target=lambda: [crash_point(p) for p in ("before_ack", "after_receive") * 100])
               for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert kills == [("before_ack", 250)]


def test_fault_points_do_nothing_unless_armed() -> None:
    assert faults.crash_point is faults._no_fault  # the test process has no OTEL_METER_FAULT
