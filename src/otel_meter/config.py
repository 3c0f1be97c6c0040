"""Load and validate the service configuration (OpenTelemetry Collector layout).

Loading is all-or-nothing: every problem found stops the start with one message
that names the key path, e.g. ``processors.rating.rate_card: file not found``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from otel_meter import builtin_components  # noqa: F401  (registers the built-in components)
from otel_meter.billing.config import BillingSection, parse_billing
from otel_meter.component_model import (
    EVENTS,
    PIPELINE_SIGNALS,
    TELEMETRY_SIGNALS,
    USAGE,
    ComponentConfig,
    Kind,
    factories,
    validation_problems,
)
from otel_meter.errors import ConfigError
from otel_meter.meters.definitions import BUILTIN_METERS, MeterDefinition, MeterSwitch, resolve_meters
from otel_meter.security import auth_references

DEFAULT_CONFIG_NAME = "collector-config.yaml"
METER_NAME = re.compile(r"[a-z][a-z0-9_]*")
_ENV_REFERENCE = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class PipelineConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    receivers: list[str] = Field(min_length=1)
    processors: list[str] = Field(default_factory=list)
    exporters: list[str] = Field(min_length=1)
    extraction: Literal["python", "engine"] = "python"
    """Where a traces pipeline turns spans into usage. ``engine``: requests are journaled and
    acknowledged as they arrive, then extracted in blocks by the embedded ClickHouse engine
    (docs/operations.md, "The hot path"); for pipelines whose span meters are the five token
    meters and whose first exporter writes an embedded store, else the pipeline stays in Python
    and a startup line says why."""


class LogsTelemetry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    level: str = Field(default="info", pattern="(?i)^(debug|info|warn|warning|error)$")
    encoding: str = Field(default="console", pattern="^(console|json)$")


class TelemetryConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    logs: LogsTelemetry = LogsTelemetry()


class ServiceSection(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    extensions: list[str] = Field(default_factory=list)
    pipelines: dict[str, PipelineConfig]
    telemetry: TelemetryConfig = TelemetryConfig()


class TopLevel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    receivers: dict[str, Any] = Field(default_factory=dict)
    processors: dict[str, Any] = Field(default_factory=dict)
    exporters: dict[str, Any] = Field(default_factory=dict)
    extensions: dict[str, Any] = Field(default_factory=dict)
    meters: dict[str, Any] = Field(default_factory=dict)
    billing: dict[str, Any] = Field(default_factory=dict)
    service: ServiceSection


ConfigModel = TypeVar("ConfigModel", bound=ComponentConfig)


@dataclass(frozen=True)
class ServiceConfig:
    """A validated configuration, ready to build the pipelines from."""

    source: str
    config_dir: Path
    components: dict[Kind, dict[str, ComponentConfig]]
    service: ServiceSection
    meters: dict[str, MeterDefinition]
    """The built-in meters overlaid with the config's ``meters`` section (enabled ones only)."""
    billing: BillingSection = field(default_factory=BillingSection)
    """Billing export targets and schedules."""

    def components_of(self, kind: Kind, model: type[ConfigModel]) -> dict[str, ConfigModel]:
        """The configured components of one model (e.g. every ``RatingConfig``), by id, in config
        order: what the command line reads of a config it does not build a service from."""
        return {component_id: component for component_id, component in self.components[kind].items()
                if isinstance(component, model)}

    def component(self, kind: Kind, component_id: str) -> ComponentConfig:
        return self.components[kind][component_id]


def component_type(component_id: str) -> str:
    """``otlp/internal`` has type ``otlp``, as in the Collector."""
    return component_id.split("/", 1)[0]


def substitute_env(value: Any, environ: dict[str, str] | None = None, path: str = "") -> Any:
    """Expand ``${env:NAME}`` and ``${env:NAME:-default}`` in every string value (not in keys or comments).

    An unset name without a default is an error naming the key path.
    """
    if isinstance(value, dict):
        return {key: substitute_env(item, environ, f"{path}.{key}" if path else str(key))
                for key, item in value.items()}
    if isinstance(value, list):
        return [substitute_env(item, environ, f"{path}[{index}]") for index, item in enumerate(value)]
    if not isinstance(value, str) or "${env:" not in value:
        return value
    env = os.environ if environ is None else environ
    missing: list[str] = []

    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in env:  # as in the Collector, a set but empty variable wins over the default
            return env[name]
        if default is not None:
            return default
        missing.append(name)
        return ""

    result = _ENV_REFERENCE.sub(replace, value)
    if missing:
        names = ", ".join(sorted(set(missing)))
        raise ConfigError(f"{path}: environment variable {names} is not set; set it or give a default "
                          f"as ${{env:NAME:-value}}")
    return result


def default_config_text() -> str:
    return resources.files("otel_meter.defaults").joinpath(DEFAULT_CONFIG_NAME).read_text()


def default_config_dir() -> Path:
    return Path(str(resources.files("otel_meter.defaults")))


def load_config(path: str | Path | None = None, environ: dict[str, str] | None = None) -> ServiceConfig:
    """Read, substitute and validate a config file (the built-in default when ``path`` is None)."""
    if path is None:
        return parse_config(default_config_text(), default_config_dir(), "built-in default config", environ)
    file = Path(path)
    try:
        text = file.read_text()
    except FileNotFoundError:
        raise ConfigError(f"config file {file} not found") from None
    except OSError as error:
        raise ConfigError(f"config file {file} cannot be read: {error.strerror}") from None
    return parse_config(text, file.resolve().parent, str(file), environ)


def parse_config(text: str, config_dir: Path, source: str, environ: dict[str, str] | None = None) -> ServiceConfig:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{source} is not valid YAML: {error}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping with receivers, processors, exporters and service")
    try:
        raw = substitute_env(raw, environ)
    except ConfigError as error:
        raise ConfigError(f"{source}: {error}") from None
    try:
        top = TopLevel.model_validate(raw)
    except ValidationError as error:
        problems = validation_problems("", error)
        raise ConfigError(f"{source}: " + ("\n  " if len(problems) > 1 else "") + "\n  ".join(problems)) from None

    problems = []
    built: dict[Kind, dict[str, ComponentConfig]] = {kind: {} for kind in Kind}
    for kind in Kind:
        section: dict[str, Any] = getattr(top, kind.value)
        for component_id, body in section.items():
            factory = factories(kind).get(component_type(component_id))
            if factory is None:
                known = ", ".join(sorted(factories(kind))) or "none"
                problems.append(f"{kind.value}.{component_id}: unknown {kind.value[:-1]} type "
                                f"{component_type(component_id)!r} (known: {known})")
                continue
            try:
                built[kind][component_id] = factory.config_model.model_validate(
                    body or {}, context={"config_dir": config_dir})
            except ValidationError as error:
                problems.extend(validation_problems(f"{kind.value}.{component_id}", error))

    meters = parse_meters(top.meters, problems)
    billing = parse_billing(top.billing, problems)

    service = top.service
    for extension in service.extensions:
        if extension not in section_ids(top, Kind.EXTENSION):
            problems.append(f"service.extensions: {extension!r} is not defined under extensions")
    problems.extend(authenticator_problems(top, built))
    for name, pipeline in service.pipelines.items():
        signal = name.split("/", 1)[0]
        if signal not in PIPELINE_SIGNALS:
            problems.append(f"service.pipelines.{name}: unknown signal {signal!r} (use one of "
                            f"{', '.join(PIPELINE_SIGNALS)}, optionally followed by /name)")
            continue
        for receiver_id in pipeline.receivers:
            factory = factories(Kind.RECEIVER).get(component_type(receiver_id))
            if factory is not None and signal not in factory.signals:
                problems.append(f"service.pipelines.{name}.receivers: {receiver_id!r} does not receive {signal} "
                                f"(it receives {', '.join(sorted(factory.signals))})")
        for kind, ids in ((Kind.RECEIVER, pipeline.receivers), (Kind.PROCESSOR, pipeline.processors),
                          (Kind.EXPORTER, pipeline.exporters)):
            for component_id in ids:
                if component_id not in section_ids(top, kind):
                    problems.append(f"service.pipelines.{name}.{kind.value}: {component_id!r} is not defined "
                                    f"under {kind.value}")
        problems.extend(processor_order_problems(name, signal, pipeline.processors))
    if problems:
        raise ConfigError(f"{source}: " + ("\n  " if len(problems) > 1 else "") + "\n  ".join(problems))
    return ServiceConfig(source=source, config_dir=config_dir, components=built, service=service, meters=meters,
                         billing=billing)


def authenticator_problems(top: TopLevel, built: dict[Kind, dict[str, ComponentConfig]]) -> list[str]:
    """Every ``auth.authenticator`` names an authenticator extension that is defined and started."""
    problems = []
    extensions = section_ids(top, Kind.EXTENSION)
    for kind in (Kind.RECEIVER, Kind.EXTENSION):
        for component_id, component in built[kind].items():
            for where, extension_id in auth_references(component, f"{kind.value}.{component_id}"):
                factory = factories(Kind.EXTENSION).get(component_type(extension_id))
                if extension_id not in extensions:
                    problems.append(f"{where}: {extension_id!r} is not defined under extensions; define it "
                                    f"there (e.g. a bearertokenauth extension with tokens) and list it in "
                                    f"service.extensions")
                elif factory is not None and not factory.authenticator:
                    problems.append(f"{where}: {extension_id!r} is a {factory.type} extension, not an "
                                    f"authenticator; name a bearertokenauth extension")
                elif extension_id not in top.service.extensions:
                    problems.append(f"{where}: {extension_id!r} is not listed in service.extensions; add it there")
    return problems


def parse_meters(section: dict[str, Any], problems: list[str]) -> dict[str, MeterDefinition]:
    """The ``meters`` section: new meters, replaced built-ins, or ``{enabled: false}`` switches."""
    configured: dict[str, MeterDefinition | MeterSwitch] = {}
    for name, body in section.items():
        where = f"meters.{name}"
        if not isinstance(name, str) or not METER_NAME.fullmatch(name):
            problems.append(f"{where}: a meter name is lower-case letters, digits and underscores")
            continue
        try:
            if isinstance(body, dict) and set(body) == {"enabled"}:
                if name not in BUILTIN_METERS:
                    problems.append(f"{where}: only 'enabled' is given, but {name} is not a built-in meter "
                                    f"(built-in: {', '.join(BUILTIN_METERS)})")
                    continue
                configured[name] = MeterSwitch.model_validate(body)
            else:
                configured[name] = MeterDefinition.model_validate(body)
        except ValidationError as error:
            problems.extend(validation_problems(where, error))
    return resolve_meters(configured)


def processor_order_problems(name: str, signal: str, processor_ids: list[str]) -> list[str]:
    """A telemetry pipeline converts its signal to usage first; every later processor works on usage."""
    known = factories(Kind.PROCESSOR)
    consumes = [known[component_type(p)].consumes if component_type(p) in known else None for p in processor_ids]
    where = f"service.pipelines.{name}.processors"
    problems = []
    if signal != EVENTS:
        if not consumes or consumes[0] is None or signal not in consumes[0]:
            converters = ", ".join(t for t, f in sorted(known.items()) if signal in f.consumes)
            return [f"{where}: a {signal} pipeline must start with a processor that turns {signal} into usage "
                    f"({converters or 'none yet'})"]
        consumes = consumes[1:]
    for processor_id, takes in zip(processor_ids[len(processor_ids) - len(consumes):], consumes):
        if takes is not None and USAGE not in takes:
            problems.append(f"{where}: {processor_id!r} converts telemetry to usage and can only come first "
                            f"in a {'/'.join(TELEMETRY_SIGNALS)} pipeline")
    return problems


def section_ids(top: TopLevel, kind: Kind) -> set[str]:
    return set(getattr(top, kind.value))
