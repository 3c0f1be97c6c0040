from datetime import timedelta

from pydantic import Field

from otel_meter.component import ComponentConfig, Duration


class ClickHouseExporterConfig(ComponentConfig):
    endpoint: str = "chdb://./data"
    """``chdb://PATH`` (embedded, relative to the working directory) or ``http(s)://user:pass@host:8123/db``."""
    database: str = Field(default="otel_meter", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    """Database used when the endpoint names none."""
    create_schema: bool = True
    """Apply pending schema migrations at start."""
    flush_interval: Duration = timedelta(milliseconds=50)
    """Longest a row waits for others to share its insert."""
    batch_size: int = Field(default=100_000, gt=0)
    """Rows that trigger an insert at once."""
    timeout: Duration = timedelta(seconds=30)
    """How long a write may keep retrying before the clients are told to retry instead."""
