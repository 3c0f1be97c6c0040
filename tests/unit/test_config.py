"""load_config / parse_config: the built-in default, key-path error messages, env substitution."""

from __future__ import annotations

import textwrap
from datetime import timedelta
from pathlib import Path

import pytest

from otel_meter.component_model import Kind, parse_duration
from otel_meter.config import default_config_dir, default_config_text, load_config, parse_config, substitute_env
from otel_meter.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
REPO_CONFIG = REPO / "collector-config.yaml"
PACKAGED_CONFIG = REPO / "src" / "otel_meter" / "defaults" / "collector-config.yaml"

MINIMAL = """\
receivers:
  otlp:
    protocols:
      grpc: {endpoint: localhost:4317}
processors:
  genai_usage: {}
  dedup: {}
exporters:
  clickhouse: {}
service:
  pipelines:
    traces: {receivers: [otlp], processors: [genai_usage, dedup], exporters: [clickhouse]}
"""


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    file = tmp_path / name
    file.write_text(textwrap.dedent(text))
    return file


def error_of(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> str:
    file = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(file, environ=environ if environ is not None else {})
    return str(caught.value)


# --- the default ---------------------------------------------------------------------------------

def test_repo_and_packaged_default_configs_are_identical_files():
    assert REPO_CONFIG.read_bytes() == PACKAGED_CONFIG.read_bytes()
    assert default_config_text() == REPO_CONFIG.read_text()


def test_repo_and_packaged_default_rate_cards_are_identical_files():
    assert (REPO / "rate-card.yaml").read_bytes() == (default_config_dir() / "rate-card.yaml").read_bytes()


def test_builtin_default_loads_and_equals_the_repo_config():
    builtin = load_config(None, environ={})
    repo = load_config(REPO_CONFIG, environ={})
    assert builtin.source == "built-in default config"
    assert builtin.config_dir == default_config_dir()
    assert repo.source == str(REPO_CONFIG)
    assert repo.config_dir == REPO
    assert builtin.service == repo.service
    assert builtin.components.keys() == repo.components.keys()
    for kind in Kind:
        assert builtin.components[kind].keys() == repo.components[kind].keys()
        for component_id, config in builtin.components[kind].items():
            if component_id == "rating":
                continue
            assert config == repo.components[kind][component_id], component_id
    # The rate card resolves against each file's own directory.
    assert builtin.component(Kind.PROCESSOR, "rating").rate_card == default_config_dir() / "rate-card.yaml"
    assert repo.component(Kind.PROCESSOR, "rating").rate_card == REPO / "rate-card.yaml"
    # Parsed against the same directory, the two are equal outright.
    same_dir = parse_config(REPO_CONFIG.read_text(), default_config_dir(), "repo", {})
    assert same_dir.components == builtin.components


def test_builtin_default_values():
    config = load_config(environ={})
    otlp = config.component(Kind.RECEIVER, "otlp")
    assert otlp.protocols.grpc.endpoint == "localhost:4317"
    assert otlp.protocols.http.endpoint == "localhost:4318"
    dedup = config.component(Kind.PROCESSOR, "dedup")
    assert (dedup.window, dedup.preload, dedup.max_cached_keys) == (timedelta(days=7), timedelta(hours=1), 2_000_000)
    assert config.component(Kind.PROCESSOR, "attribution").customer == ["customer.id", "tenant.id"]
    assert config.component(Kind.EXPORTER, "clickhouse").endpoint == "chdb://./data"
    assert config.component(Kind.EXTENSION, "usage_api").endpoint == "localhost:8080"
    assert config.service.extensions == ["usage_api"]
    assert config.service.pipelines["traces"].processors == ["genai_usage", "dedup", "attribution", "rating"]


def test_minimal_config_fills_component_defaults(tmp_path):
    config = load_config(write(tmp_path, MINIMAL), environ={})
    assert config.component(Kind.RECEIVER, "otlp").protocols.http is None
    assert config.component(Kind.EXPORTER, "clickhouse").flush_interval == timedelta(milliseconds=50)
    assert config.service.telemetry.logs.level == "info"


def test_empty_protocol_body_enables_it_with_defaults(tmp_path):
    config = load_config(write(tmp_path, MINIMAL.replace("grpc: {endpoint: localhost:4317}", "grpc:\n      http:")),
                         environ={})
    protocols = config.component(Kind.RECEIVER, "otlp").protocols
    assert (protocols.grpc.endpoint, protocols.http.endpoint) == ("localhost:4317", "localhost:4318")


def test_component_ids_with_a_name_use_the_type_before_the_slash(tmp_path):
    text = MINIMAL.replace("  dedup: {}\n", "  dedup: {}\n  genai_usage/strict: {max_tokens_per_span: 10}\n")
    config = load_config(write(tmp_path, text), environ={})
    assert config.component(Kind.PROCESSOR, "genai_usage/strict").max_tokens_per_span == 10


# --- unknown keys and wrong types name the key path ------------------------------------------------

@pytest.mark.parametrize("old, new, key_path", [
    ("grpc: {endpoint: localhost:4317}", "grpc: {endpointt: localhost:4317}", "receivers.otlp.protocols.grpc.endpointt"),
    ("grpc: {endpoint: localhost:4317}", "grpc: {endpoint: localhost:4317}\n      udp: {}", "receivers.otlp.protocols.udp"),
    ("  otlp:\n", "  otlp:\n    transport: tcp\n", "receivers.otlp.transport"),
    ("dedup: {}", "dedup: {windw: 1h}", "processors.dedup.windw"),
    ("clickhouse: {}", "clickhouse: {table: usage}", "exporters.clickhouse.table"),
])
def test_unknown_component_key_names_the_full_key_path(tmp_path, old, new, key_path):
    file = write(tmp_path, MINIMAL.replace(old, new))
    with pytest.raises(ConfigError) as caught:
        load_config(file, environ={})
    assert str(caught.value) == f"{file}: {key_path}: unknown key"


@pytest.mark.parametrize("addition, key_path", [
    ("exporterz: {}\n", "exporterz"),
    ("  telemetry: {logs: {levle: debug}}\n", "service.telemetry.logs.levle"),
    ("  pipeline: {}\n", "service.pipeline"),
])
def test_unknown_top_level_or_service_key_is_named_in_the_message(tmp_path, addition, key_path):
    message = error_of(tmp_path, MINIMAL + addition)
    assert f"{key_path}: unknown key" in message


def test_unknown_service_key_message_has_the_bare_key_path(tmp_path):
    file = write(tmp_path, MINIMAL + "  telemetry: {logs: {levle: debug}}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(file, environ={})
    assert str(caught.value) == f"{file}: service.telemetry.logs.levle: unknown key"


@pytest.mark.parametrize("old, new, expected", [
    ("genai_usage: {}", "genai_usage: {max_tokens_per_span: lots}",
     "processors.genai_usage.max_tokens_per_span: Input should be a valid integer, unable to parse string as an "
     "integer"),
    ("genai_usage: {}", "genai_usage: {max_tokens_per_span: 0}",
     "processors.genai_usage.max_tokens_per_span: Input should be greater than 0"),
    ("clickhouse: {}", "clickhouse: {batch_size: [1]}", "exporters.clickhouse.batch_size: Input should be a valid "
                                                        "integer"),
    ("clickhouse: {}", "clickhouse: {create_schema: maybe}",
     "exporters.clickhouse.create_schema: Input should be a valid boolean, unable to interpret input"),
    ("dedup: {}", "dedup: {max_cached_keys: -1}", "processors.dedup.max_cached_keys: Input should be greater than 0"),
])
def test_wrong_type_names_the_key_path(tmp_path, old, new, expected):
    file = write(tmp_path, MINIMAL.replace(old, new))
    with pytest.raises(ConfigError) as caught:
        load_config(file, environ={})
    assert str(caught.value) == f"{file}: {expected}"


def test_several_problems_are_reported_together(tmp_path):
    text = MINIMAL.replace("endpoint: localhost:4317", "endpointt: localhost:4317").replace(
        "dedup: {}", "dedup: {window: soon}")
    file = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(file, environ={})
    assert str(caught.value) == (
        f"{file}: \n  receivers.otlp.protocols.grpc.endpointt: unknown key"
        f"\n  processors.dedup.window: 'soon' is not a duration; use e.g. 500ms, 30s, 24h or 7d")


def test_missing_rate_card_file_names_the_rating_key(tmp_path):
    text = MINIMAL.replace("  dedup: {}\n", "  dedup: {}\n  rating: {rate_card: prices/nope.yaml}\n")
    file = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(file, environ={})
    assert str(caught.value) == f"{file}: processors.rating.rate_card: file {tmp_path / 'prices/nope.yaml'} not found"


def test_rate_card_path_is_relative_to_the_config_file(tmp_path):
    (tmp_path / "prices").mkdir()
    (tmp_path / "prices" / "card.yaml").write_text("currency: USD\n")
    text = MINIMAL.replace("  dedup: {}\n", "  dedup: {}\n  rating: {rate_card: prices/card.yaml}\n")
    config = load_config(write(tmp_path, text), environ={})
    assert config.component(Kind.PROCESSOR, "rating").rate_card == tmp_path / "prices" / "card.yaml"


def test_rating_without_rate_card_is_allowed(tmp_path):
    text = MINIMAL.replace("  dedup: {}\n", "  dedup: {}\n  rating:\n")
    assert load_config(write(tmp_path, text), environ={}).component(Kind.PROCESSOR, "rating").rate_card is None


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"^config file .*absent\.yaml not found$"):
        load_config(tmp_path / "absent.yaml", environ={})


def test_invalid_yaml_and_non_mapping_name_the_source(tmp_path):
    file = write(tmp_path, "receivers: [\n")
    with pytest.raises(ConfigError, match=rf"^{file} is not valid YAML"):
        load_config(file, environ={})
    with pytest.raises(ConfigError, match=r"^src: expected a mapping with receivers, processors, exporters and "
                                          r"service$"):
        parse_config("- a\n", tmp_path, "src", {})


# --- environment substitution ----------------------------------------------------------------------

ENV_CONFIG = """\
receivers:
  otlp:
    protocols:
      grpc: {endpoint: "localhost:${env:GRPC_PORT:-4317}"}
processors:
  genai_usage: {max_tokens_per_span: "${env:MAX_TOKENS}"}
  attribution:
    customer: ["${env:CUSTOMER_KEY}", tenant.id]
    unattributed_customer: "${env:FALLBACK:-nobody}"
exporters:
  clickhouse: {endpoint: "${env:CH_URL:-chdb://./data}", database: "${env:DB:-}metering"}
service:
  pipelines:
    traces: {receivers: [otlp], processors: [genai_usage, attribution], exporters: [clickhouse]}
"""


def test_env_references_are_substituted_from_environ(tmp_path):
    environ = {"GRPC_PORT": "14317", "MAX_TOKENS": "5000", "CUSTOMER_KEY": "org.id", "FALLBACK": "house",
               "CH_URL": "http://u:p@ch:8123/db", "DB": "prod_"}
    config = load_config(write(tmp_path, ENV_CONFIG), environ=environ)
    assert config.component(Kind.RECEIVER, "otlp").protocols.grpc.endpoint == "localhost:14317"
    assert config.component(Kind.PROCESSOR, "genai_usage").max_tokens_per_span == 5000
    attribution = config.component(Kind.PROCESSOR, "attribution")
    assert attribution.customer == ["org.id", "tenant.id"]
    assert attribution.unattributed_customer == "house"
    clickhouse = config.component(Kind.EXPORTER, "clickhouse")
    assert (clickhouse.endpoint, clickhouse.database) == ("http://u:p@ch:8123/db", "prod_metering")


def test_env_defaults_apply_when_unset(tmp_path):
    config = load_config(write(tmp_path, ENV_CONFIG), environ={"MAX_TOKENS": "7", "CUSTOMER_KEY": "customer.id"})
    assert config.component(Kind.RECEIVER, "otlp").protocols.grpc.endpoint == "localhost:4317"
    assert config.component(Kind.PROCESSOR, "attribution").unattributed_customer == "nobody"
    clickhouse = config.component(Kind.EXPORTER, "clickhouse")
    assert (clickhouse.endpoint, clickhouse.database) == ("chdb://./data", "metering")


def test_set_but_empty_env_value_wins_over_the_default():
    # As in the Collector's env provider, the default applies only when the name is unset.
    assert substitute_env({"a": "${env:X:-fallback}", "b": "x${env:X:-fallback}y"}, {"X": ""}) == {"a": "", "b": "xy"}
    assert substitute_env({"a": "${env:X:-fallback}"}, {}) == {"a": "fallback"}


def test_env_values_stay_text_and_the_key_type_decides():
    text = MINIMAL.replace("grpc: {endpoint: localhost:4317}", "grpc: {endpoint: localhost:4317, max_recv_msg_size_mib: \"${env:N}\"}")
    text = text.replace("dedup: {}", "dedup: {}\n  attribution: {unattributed_customer: \"${env:C}\"}")
    config = parse_config(text, Path("."), "cfg.yaml", {"N": "8", "C": "2024"})
    assert config.component(Kind.RECEIVER, "otlp").protocols.grpc.max_recv_msg_size_mib == 8
    assert config.component(Kind.PROCESSOR, "attribution").unattributed_customer == "2024"


def test_unset_env_without_default_names_the_key_path(tmp_path):
    file = write(tmp_path, ENV_CONFIG)
    with pytest.raises(ConfigError) as caught:
        load_config(file, environ={"CUSTOMER_KEY": "customer.id"})
    assert str(caught.value) == (f"{file}: processors.genai_usage.max_tokens_per_span: environment variable "
                                 f"MAX_TOKENS is not set; set it or give a default as ${{env:NAME:-value}}")


def test_unset_env_in_a_list_names_the_index(tmp_path):
    file = write(tmp_path, ENV_CONFIG)
    with pytest.raises(ConfigError) as caught:
        load_config(file, environ={"MAX_TOKENS": "1"})
    assert str(caught.value).startswith(f"{file}: processors.attribution.customer[0]: environment variable "
                                        f"CUSTOMER_KEY is not set")


def test_env_references_in_comments_and_keys_are_not_expanded(tmp_path):
    text = MINIMAL.replace("processors:\n", "processors:  # uses ${env:NEVER_SET}\n")
    config = load_config(write(tmp_path, text), environ={})
    assert "genai_usage" in config.components[Kind.PROCESSOR]


def test_substituted_value_is_validated_like_a_literal(tmp_path):
    file = write(tmp_path, ENV_CONFIG)
    with pytest.raises(ConfigError) as caught:
        load_config(file, environ={"MAX_TOKENS": "-3", "CUSTOMER_KEY": "c", "GRPC_PORT": "http"})
    assert str(caught.value) == (
        f"{file}: \n  receivers.otlp.protocols.grpc.endpoint: 'localhost:http' is not host:port (e.g. 0.0.0.0:4317)"
        f"\n  processors.genai_usage.max_tokens_per_span: Input should be greater than 0")


@pytest.mark.parametrize("value", ["ops #1", "team: ops"])
def test_reference_embedded_in_text_expands_to_the_literal_text(tmp_path, value):
    text = MINIMAL.replace("  dedup: {}\n", '  dedup: {}\n  attribution: {unattributed_customer: "unknown ${env:T}"}\n')
    config = load_config(write(tmp_path, text), environ={"T": value})
    assert config.component(Kind.PROCESSOR, "attribution").unattributed_customer == f"unknown {value}"


# --- component types and pipelines -------------------------------------------------------------------

def test_unknown_component_type_is_named_with_the_known_ones(tmp_path):
    file = write(tmp_path, MINIMAL.replace("  dedup: {}\n", "  dedup: {}\n  batch/fast: {}\n"))
    with pytest.raises(ConfigError) as caught:
        load_config(file, environ={})
    assert str(caught.value) == (f"{file}: processors.batch/fast: unknown processor type 'batch' "
                                 f"(known: attribution, dedup, genai_usage, rating)")


def test_unknown_exporter_type_is_named(tmp_path):
    file = write(tmp_path, MINIMAL.replace("  clickhouse: {}\n", "  clickhouse: {}\n  kafka: {}\n"))
    with pytest.raises(ConfigError) as caught:
        load_config(file, environ={})
    assert str(caught.value) == f"{file}: exporters.kafka: unknown exporter type 'kafka' (known: clickhouse)"


def test_pipeline_referencing_an_undefined_processor_is_rejected(tmp_path):
    file = write(tmp_path, MINIMAL.replace("processors: [genai_usage, dedup]", "processors: [genai_usage, rating]"))
    with pytest.raises(ConfigError) as caught:
        load_config(file, environ={})
    assert str(caught.value) == f"{file}: service.pipelines.traces.processors: 'rating' is not defined under processors"


def test_pipeline_referencing_undefined_receiver_and_exporter_lists_both(tmp_path):
    file = write(tmp_path, MINIMAL.replace("receivers: [otlp]", "receivers: [otlp/2]").replace(
        "exporters: [clickhouse]", "exporters: [clickhouse/b]"))
    with pytest.raises(ConfigError) as caught:
        load_config(file, environ={})
    assert str(caught.value) == (f"{file}: \n  service.pipelines.traces.receivers: 'otlp/2' is not defined under "
                                 f"receivers\n  service.pipelines.traces.exporters: 'clickhouse/b' is not defined "
                                 f"under exporters")


def test_undefined_extension_is_rejected(tmp_path):
    file = write(tmp_path, MINIMAL + "  extensions: [usage_api]\n")
    with pytest.raises(ConfigError) as caught:
        load_config(file, environ={})
    assert str(caught.value) == f"{file}: service.extensions: 'usage_api' is not defined under extensions"


def test_unknown_signal_is_rejected(tmp_path):
    message = error_of(tmp_path, MINIMAL.replace("    traces:", "    spans/usage:"))
    assert "service.pipelines.spans/usage: unknown signal 'spans' (use one of traces, metrics, logs, events" in message


def test_receiver_that_does_not_receive_a_signal_is_rejected_for_it(tmp_path, monkeypatch):
    from otel_meter.component_model import TRACES, Factory, Kind, factories

    otlp = factories(Kind.RECEIVER)["otlp"]
    monkeypatch.setitem(factories(Kind.RECEIVER), "spansonly", Factory(
        type="spansonly", kind=Kind.RECEIVER, config_model=otlp.config_model, create=otlp.create,
        signals=frozenset({TRACES})))
    message = error_of(tmp_path, MINIMAL.replace("processors: [genai_usage, dedup]", "processors: [dedup]")
                       .replace("  otlp:", "  spansonly:").replace("    traces:", "    events:")
                       .replace("receivers: [otlp]", "receivers: [spansonly]"))
    assert "service.pipelines.events.receivers: 'spansonly' does not receive events (it receives traces)" in message


def test_otlp_receiver_feeds_events_pipelines(tmp_path):
    config = load_config(write(tmp_path, MINIMAL + "    events: {receivers: [otlp], processors: [dedup], "
                                                   "exporters: [clickhouse]}\n"), environ={})
    assert set(config.service.pipelines) == {"traces", "events"}


def test_events_pipeline_needs_no_converter_and_refuses_one(tmp_path):
    message = error_of(tmp_path, MINIMAL.replace("    traces:", "    events:"))
    assert "service.pipelines.events.processors: 'genai_usage' converts telemetry to usage and can only come " \
           "first in a traces/metrics/logs pipeline" in message


def test_pipeline_without_receivers_is_rejected(tmp_path):
    message = error_of(tmp_path, MINIMAL.replace("receivers: [otlp], ", ""))
    assert "service.pipelines.traces.receivers: Field required" in message


# --- durations and endpoints ------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("500ms", timedelta(milliseconds=500)), ("30s", timedelta(seconds=30)), ("1h30m", timedelta(minutes=90)),
    ("7d", timedelta(days=7)), ("1.5h", timedelta(minutes=90)), ("250us", timedelta(microseconds=250)),
    (" 2m ", timedelta(minutes=2)), (90, timedelta(seconds=90)), (0.5, timedelta(milliseconds=500)),
])
def test_durations_parse(text, expected):
    assert parse_duration(text) == expected


@pytest.mark.parametrize("value, expected", [
    ("soon", "processors.dedup.window: 'soon' is not a duration; use e.g. 500ms, 30s, 24h or 7d"),
    ("5 minutes", "processors.dedup.window: '5 minutes' is not a duration; use e.g. 500ms, 30s, 24h or 7d"),
    ("-5s", "processors.dedup.window: '-5s' is not a duration; use e.g. 500ms, 30s, 24h or 7d"),
    ("10x", "processors.dedup.window: '10x' is not a duration; use e.g. 500ms, 30s, 24h or 7d"),
    ("h", "processors.dedup.window: 'h' is not a duration; use e.g. 500ms, 30s, 24h or 7d"),
    ("''", "processors.dedup.window: expected a duration such as 500ms, 30s, 24h or 7d"),
    ("true", "processors.dedup.window: expected a duration such as 500ms, 30s, 24h or 7d"),
])
def test_bad_duration_names_the_key_path(tmp_path, value, expected):
    file = write(tmp_path, MINIMAL.replace("dedup: {}", f"dedup: {{window: {value}}}"))
    with pytest.raises(ConfigError) as caught:
        load_config(file, environ={})
    assert str(caught.value) == f"{file}: {expected}"


@pytest.mark.parametrize("endpoint", ["0.0.0.0", "0.0.0.0:99999", "localhost:port", "localhost:-1", "''"])
def test_bad_endpoint_names_the_key_path(tmp_path, endpoint):
    file = write(tmp_path, MINIMAL.replace("endpoint: localhost:4317", f"endpoint: {endpoint}"))
    with pytest.raises(ConfigError) as caught:
        load_config(file, environ={})
    shown = "" if endpoint == "''" else endpoint
    assert str(caught.value) == (f"{file}: receivers.otlp.protocols.grpc.endpoint: {shown!r} is not host:port "
                                 f"(e.g. 0.0.0.0:4317)")


def test_bad_extension_endpoint_names_the_key_path(tmp_path):
    text = MINIMAL + "  extensions: [usage_api]\nextensions:\n  usage_api: {endpoint: 8080}\n"
    message = error_of(tmp_path, text)
    assert message.endswith(": extensions.usage_api.endpoint: Input should be a valid string")


@pytest.mark.parametrize("endpoint", [":4317", "[::1]:4317", "localhost:0", "my-host.internal:65535"])
def test_good_endpoints_are_accepted(tmp_path, endpoint):
    # insecure_no_auth: an endpoint beyond loopback needs auth otherwise (tests/unit/test_security_config.py)
    config = load_config(write(tmp_path, MINIMAL.replace("localhost:4317", f'"{endpoint}", insecure_no_auth: true')),
                         environ={})
    assert config.component(Kind.RECEIVER, "otlp").protocols.grpc.endpoint == endpoint
