from datetime import timedelta

from pydantic import Field

from otel_meter.component import ComponentConfig, Duration


class DedupConfig(ComponentConfig):
    window: Duration = timedelta(days=7)
    """An event re-sent within this time of its own timestamp is counted once, even across restarts."""
    max_cached_keys: int = Field(default=2_000_000, gt=0)
    """Event ids kept in memory; older ones are checked against the store instead."""
    preload: Duration = timedelta(hours=1)
    """At start, event ids of this recent past are loaded from the store into memory."""
