"""The container, compose, Kubernetes and Collector files in deploy/ are checked as far as
this machine allows (no Docker engine, no cluster, no otelcol-contrib): every YAML file
parses, the compose file is valid against the Compose specification's JSON schema, every
Kubernetes object against the Kubernetes JSON schemas (strict: unknown fields fail), every
otel-meter config loads in otel-meter, and the files agree with each other (ports, names,
paths, secrets)."""

from __future__ import annotations

import json
import re
import shlex
from importlib import resources
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from otel_meter.component_model import Kind
from otel_meter.config import parse_config

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
OTELCOL = DEPLOY / "otelcol"
# The oldest and the newest Kubernetes minor version checked; kubernetes-validate ships both.
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
ENVIRON = {"CLICKHOUSE_PASSWORD": "secret", "OTEL_METER_INGEST_TOKEN": "i" * 32, "OTEL_METER_READ_TOKEN": "r" * 32}
# Exporter types the Collector renamed or removed: `otlp`/`otlphttp` are aliases of
# otlp_grpc/otlp_http since v0.144, `logging` was replaced by `debug`.
DEPRECATED_EXPORTERS = {"otlp", "otlphttp", "logging"}


def load_all(path: Path) -> list:
    return [document for document in yaml.safe_load_all(path.read_text()) if document is not None]


def kubernetes_objects() -> list[tuple[str, dict]]:
    objects = []
    for path in sorted(KUBERNETES.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            objects += [(path.name, document) for document in load_all(path)]
    return objects


def find(kind: str, name: str | None = None) -> dict:
    matches = [obj for _, obj in kubernetes_objects()
               if obj["kind"] == kind and (name is None or obj["metadata"]["name"] == name)]
    assert len(matches) == 1, (kind, name, len(matches))
    return matches[0]


def compose() -> dict:
    return yaml.safe_load((DEPLOY / "docker-compose.yaml").read_text())


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            instructions.append((word.upper(), rest.strip()))
    return instructions


def collector_configs() -> list[Path]:
    return sorted(OTELCOL.glob("*.yaml")) + sorted((DEPLOY / "cluster").glob("otelcol-*.yaml"))


def load_otel_meter_config(text: str, tmp_path: Path, source: str, rate_card: str | None = None):
    """parse_config with the paths under /etc rewritten into tmp_path, where dummy files stand in."""
    for directory in ("/etc/otel-meter-tls/", "/etc/otel-meter/"):
        text = text.replace(directory, f"{tmp_path}/")
    for name in ("tls.crt", "tls.key"):
        (tmp_path / name).write_text("x")
    (tmp_path / "rate-card.yaml").write_text(rate_card or (ROOT / "rate-card.yaml").read_text())
    return parse_config(text, tmp_path, source, environ=ENVIRON)


# --- every file parses --------------------------------------------------------------------

@pytest.mark.parametrize("path", sorted(p.relative_to(DEPLOY).as_posix() for p in
                                        [DEPLOY / "docker-compose.yaml", *KUBERNETES.glob("*.yaml"),
                                         *OTELCOL.glob("*.yaml")]))
def test_every_deploy_yaml_file_parses(path):
    assert load_all(DEPLOY / path)


# --- compose ------------------------------------------------------------------------------

def test_the_compose_file_is_valid_against_the_compose_specification_schema():
    # compose-spec.json of the Compose specification, as vendored by check-jsonschema
    # (licensed Apache-2.0, see its builtin_schemas/vendor/licenses/LICENSE.compose-spec).
    schema = json.loads((resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json").read_text())
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    errors = [f"{'/'.join(map(str, error.absolute_path))}: {error.message}"
              for error in validator_class(schema).iter_errors(compose())]
    assert errors == []


def test_the_compose_schema_check_catches_a_misspelt_key():
    schema = json.loads((resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json").read_text())
    broken = compose()
    broken["services"]["otel-meter"]["helthcheck"] = {"test": ["NONE"]}
    assert not jsonschema.validators.validator_for(schema)(schema).is_valid(broken)


def test_the_compose_file_runs_clickhouse_otel_meter_grafana_and_a_collector_in_front():
    services = compose()["services"]
    assert set(services) == {"clickhouse", "otel-meter", "grafana", "otelcol", "prometheus"}
    assert services["otel-meter"]["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}
    assert services["otel-meter"]["depends_on"]["clickhouse"]["condition"] == "service_healthy"
    # Applications reach the Collector; otel-meter publishes only its usage API.
    assert services["otelcol"]["ports"] == ["4317:4317", "4318:4318"]
    assert services["otel-meter"]["ports"] == ["8080:8080"]


def test_the_compose_file_mounts_existing_files_and_the_grafana_provisioning_paths():
    services = compose()["services"]
    binds = [volume.split(":")[0] for service in services.values() for volume in service.get("volumes", [])
             if volume.startswith(".")]
    grafana = {"./grafana/provisioning", "./grafana/dashboards"}
    assert grafana <= set(binds)
    for source in set(binds) - grafana:
        assert (DEPLOY / source).exists(), source
    assert "./grafana/provisioning:/etc/grafana/provisioning:ro" in services["grafana"]["volumes"]
    assert "./grafana/dashboards:/var/lib/grafana/dashboards/otel-meter:ro" in services["grafana"]["volumes"]


def test_grafana_gets_every_variable_and_path_its_provisioning_uses():
    provisioning = DEPLOY / "grafana" / "provisioning"
    if not provisioning.is_dir():
        pytest.skip("deploy/grafana/provisioning is not in this tree")
    grafana = compose()["services"]["grafana"]
    text = "\n".join(path.read_text() for path in sorted(provisioning.rglob("*.yaml")))
    assert set(re.findall(r"\$\{(\w+)\}", text)) <= set(grafana["environment"])
    mounted = {volume.split(":")[1] for volume in grafana["volumes"] if volume.startswith(".")}
    for path in sorted((provisioning / "dashboards").glob("*.yaml")):
        for provider in yaml.safe_load(path.read_text())["providers"]:
            assert provider["options"]["path"] in mounted, path.name


def test_the_compose_file_names_only_defined_volumes_and_configs():
    document = compose()
    for service in document["services"].values():
        for volume in service.get("volumes", []):
            if not volume.startswith((".", "/")):
                assert volume.split(":")[0] in document["volumes"], volume
        for config in service.get("configs", []):
            assert config["source"] in document["configs"]


def test_the_compose_otel_meter_config_loads_and_migrates_its_own_single_server(tmp_path):
    content = compose()["configs"]["otel-meter-config"]["content"].replace("$$", "$")  # compose's escape
    config = load_otel_meter_config(content, tmp_path, "docker-compose.yaml#otel-meter-config")
    exporter = config.component(Kind.EXPORTER, "clickhouse")
    assert exporter.create_schema is True
    assert exporter.endpoint == "http://otel_meter:secret@clickhouse:8123/otel_meter"
    assert str(exporter.sending_queue.directory).startswith("/var/lib/otel-meter/")
    volumes = compose()["services"]["otel-meter"]["volumes"]
    assert "otel-meter-queue:/var/lib/otel-meter" in [volume.split(" ")[0] for volume in volumes]


def test_the_compose_file_gives_otel_meter_every_variable_its_config_references():
    document = compose()
    referenced = set(re.findall(r"\$\$\{env:(\w+)", document["configs"]["otel-meter-config"]["content"]))
    assert referenced <= set(document["services"]["otel-meter"]["environment"])
    collector = (OTELCOL / "otelcol-app.yaml").read_text()
    required = {name for name in re.findall(r"\$\{env:(\w+)\}", collector)}
    assert required <= set(document["services"]["otelcol"]["environment"])


# --- Dockerfile ---------------------------------------------------------------------------

def test_the_dockerfile_is_slim_installs_the_package_and_runs_as_a_non_root_user():
    instructions = dockerfile_instructions()
    froms = [arguments for word, arguments in instructions if word == "FROM"]
    assert all(image.split()[0] == "python:3.11-slim" for image in froms)
    runs = " ".join(arguments for word, arguments in instructions if word == "RUN")
    assert re.search(r"pip install --no-cache-dir \.(\s|$)", runs)
    users = [arguments for word, arguments in instructions if word == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}
    assert instructions.index(("USER", users[-1])) > max(i for i, (word, _) in enumerate(instructions)
                                                           if word in {"RUN", "COPY"})


def test_the_dockerfile_healthcheck_asks_healthz_with_python_urllib():
    healthchecks = [arguments for word, arguments in dockerfile_instructions() if word == "HEALTHCHECK"]
    assert len(healthchecks) == 1
    command = json.loads(healthchecks[0].split("CMD", 1)[1])
    assert command[:2] == ["python", "-c"]
    assert "urllib.request.urlopen('http://127.0.0.1:8080/healthz'" in command[2]
    compile(command[2], "HEALTHCHECK", "exec")


def test_the_dockerfile_copies_only_files_that_exist_and_are_not_docker_ignored():
    ignored = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    for word, arguments in dockerfile_instructions():
        if word == "COPY" and "--from" not in arguments:
            for source in shlex.split(arguments)[:-1]:
                assert (ROOT / source).exists(), source
                assert source.rstrip("/") not in ignored, source
    entrypoint = [json.loads(arguments) for word, arguments in dockerfile_instructions() if word == "ENTRYPOINT"]
    assert entrypoint == [["otel-meter"]]


# --- Kubernetes ---------------------------------------------------------------------------

@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_kubernetes_object_is_valid_against_the_kubernetes_schemas(version):
    objects = kubernetes_objects()
    assert {obj["kind"] for _, obj in objects} >= {"StatefulSet", "ConfigMap", "Secret", "Service",
                                                    "PodDisruptionBudget"}
    for source, obj in objects:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{source}: {obj['kind']} {obj['metadata']['name']}: {error.message}")


def test_the_kubernetes_schema_check_catches_a_misspelt_key():
    statefulset = find("StatefulSet")
    statefulset["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(statefulset, KUBERNETES_VERSIONS[-1], strict=True)


def test_kustomization_lists_every_manifest_but_the_example_secrets():
    listed = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())["resources"]
    files = {path.name for path in KUBERNETES.glob("*.yaml")} - {"kustomization.yaml", "secrets.example.yaml"}
    assert sorted(listed) == sorted(files)


def test_the_configmap_config_loads_for_a_clickhouse_cluster(tmp_path):
    data = find("ConfigMap", "otel-meter-config")["data"]
    config = load_otel_meter_config(data["collector-config.yaml"], tmp_path, "configmap.yaml#collector-config.yaml",
                                    rate_card=data["rate-card.yaml"])
    exporter = config.component(Kind.EXPORTER, "clickhouse")
    assert exporter.create_schema is False
    assert exporter.endpoint.startswith("https://otel_meter:secret@")
    assert config.component(Kind.PROCESSOR, "dedup").shared_store is True


def test_the_statefulset_mounts_config_secrets_and_a_queue_volume_per_replica():
    statefulset = find("StatefulSet", "otel-meter")
    pod = statefulset["spec"]["template"]["spec"]
    container = pod["containers"][0]
    mounts = {mount["name"]: mount["mountPath"] for mount in container["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    assert volumes["config"]["configMap"]["name"] == "otel-meter-config"
    assert mounts["config"] == "/etc/otel-meter"
    assert container["args"] == ["serve", "--config", "/etc/otel-meter/collector-config.yaml"]
    # The queue: a volumeClaimTemplate, i.e. one PersistentVolumeClaim per replica.
    claims = {claim["metadata"]["name"] for claim in statefulset["spec"]["volumeClaimTemplates"]}
    assert claims == {"queue"} and "queue" not in volumes
    config = yaml.safe_load(find("ConfigMap", "otel-meter-config")["data"]["collector-config.yaml"])
    assert config["exporters"]["clickhouse"]["sending_queue"]["directory"].startswith(mounts["queue"] + "/")
    tls = config["receivers"]["otlp"]["protocols"]["grpc"]["tls"]["cert_file"]
    assert tls.startswith(mounts["tls"] + "/")
    # Secrets: from Secrets only, every ${env:...} of the config provided by the Secret's keys.
    secret_name = container["envFrom"][0]["secretRef"]["name"]
    secret = find("Secret", secret_name)
    referenced = set(re.findall(r"\$\{env:(\w+)\}", find("ConfigMap", "otel-meter-config")["data"]["collector-config.yaml"]))
    assert referenced == set(secret["stringData"])
    assert find("Secret", volumes["tls"]["secret"]["secretName"])["type"] == "kubernetes.io/tls"


def test_the_statefulset_runs_non_root_with_resources_and_probes_that_ignore_the_store():
    pod = find("StatefulSet", "otel-meter")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    # /healthz answers 503 while ClickHouse is down, yet the replica still accepts and queues
    # data: neither restarting it nor taking it out of the ring helps then.
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["tcpSocket"]["port"] == "otlp-grpc", probe
    limit_mib = yaml.safe_load(find("ConfigMap", "otel-meter-config")["data"]["collector-config.yaml"]
                               )["receivers"]["otlp"]["memory_limiter"]["limit_mib"]
    assert limit_mib < int(container["resources"]["limits"]["memory"].removesuffix("Gi")) * 1024
    assert pod["terminationGracePeriodSeconds"] > 30  # the exporter's shutdown_timeout


def test_services_and_the_disruption_budget_select_the_statefulset_pods():
    statefulset = find("StatefulSet", "otel-meter")
    labels = statefulset["spec"]["template"]["metadata"]["labels"]
    ports = {port["name"]: port["containerPort"] for port in statefulset["spec"]["template"]["spec"]["containers"][0]["ports"]}
    config = yaml.safe_load(find("ConfigMap", "otel-meter-config")["data"]["collector-config.yaml"])
    assert ports["otlp-grpc"] == int(config["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"].rsplit(":", 1)[1])
    assert ports["usage-api"] == int(config["extensions"]["usage_api"]["endpoint"].rsplit(":", 1)[1])
    headless = find("Service", statefulset["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    for service in (headless, find("Service", "otel-meter")):
        assert service["spec"]["selector"].items() <= labels.items()
        assert all(port["targetPort"] in ports for port in service["spec"]["ports"])
    budget = find("PodDisruptionBudget")
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert budget["spec"]["maxUnavailable"] < statefulset["spec"]["replicas"]
    balancer = yaml.safe_load((OTELCOL / "otelcol-app-loadbalancing.yaml").read_text())
    hostname = balancer["exporters"]["loadbalancing/otel-meter"]["resolver"]["dns"]["hostname"]
    assert hostname.endswith(f":-{headless['metadata']['name']}.{headless['metadata']['namespace']}.svc.cluster.local}}")


# --- Collector configs --------------------------------------------------------------------

@pytest.mark.parametrize("path", [p.relative_to(DEPLOY).as_posix() for p in collector_configs()])
def test_collector_pipelines_reference_only_defined_components_with_current_names(path):
    config = yaml.safe_load((DEPLOY / path).read_text())
    used: dict[str, set[str]] = {"receivers": set(), "processors": set(), "exporters": set()}
    for name, pipeline in config["service"]["pipelines"].items():
        assert name.split("/")[0] in {"traces", "metrics", "logs"}, name
        assert pipeline["receivers"] and pipeline["exporters"], name
        for kind in used:
            for component in pipeline.get(kind, []):
                assert component in config.get(kind, {}), f"{path}: {name}: {kind} {component} is not defined"
                used[kind].add(component)
    for kind, defined in used.items():
        assert set(config.get(kind, {})) == defined, f"{path}: {kind} defined but unused"
    for extension in config["service"].get("extensions", []):
        assert extension in config["extensions"]
    types = {component.split("/")[0] for component in config["exporters"]}
    assert not types & DEPRECATED_EXPORTERS, types


def test_the_app_collector_forwards_genai_spans_to_otel_meter_over_otlp_grpc():
    config = yaml.safe_load((OTELCOL / "otelcol-app.yaml").read_text())
    exporter = config["exporters"]["otlp_grpc/otel-meter"]
    assert exporter["endpoint"] == "${env:OTEL_METER_ENDPOINT:-otel-meter:4317}"
    assert exporter["headers"]["authorization"] == "Bearer ${env:OTEL_METER_INGEST_TOKEN}"
    assert exporter["retry_on_failure"]["enabled"] is True
    condition = config["processors"]["filter/genai"]["traces"]["span"][0]
    # The filter drops a span only when it has none of the keys otel-meter counts from.
    for key in ("gen_ai.operation.name", "gen_ai.usage.input_tokens", "llm.token_count.prompt",
                "openinference.span.kind", "llm.request.type"):
        assert f'attributes["{key}"] == nil' in condition
    assert " or " not in condition
    balanced = yaml.safe_load((OTELCOL / "otelcol-app-loadbalancing.yaml").read_text())
    assert balanced["processors"]["filter/genai"] == config["processors"]["filter/genai"]
    assert balanced["exporters"]["loadbalancing/otel-meter"]["routing_key"] == "traceID"
