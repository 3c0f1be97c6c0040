"""Billing targets: where rated usage is sent (Stripe, Chargebee, Zuora, NetSuite, files, webhooks).

A target is a component like a receiver or exporter: a type name, a pydantic config model,
and a factory, registered here; adding a platform is adding a module under
``billing/targets/`` (imported by ``billing/targets/__init__.py``).

The export job (``billing/export.py``) gives a target **records**: for one customer, one
target meter and one window, the change since what the ledger says was sent (revision n
of that window). The target sends each record in the form its platform supports and says
for each whether it landed. Keys are deterministic, so a re-sent record is recognised by
the platform too; the ledger is what prevents double billing, the platform's dedup is a
second net.
"""

from __future__ import annotations

import builtins
import hashlib
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any, Callable, Literal, Protocol
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

Granularity = Literal["hour", "day", "month"]


class MeterMapping(BaseModel):
    """Which of our usage goes to which platform meter, and what value is sent."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)
    meter: str = Field(min_length=1)
    """Our meter, e.g. ``input_tokens``."""
    to: str = Field(min_length=1)
    """The platform's meter: Stripe event name, Chargebee item price id, Zuora unit of measure,
    NetSuite item, or the name written to a file."""
    models: str | None = None
    """Only usage of models matching this glob (default: every model)."""
    value: Literal["quantity", "amount"] = "quantity"
    """Send the quantity (the platform prices it) or our rated amount (in ``currency``)."""
    unit: Decimal = Decimal(1)
    """Send quantity / unit: e.g. 1000 to send thousands of tokens. Amounts are sent as is."""

    @field_validator("unit", mode="before")
    @classmethod
    def _exact_unit(cls, value: Any) -> Any:
        if isinstance(value, float):
            raise ValueError(f"unit is written as a float ({value!r}); write it as an integer or a quoted decimal")
        return value


class TargetConfig(BaseModel):
    """Keys every target has; a target's own config model extends it."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)
    meters: tuple[MeterMapping, ...] = Field(min_length=1)
    customers: dict[str, str] = Field(default_factory=dict)
    """Our customer id -> the platform's customer (or subscription / account) reference.
    Usage of a customer with no entry is held back and reported, never sent unmapped."""
    granularity: Granularity = "day"
    """The window each record covers (UTC)."""
    lateness: str = "1h"
    """Only windows closed at least this long ago are sent (a duration such as ``1h``)."""


def http_url(url: str | None, key: str, example: str) -> str | None:
    """A platform base URL from a target's config (None: the platform's own), without a trailing slash."""
    if url is None:
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{key} {url!r} must be an http(s) URL {example}")
    return url.rstrip("/")


def check_retry_durations(timeout: timedelta, initial_backoff: timedelta, max_backoff: timedelta, prefix: str,
                          timeout_example: str, backoff_defaults: str) -> None:
    """The timeout and backoff keys every HTTP target has, with messages naming them."""
    if timeout <= timedelta(0):
        raise ValueError(f"{prefix}timeout must be positive, e.g. {timeout_example}")
    if not timedelta(0) <= initial_backoff <= max_backoff:
        raise ValueError(f"{prefix}initial_backoff must be between 0 and {prefix}max_backoff "
                         f"(defaults {backoff_defaults})")


@dataclass(frozen=True)
class UsageRecord:
    """One send: the change of one (customer, platform meter, currency, window) since the ledger's last
    revision."""

    target: str
    customer: str
    reference: str
    """The platform's customer / subscription / account reference from ``customers``."""
    meter: str
    """The platform meter (``MeterMapping.to``)."""
    window_start_ns: int
    window_end_ns: int
    revision: int
    """1 for the first send of a window; each correction adds one."""
    value: Decimal
    """What to send now: the change since the last revision (may be negative: a correction)."""
    total: Decimal
    """The window's total after this record (what the platform should hold in all)."""
    quantity: Decimal
    """Change in quantity (in our meter's units) behind ``value``."""
    amount: Decimal
    """Change in our rated amount behind ``value``."""
    currency: str
    key: str
    """Deterministic idempotency key: the same record always has the same key."""
    earlier_keys: tuple[str, ...] = ()
    """The keys of revisions 1 .. n-1 of this window, as the ledger has them: a target that
    replaces earlier revisions (Chargebee, Zuora) finds them by these, whichever key rule made them."""

    @property
    def is_correction(self) -> bool:
        return self.revision > 1


def record_key(target: str, customer: str, meter: str, window_start_ns: int, window_end_ns: int, revision: int, *,
               currency: str) -> str:
    """32 hex characters: fits Stripe's ``identifier``, Chargebee's 36-character
    ``deduplication_id`` and every idempotency header. The currency is part of it: usage of one
    window in two currencies is two records, each with its own revisions."""
    text = (f"{target}\x1f{customer}\x1f{meter}\x1f{currency}\x1f{window_start_ns}\x1f{window_end_ns}"
            f"\x1f{revision}")
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class SendResult:
    key: str
    delivered: bool
    external_id: str = ""
    """The platform's id of what was created (meter event, usage record, file name)."""
    error: str = ""
    retryable: bool = False
    """A failure worth retrying later (429, 5xx, timeouts); False: parked until someone acts."""


class BillingTarget(Protocol):
    name: str
    integer_values: bool
    """The platform takes whole numbers only (Stripe meter events): a window's total is the
    whole units its usage completes, floor(cumulative / unit) at its end less at its start
    (cumulative over the period), so the fraction carries to the next window."""
    negative_values: bool
    """The platform takes a negative value as a correction; otherwise corrections are sent the
    way the target implements them (e.g. delete and recreate)."""

    @property
    def config(self) -> TargetConfig:
        """Its own config (a target's narrower config model is one too)."""
        ...

    def send(self, records: list[UsageRecord], progress: Callable[[int], None]) -> list[SendResult]:
        """Send the records (retrying transient failures itself, with backoff) and report each.
        ``progress(n)`` after every n records handled. Never raises for one record's failure."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class TargetFactory:
    type: str
    config_model: builtins.type[TargetConfig]  # builtins: the field above shadows type in the class body
    create: Callable[[str, Any], BillingTarget]
    """(target name, validated config) -> target."""
    integer_values: bool = False
    """The targets it creates take whole numbers only (``BillingTarget.integer_values``), known
    without creating one (the invoice compares what they sent with that in mind)."""


_TARGETS: dict[str, TargetFactory] = {}


def register_target(factory: TargetFactory) -> TargetFactory:
    existing = _TARGETS.get(factory.type)
    if existing is not None and existing is not factory:
        raise ValueError(f"two billing targets register the type {factory.type!r}")
    _TARGETS[factory.type] = factory
    return factory


def registered_targets() -> dict[str, TargetFactory]:
    """The factories registered so far; ``otel_meter.billing.targets.target_factories()``
    registers the built-in ones first."""
    return dict(_TARGETS)
