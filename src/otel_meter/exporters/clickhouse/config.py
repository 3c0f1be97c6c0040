from datetime import timedelta

from pydantic import Field, field_validator

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

    @field_validator("endpoint")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        if value.startswith("chdb://") and len(value) > len("chdb://"):
            return value
        if value.startswith(("http://", "https://")):
            return value
        raise ValueError(f"{value!r}: use chdb://PATH (embedded) or http(s)://user:pass@host:8123/db")

    @property
    def store_key(self) -> tuple[str, str]:
        """Exporters with the same endpoint and database share one store (one process owns a chDB path)."""
        return (self.endpoint, self.database)
