"""The ``billing`` section of the config: targets and their schedules.

```yaml
billing:
  targets:
    stripe:                         # TYPE or TYPE/NAME, like components
      api_key: ${env:STRIPE_API_KEY}
      customers: {acme: cus_123}
      meters: [{meter: input_tokens, to: input_tokens, unit: 1000}]
  schedules:
    - {target: stripe, cron: "15 * * * *", period: current}
```
"""

from __future__ import annotations

from typing import Any, Literal

from croniter import croniter
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from otel_meter.billing.target import BillingTarget, TargetConfig, TargetFactory
from otel_meter.component_model import validation_problems
from otel_meter.errors import BillingExportError


class Schedule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    target: str
    cron: str
    """Five-field cron expression, UTC (``15 * * * *``: every hour at :15)."""
    period: Literal["current", "previous"] = "current"
    """The calendar month exported: the one the run is in, or the one before (for final true-ups)."""
    customer: str | None = None

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, value: str) -> str:
        if not croniter.is_valid(value) or len(value.split()) != 5:
            raise ValueError(f"{value!r} is not a five-field cron expression such as '15 * * * *'")
        return value


class BillingSection(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)
    targets: dict[str, TargetConfig] = Field(default_factory=dict)
    schedules: tuple[Schedule, ...] = ()


def target_type(name: str) -> str:
    return name.split("/", 1)[0]


def parse_billing(section: dict[str, Any], problems: list[str]) -> BillingSection:
    if not isinstance(section, dict):
        problems.append("billing: expected a mapping with targets and schedules")
        return BillingSection()
    unknown = sorted(set(section) - {"targets", "schedules"})
    if unknown:
        problems.append(f"billing: unknown key(s) {', '.join(unknown)}; known: targets, schedules")
    factories = _target_factories()
    targets: dict[str, TargetConfig] = {}
    for name, body in (section.get("targets") or {}).items():
        factory = factories.get(target_type(str(name)))
        if factory is None:
            problems.append(f"billing.targets.{name}: unknown billing target type {target_type(str(name))!r} "
                            f"(known: {', '.join(sorted(factories)) or 'none'})")
            continue
        try:
            targets[str(name)] = factory.config_model.model_validate(body or {})
        except ValidationError as error:
            problems.extend(validation_problems(f"billing.targets.{name}", error))
    schedules = []
    for index, body in enumerate(section.get("schedules") or []):
        try:
            schedule = Schedule.model_validate(body)
        except ValidationError as error:
            problems.extend(validation_problems(f"billing.schedules.{index}", error))
            continue
        if schedule.target not in targets:
            problems.append(f"billing.schedules.{index}.target: {schedule.target!r} is not defined under "
                            f"billing.targets")
        schedules.append(schedule)
    return BillingSection(targets=targets, schedules=tuple(schedules))


def build_target(section: BillingSection, name: str) -> BillingTarget:
    if name not in section.targets:
        raise BillingExportError(f"no billing target {name!r}; defined: {', '.join(sorted(section.targets)) or 'none'} "
                                 f"(billing.targets in the config)")
    return _target_factories()[target_type(name)].create(name, section.targets[name])



def target_factory(name: str) -> TargetFactory | None:
    """The factory of the billing target ``name`` (``type`` or ``type/label``), None for an unknown type."""
    return _target_factories().get(target_type(name))


def _target_factories() -> dict[str, TargetFactory]:
    # Imported here, not at the top: the built-in targets load the Stripe SDK (about 0.4 s),
    # needed only by a config with a billing section.
    from otel_meter.billing.targets import target_factories

    return target_factories()
