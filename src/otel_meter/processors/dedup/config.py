from datetime import timedelta

from pydantic import Field

from otel_meter.component_model import ComponentConfig, Duration


class DedupConfig(ComponentConfig):
    window: Duration = timedelta(days=7)
    """An event re-sent within this time of its own timestamp is counted once, even across restarts."""
    max_cached_keys: int = Field(default=2_000_000, gt=0)
    """Event ids kept in memory; older ones are checked against the store instead."""
    preload: Duration = timedelta(hours=1)
    """At start, event ids of this recent past are loaded from the store into memory."""
    shared_store: bool = False
    """Other otel-meter replicas write to the same store: an id not in memory is also looked up in
    the store (one query per batch), so a retry that reaches another replica is caught once its
    first copy is stored."""
