"""What applications import to send usage to otel-meter directly: the events client.

    from otel_meter.sdk import Event, EventsClient
"""

from otel_meter.sdk.events_client import (
    Event,
    EventsClient,
    EventsError,
    EventsRejectedError,
    EventsUnavailableError,
    IngestResult,
    RejectedEvent,
)

__all__ = ["Event", "EventsClient", "IngestResult", "RejectedEvent", "EventsError", "EventsRejectedError",
           "EventsUnavailableError"]
