from datetime import timedelta

from pydantic import Field, field_validator

from otel_meter.component_model import ComponentConfig, Duration


class SendingQueueConfig(ComponentConfig):
    """The local write-ahead queue. A request is acknowledged once its usage is here
    (fsync'd); the writer drains it into ClickHouse and replays it after a crash."""

    directory: str | None = None
    """Default: ``queue`` inside the chDB directory, or ``./otel-meter-queue`` for a ClickHouse server."""
    max_size_mib: int = Field(default=1024, gt=0)
    """Usage not yet in the store that the queue may hold; beyond it, clients are told to retry."""
    fsync: bool = True
    """fsync each group of requests before acknowledging it. Off trades crash safety for speed."""


class ClickHouseExporterConfig(ComponentConfig):
    endpoint: str = "chdb://./data"
    """``chdb://PATH`` (embedded, relative to the working directory) or ``http(s)://user:pass@host:8123/db``."""
    database: str = Field(default="otel_meter", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    """Database used when the endpoint names none."""
    create_schema: bool = True
    """Apply pending schema migrations at start."""
    flush_interval: Duration = timedelta(milliseconds=50)
    """Longest queued usage waits for more to share its insert."""
    batch_size: int = Field(default=200_000, gt=0)
    """Rows that trigger an insert at once (an insert may hold more when a single request is larger)."""
    sending_queue: SendingQueueConfig = SendingQueueConfig()

    @field_validator("sending_queue", mode="before")
    @classmethod
    def _empty_means_defaults(cls, value: object) -> object:
        return {} if value is None else value
    shutdown_timeout: Duration = timedelta(seconds=30)
    """How long shutdown keeps trying to store queued usage (what remains stays queued), and
    how long start-up replays the queue before leaving the rest to the running writer."""
    timeout: Duration = timedelta(seconds=30)
    """ClickHouse server only: how long a request may go without an answer (no byte, no
    progress header) before it fails and is retried."""

    @field_validator("timeout")
    @classmethod
    def _positive_timeout(cls, value: timedelta) -> timedelta:
        if value.total_seconds() < 1:
            raise ValueError("must be at least 1s")
        return value

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
