"""The component model, after the OpenTelemetry Collector.

Each receiver, processor, exporter and extension is a module that registers a
:class:`Factory`: a type name (the key used in the config file), a pydantic model
for its config (validated at load, unknown keys rejected) and a create function.
Adding a component is adding a module; nothing else switches on type names.
"""

from __future__ import annotations

import builtins
import enum
import re
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Callable, Hashable, Mapping, Protocol

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, ValidationError, ValidationInfo

if TYPE_CHECKING:  # the Host names the types it hands out; the model itself imports none of them
    from otel_meter.billing.config import BillingSection
    from otel_meter.billing.scheduler import BillingScheduler
    from otel_meter.extensions.budgets.monitor import BudgetMonitor
    from otel_meter.meters.definitions import MeterDefinition
    from otel_meter.processors.genai_usage.token_sources import TokenSources
    from otel_meter.rating.registry import RateCardRegistry
    from otel_meter.security import Authenticator
    from otel_meter.storage.store import Store
    from otel_meter.telemetry.registry import ServiceMetrics


TRACES, METRICS, LOGS, EVENTS, USAGE = "traces", "metrics", "logs", "events", "usage"
TELEMETRY_SIGNALS = (TRACES, METRICS, LOGS)
PIPELINE_SIGNALS = (TRACES, METRICS, LOGS, EVENTS)
"""``events`` pipelines carry usage from the custom events API: no conversion needed."""


class Kind(str, enum.Enum):
    RECEIVER = "receivers"
    PROCESSOR = "processors"
    EXPORTER = "exporters"
    EXTENSION = "extensions"


class ComponentConfig(BaseModel):
    """Base of every component config: strict about unknown keys."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class Host(Protocol):
    """What the running service offers its components, after the Collector's ``component.Host``.

    The service builds one and hands it to every factory (``BuildContext.host``): components
    find what others built (stores, extensions, rate cards) through it, never through each
    other's modules, and register what they offer others (rate cards, the budgets monitor)."""

    def open_store(self, key: Hashable, opener: Callable[[], Store]) -> Store:
        """The store at ``key``, opened by ``opener`` on first use: exporters that write to one
        endpoint and database share one store."""
        ...

    def store(self) -> Store | None:
        """The store of the first ClickHouse exporter (by id), where processors and extensions
        read stored usage; None when no pipeline exports to one."""
        ...

    def extension(self, extension_id: str) -> Any:
        """The extension with this id, built on first use (the config check made sure it is
        listed in ``service.extensions``)."""
        ...

    def authenticator(self, extension_id: str) -> Authenticator:
        """The extension with this id, as the authenticator a server's ``auth.authenticator`` names."""
        ...

    def rate_cards(self) -> Mapping[str, RateCardRegistry]:
        """The rate card registries by rating processor id; filled as the processors are built,
        so read it when used, not when built."""
        ...

    def add_rate_cards(self, processor_id: str, registry: RateCardRegistry) -> None: ...

    def budgets(self) -> BudgetMonitor | None:
        """The budgets extension's monitor, if one is configured."""
        ...

    def add_budgets(self, monitor: BudgetMonitor) -> None: ...

    def billing_scheduler(self) -> BillingScheduler | None:
        """The scheduler of ``billing.schedules``, once the service started it."""
        ...

    def billing(self) -> BillingSection:
        """The config's ``billing`` section (targets and schedules)."""
        ...

    def meters(self) -> dict[str, MeterDefinition]:
        """The built-in meters overlaid with the config's ``meters`` section."""
        ...

    def token_sources(self) -> TokenSources:
        """One per service: the genai_usage processors of the traces and metrics pipelines decide
        together which of them bills a call's tokens."""
        ...

    def metrics(self) -> ServiceMetrics:
        """The service's own telemetry (``GET /metrics``)."""
        ...

    def readiness(self) -> tuple[bool, str]:
        """Whether the service takes data now, and why not (``GET /readyz``)."""
        ...

    def queued_records(self) -> int:
        """Acknowledged usage records not yet in the store, over all exporters."""
        ...


@dataclass
class BuildContext:
    """What a factory may need besides its own config."""

    config_dir: Path
    """Directory of the config file; relative file references resolve against it."""
    component_id: str
    host: Host
    """The service's objects shared across components (stores, extensions, rate cards)."""


@dataclass(frozen=True)
class Factory:
    type: str
    kind: Kind
    config_model: builtins.type[ComponentConfig]  # builtins: the field above shadows type in the class body
    create: Callable[[Any, BuildContext], Any]
    consumes: frozenset[str] = frozenset({USAGE})
    """For processors: what they take in. A converter takes telemetry signals (traces,
    metrics, logs) and must come first in such a pipeline; the others work on usage."""
    signals: frozenset[str] = frozenset()
    """For receivers: the pipeline signals they can feed."""
    authenticator: bool = False
    """For extensions: it checks requests' credentials, so a server's ``auth.authenticator`` may name it."""


class Lifecycle(Protocol):
    def start(self) -> None: ...
    def shutdown(self) -> None: ...


_REGISTRY: dict[Kind, dict[str, Factory]] = {kind: {} for kind in Kind}


def register(factory: Factory) -> Factory:
    existing = _REGISTRY[factory.kind].get(factory.type)
    if existing is not None and existing is not factory:
        raise ValueError(f"two {factory.kind.value} register the type {factory.type!r}")
    _REGISTRY[factory.kind][factory.type] = factory
    return factory


def factories(kind: Kind) -> dict[str, Factory]:
    return _REGISTRY[kind]


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h|d)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: Any) -> timedelta:
    """Parse a Go-style duration (``500ms``, ``30s``, ``168h``; ``7d`` also accepted)."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return timedelta(seconds=value)
    if isinstance(value, str) and value.strip().replace(".", "", 1).isdigit():
        return timedelta(seconds=float(value))  # a bare number (e.g. from ${env:...}) means seconds
    if not isinstance(value, str) or not value.strip():
        raise ValueError("expected a duration such as 500ms, 30s, 24h or 7d")
    text = value.strip()
    position, seconds = 0, 0.0
    for match in _DURATION.finditer(text):
        if match.start() != position:
            break
        seconds += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        position = match.end()
    if position != len(text):
        raise ValueError(f"{value!r} is not a duration; use e.g. 500ms, 30s, 24h or 7d")
    return timedelta(seconds=seconds)


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]


def existing_file(value: Path, info: ValidationInfo) -> Path:
    """A file path, relative to the config file's directory, that must exist at load."""
    base = (info.context or {}).get("config_dir")
    path = value if value.is_absolute() or base is None else Path(base) / value
    if not path.is_file():
        raise ValueError(f"file {path} not found")
    return path


ConfigFile = Annotated[Path, AfterValidator(existing_file)]


def validation_problems(where: str, error: ValidationError) -> list[str]:
    """Turn pydantic's errors into ``key.path: problem`` lines under the key path ``where``."""
    lines = []
    for item in error.errors():
        path = ".".join(str(part) for part in item["loc"])
        key = ".".join(part for part in (where, path) if part)
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        elif message.startswith("Value error, "):
            message = message[len("Value error, "):]
        lines.append(f"{key}: {message}")
    return lines
