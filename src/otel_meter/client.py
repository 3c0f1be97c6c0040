"""The events client's first import path, kept so that applications importing it keep working;
the client is :mod:`otel_meter.sdk`."""

from otel_meter.sdk import (
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
