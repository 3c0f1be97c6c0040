"""docs/config-reference.md is generated from the config models: it names every key and never drifts."""

from __future__ import annotations

from pathlib import Path

from otel_meter.component_model import Kind, factories
from otel_meter.config_reference import reference

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_the_committed_reference_is_what_the_models_generate():
    assert (DOCS / "config-reference.md").read_text() == reference(), (
        "docs/config-reference.md is stale: run `python -m otel_meter.config_reference > docs/config-reference.md`")


def test_the_reference_lists_every_component_and_billing_target_with_its_keys():
    from otel_meter.billing.targets import target_factories

    text = reference()
    for kind in Kind:
        for type_, factory in factories(kind).items():
            assert f"\n### {type_}\n" in text
            for name in factory.config_model.model_fields:
                assert f"| `{name}` |" in text or f".{name}` |" in text
    for type_ in target_factories():
        assert f"\n### {type_}\n" in text
    assert "| `processors` |" not in text  # components, not the service section
    assert "| `shared_store` | boolean | `false` | Other otel-meter replicas write to the same store" in text
