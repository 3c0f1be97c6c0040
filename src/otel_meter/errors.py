"""One exception hierarchy for the whole service.

Every message names the thing that is wrong, where it is (a config key path, a
rate card line, a span id) and, where there is one, the fix.
"""


class OtelMeterError(Exception):
    """Base of every error otel-meter raises on purpose."""


class ConfigError(OtelMeterError):
    """The configuration cannot be used; the message names the key path."""


class RateCardError(ConfigError):
    """A rate card is invalid; the message names the file and the entry."""


class StoreError(OtelMeterError):
    """The ClickHouse store failed or cannot be reached."""


class StoreLockedError(StoreError):
    """An embedded chDB store is already owned by another process."""


class ExportError(OtelMeterError):
    """Usage could not be written; the client should retry."""


class QueueFullError(ExportError):
    """The local queue holds as much unstored usage as it may: backpressure, retry later."""


class StoreAccessError(StoreError):
    """A ClickHouse server refused the configured user, password or rights: a setting to fix,
    not an outage to wait out."""


class StoreUnavailableError(StoreError, ExportError):
    """A ClickHouse server cannot be reached (or keeps failing) right now. Usage already
    acknowledged waits in the local queue; a request that needs the store to be answered
    exactly (a dedup check of an older event) is refused retryably."""


class UsageRequestError(OtelMeterError):
    """A usage request with a bad parameter; the message names it."""


class BillingExportError(OtelMeterError):
    """A billing export cannot run; the message names the target or parameter."""
