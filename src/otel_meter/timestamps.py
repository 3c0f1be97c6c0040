"""Times as otel-meter holds them (integer nanoseconds since the epoch, UTC) and as people and
the API write them (ISO 8601 text); a core module, so that a command that only formats a time
does not load the store or the rate cards."""

from __future__ import annotations

from datetime import datetime, timezone

from otel_meter.errors import UsageRequestError


def iso(time_ns: int) -> str:
    """ISO 8601 in UTC with a ``Z``, to the microsecond when there is a fraction."""
    moment = datetime.fromtimestamp(time_ns // 10**9, tz=timezone.utc).replace(microsecond=time_ns % 10**9 // 1000)
    return moment.isoformat().replace("+00:00", "Z")


def parse_time(name: str, text: str) -> datetime:
    """The ISO 8601 time of the parameter ``name``; without an offset it is UTC."""
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace(" ", "+", 1) if "T" in text
                                       else text.strip())
    except ValueError:
        raise UsageRequestError(f"{name}: {text!r} is not an ISO 8601 time such as 2026-11-01T00:00:00Z") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value


def to_ns(value: datetime) -> int:
    """Nanoseconds since the epoch, exactly (no float on the way)."""
    delta = value - datetime(1970, 1, 1, tzinfo=timezone.utc)
    return (delta.days * 86400 + delta.seconds) * 10**9 + delta.microseconds * 1000
