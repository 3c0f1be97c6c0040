"""Plays a history into the real server and reads back what it answers.

One server (a subprocess on a temporary chDB store, as in tests/integration/conftest.py) serves
many histories: history number k of a server lives around the month boundary 2(k+1) months
before now, under customers ``h{k}c{i}``, a plan card ``plan-k{k}`` and versions ``k{k}-...`` of
the shared default card ``list``, so histories never share a month, a customer or a version.
Usage goes in as OTLP (opentelemetry-proto messages over gRPC or OTLP/HTTP), everything else
through the usage API; the file targets' directories and a fake Stripe are read back.
"""

from __future__ import annotations

import calendar
import json
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import yaml
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1 import trace_pb2

from tests.fixtures.fake_stripe import DEFAULT_API_KEY, FakeStripe
from tests.integration.conftest import MeterServer
from tests.oracle.histories import (
    FIRST_HOUR,
    HOUR,
    LAST_HOUR,
    Apply,
    Card,
    Export,
    Grant,
    History,
    Point,
    Price,
    Rerate,
    Send,
    Span,
)
from tests.oracle.model import TARGETS, Oracle, Period

OLD_MONTHS_PER_SERVER = 60
MAX_HISTORIES = OLD_MONTHS_PER_SERVER + 12
CUSTOMERS_PER_HISTORY = 3
STRIPE_METERS = sorted({m.to for t in TARGETS if t.name == "stripe" for m in t.mappings})


def iso(time_ns: int) -> str:
    return datetime.fromtimestamp(time_ns // 10**9, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def month_start_before(months: int, now: datetime) -> int:
    """The start of the month ``months`` before the one of ``now``, in ns."""
    index = now.year * 12 + now.month - 1 - months
    return calendar.timegm((index // 12, index % 12 + 1, 1, 0, 0, 0)) * 10**9


def recent_bases(now: datetime) -> list[int]:
    """Bases of the histories that export to Stripe, newest first: their windows must lie within Stripe's
    35 days and be closed, and their ranges must not overlap (3 days apart). A month start that fits is
    taken first, so some of them straddle a month boundary."""
    day = 24 * HOUR
    newest = int(now.timestamp()) * 10**9 // day * day - 2 * day
    oldest = int(now.timestamp()) * 10**9 - 33 * day
    chosen = [start for start in (month_start_before(0, now), month_start_before(1, now)) if oldest <= start <= newest]
    for base in range(newest, oldest, -day):
        if all(abs(base - other) >= 3 * day for other in chosen):
            chosen.append(base)
    return sorted(chosen, reverse=True)


class OracleServer:
    """The real server with every feature the histories use: traces and metrics pipelines, the default
    card ``list`` applied through the API, two JSON Lines targets and a Stripe target (a fake Stripe)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.meter = MeterServer(workdir=workdir)
        self.stripe = FakeStripe(meters=STRIPE_METERS).start()
        now = datetime.now(timezone.utc)
        self.recent = sorted(recent_bases(now))
        self.old = [month_start_before(2 * (OLD_MONTHS_PER_SERVER - k), now) for k in range(OLD_MONTHS_PER_SERVER)]
        self.histories = 0
        """Histories played so far: each gets customers, versions and a time range of its own."""
        self.recent_used = False
        self.write_config()
        self.meter.start()

    def allocate(self, recent: bool) -> int | None:
        """A base for the next history, or None when this server has none left of that kind.

        The default card ``list`` is shared, so every history's range is later than those played
        before it: the versions of an earlier history are then older than every version of this one
        (each history applies one at its start), and a later history's versions are not applied yet
        when this one's period view looks up the card in force at its period's end."""
        if recent and not self.recent or not recent and (self.recent_used or not self.old):
            return None
        self.recent_used |= recent
        self.histories += 1
        return self.recent.pop(0) if recent else self.old.pop(0)

    def write_config(self) -> None:
        mapped = {f"h{k}c{i}": f"ref-h{k}c{i}" for k in range(MAX_HISTORIES)
                  for i in range(CUSTOMERS_PER_HISTORY)}
        targets: dict[str, Any] = {}
        for target in TARGETS:
            config: dict[str, Any] = {
                "customers": mapped, "granularity": target.granularity, "lateness": "1s",
                "meters": [{"meter": m.meter, "to": m.to, "value": m.value, "unit": m.unit,
                            **({"models": m.models} if m.models else {})} for m in target.mappings]}
            if target.name == "stripe":
                config.update(api_key=DEFAULT_API_KEY, api_base=self.stripe.url, max_network_retries=0)
            else:
                config["directory"] = str(self.export_directory(target.name))
            targets[target.name] = config
        pipeline = {"receivers": ["otlp"], "processors": ["genai_usage", "dedup", "attribution", "rating"],
                    "exporters": ["clickhouse"]}
        config = {
            "receivers": {"otlp": {"protocols": {"grpc": {"endpoint": self.meter.grpc_endpoint},
                                                 "http": {"endpoint": f"127.0.0.1:{self.meter.http_port}"}}}},
            "processors": {"genai_usage": {}, "dedup": {"window": "36500d"},
                           "attribution": {"customer": ["customer.id"]}, "rating": {"default_card": "list"}},
            "exporters": {"clickhouse": {"endpoint": f"chdb://{self.workdir / 'data'}"}},
            "extensions": {"usage_api": {"endpoint": f"127.0.0.1:{self.meter.api_port}"}},
            "billing": {"targets": targets},
            "service": {"extensions": ["usage_api"], "pipelines": {"traces": pipeline, "metrics": pipeline}},
        }
        self.meter.config_path.write_text(yaml.safe_dump(config, sort_keys=False))

    def export_directory(self, target: str) -> Path:
        return self.workdir / "exports" / target.replace("/", "_")

    def close(self) -> None:
        if self.meter.process is not None:
            self.meter.process.kill()
            self.meter.process.wait()
        self.stripe.close()

    # --- HTTP ---

    def call(self, method: str, path: str, body: Any = None, raw: bytes | None = None) -> Any:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        request = urllib.request.Request(f"{self.meter.api_url}{path}", data=data, method=method)
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return json.load(response)
        except urllib.error.HTTPError as error:
            raise AssertionError(f"{method} {path}: {error.code} {error.read()[:2000]!r}") from None

    def get(self, path: str, **params: str) -> Any:
        return self.call("GET", f"{path}?{urllib.parse.urlencode(params)}")

    def wait_until_stored(self) -> None:
        deadline = time.monotonic() + 30
        while self.get("/healthz")["queued_records"]:
            assert time.monotonic() < deadline, "acknowledged usage still queued after 30 s"
            time.sleep(0.02)


@dataclass
class Played:
    """What the server answered for one history, in the oracle's terms (customer indexes, card ids)."""

    export_runs: list[tuple[list[tuple], list[tuple]]] = field(default_factory=list)
    """Per export step: (records the file targets received, records the oracle expects)."""
    stripe_runs: list[tuple[dict, dict]] = field(default_factory=list)


class Player:
    def __init__(self, server: OracleServer, history: History, base: int) -> None:
        self.server = server
        self.history = history
        self.k = server.histories - 1
        self.base = base
        self.names = {c.index: f"h{self.k}{'c' if c.mapped else 'u'}{c.index}" for c in history.customers}
        self.customer_of = {name: index for index, name in self.names.items()}
        self.oracle = Oracle(history, self.base)
        self.played = Played()
        self.files_read: set[Path] = set()

    # --- cards ---

    def card_id(self, card_id: str) -> str:
        return card_id if card_id == "list" else f"{card_id}-k{self.k}"

    def card_back(self, card_id: str) -> str:
        return "plan" if card_id == f"plan-k{self.k}" else card_id

    def card_document(self, card: Card, names: tuple[str, ...]) -> str:
        versions = []
        for version in card.versions:
            if version.name not in names:
                continue
            body: dict[str, Any] = {"version": f"k{self.k}-{version.name}",
                                    "effective_from": iso(self.base + version.hour * HOUR),
                                    "models": [{"name": rule.name, rule.kind: rule.pattern,
                                                **({"provider": rule.provider} if rule.provider else {}),
                                                "prices": {meter: price_yaml(price) for meter, price in rule.prices}}
                                               for rule in version.rules]}
            if version.meters:
                body["meters"] = {meter: price_yaml(price) for meter, price in version.meters}
            if version.allowances:
                body["allowances"] = dict(version.allowances)
            if version.minimum:
                body["minimum"] = version.minimum
            if version.customers:
                body["customers"] = {self.names[index]: terms_yaml(terms, self.card_id("plan"))
                                     for index, terms in version.customers}
            versions.append(body)
        document: dict[str, Any] = {"id": self.card_id(card.id), "currency": card.currency, "versions": versions}
        if card.currency == "credits":
            document["credit_price"] = {"currency": "USD", "amount": "0.01"}
        return yaml.safe_dump(document, sort_keys=False)

    def apply(self, card_id: str, names: tuple[str, ...]) -> None:
        if names:
            force = "?force=true" if card_id == "plan" else ""  # applied before the default card names it
            self.server.call("POST", f"/v1/rate-cards{force}",
                             raw=self.card_document(self.history.card(card_id), names).encode())

    # --- playing ---

    def play(self) -> Played:
        later = self.history.applied_later()
        for card in sorted(self.history.cards, key=lambda card: card.id != "plan"):
            self.apply(card.id, tuple(v.name for v in card.versions if (card.id, v.name) not in later))
        self.oracle.apply_initial()
        for step in self.history.steps:
            self.play_step(step)
        if self.oracle.stale():  # as the docs advise after a backdated change: re-rate the affected time
            self.play_step(Rerate(FIRST_HOUR, LAST_HOUR))
        if self.history.features.exports:
            self.play_step(Export())
        return self.played

    def play_step(self, step) -> None:
        if isinstance(step, Send):
            self.send(step)
        elif isinstance(step, Apply):
            self.apply(step.card, step.versions)
        elif isinstance(step, Rerate):  # through the command line, as the docs show it
            self.server.wait_until_stored()
            done = subprocess.run(
                [sys.executable, "-m", "otel_meter", "rerate", "--from", iso(self.base + step.first_hour * HOUR),
                 "--to", iso(self.base + step.end_hour * HOUR), "--url", self.server.meter.api_url],
                cwd=self.server.workdir, capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, f"otel-meter rerate: {done.returncode} {done.stderr}"
        elif isinstance(step, Grant):
            self.server.call("POST", f"/v1/credits/{self.names[step.customer]}/grants", {
                "grant_id": f"g{step.number}", "amount": step.amount, "priority": step.priority,
                "currency": self.oracle.card_currency(step.customer),
                "effective_from": iso(self.base + step.effective_hour * HOUR),
                **({"expires_at": iso(self.base + step.expires_hour * HOUR)} if step.expires_hour is not None else {})})
        elif isinstance(step, Export):
            self.server.wait_until_stored()
            for target in TARGETS:
                for period in self.oracle.periods:
                    run = self.server.call("POST", "/v1/billing/export", {"target": target.name, "period": period.name})
                    assert run["ok"], f"export to {target.name}: {run['message']}: {run['errors'][:3]}"
        expected = self.oracle.step(step)
        if isinstance(step, Export):
            self.played.export_runs.append((self.read_files(), expected))
            self.played.stripe_runs.append((self.stripe_sums(), self.oracle.whole_number_sums(TARGETS[2])))

    def send(self, step: Send) -> None:
        spans = [item for item in step.items if isinstance(item, Span)]
        points = [item for item in step.items if isinstance(item, Point)]
        if spans:
            request = trace_request(spans, self.names, self.k, self.base)
            answer = self.post_otlp("traces", request, trace_service_pb2.ExportTraceServiceResponse, step.http)
            assert not answer.partial_success.rejected_spans, answer.partial_success.error_message
        if points:
            request = metrics_request(points, self.names, self.base)
            answer = self.post_otlp("metrics", request, metrics_service_pb2.ExportMetricsServiceResponse, step.http)
            assert not answer.partial_success.rejected_data_points, answer.partial_success.error_message

    def post_otlp(self, signal: str, request: Any, answer_type: Any, http: bool) -> Any:
        if http:
            sent = urllib.request.Request(f"{self.server.meter.http_url}/v1/{signal}", data=request.SerializeToString(),
                                          headers={"Content-Type": "application/x-protobuf"}, method="POST")
            with urllib.request.urlopen(sent, timeout=60) as response:
                return answer_type.FromString(response.read())
        with grpc.insecure_channel(self.server.meter.grpc_endpoint) as channel:
            if signal == "traces":
                return trace_service_pb2_grpc.TraceServiceStub(channel).Export(request, timeout=60)
            return metrics_service_pb2_grpc.MetricsServiceStub(channel).Export(request, timeout=60)

    # --- reading back ---

    def read_files(self) -> list[tuple]:
        """The records the JSON Lines targets received since the last read, for this history's customers."""
        records = []
        for target in TARGETS:
            directory = self.server.export_directory(target.name)
            for path in sorted(directory.glob("*.jsonl")) if directory.exists() else []:
                if path in self.files_read:
                    continue
                self.files_read.add(path)
                for line in path.read_text().splitlines():
                    record = json.loads(line)
                    if record["customer"] in self.customer_of:
                        start = int(datetime.strptime(record["window_start"], "%Y-%m-%dT%H:%M:%SZ").replace(
                            tzinfo=timezone.utc).timestamp()) * 10**9
                        records.append((record["target"], self.customer_of[record["customer"]], record["meter"], start,
                                        record["currency"], Decimal(record["value"]), Decimal(record["total"]),
                                        Decimal(record["quantity"]), Decimal(record["amount"])))
        return sorted(records)

    def stripe_sums(self) -> dict[tuple, Decimal]:
        """(customer, event name, period) -> the sum of the values Stripe accepted."""
        sums: dict[tuple, Decimal] = {}
        references = {f"ref-{name}": index for index, name in self.names.items()}
        for event in self.server.stripe.events:
            customer = references.get(event["payload"]["stripe_customer_id"])
            if customer is None:
                continue
            key = (customer, event["event_name"], Period.containing(event["timestamp"] * 10**9).name)
            sums[key] = sums.get(key, Decimal(0)) + Decimal(event["payload"]["value"])
        return sums

    def usage(self, whole_hours: bool) -> dict[tuple, tuple[Decimal, Decimal, Decimal]]:
        start, end = self.base + FIRST_HOUR * HOUR, self.base + LAST_HOUR * HOUR
        shift = 0 if whole_hours else 1800 * 10**9  # a range off the hour is read from the line items
        rows = self.server.get("/v1/usage", **{"from": iso(start - shift), "to": iso(end + shift),
                                               "group_by": "customer,model,meter"})["rows"]
        return {(self.customer_of[row["customer"]], row["model"], row["meter"], row["currency"]):
                (Decimal(row["quantity"]), Decimal(row["unpriced_quantity"]), Decimal(row["amount"]))
                for row in rows if row["customer"] in self.customer_of}

    def period_view(self, customer: int, period: Period) -> dict[str, Any]:
        return self.server.get("/v1/period", customer=self.names[customer], period=period.name,
                               rounding=self.history.rounding)

    def invoice(self, customer: int, period: Period) -> dict[str, Any]:
        return self.server.get("/v1/invoice", customer=self.names[customer], period=period.name,
                               rounding=self.history.rounding, format="json")

    def credits(self, customer: int) -> dict[str, Any]:
        return self.server.get(f"/v1/credits/{self.names[customer]}")

    def export_again(self) -> list[dict[str, Any]]:
        """A run after the last one: it must find nothing to send."""
        return [self.server.call("POST", "/v1/billing/export", {"target": target.name, "period": period.name})
                for target in TARGETS for period in self.oracle.periods]


# --- YAML of cards ---------------------------------------------------------------------------------

def price_yaml(price: Price) -> Any:
    if price.mode == "unit":
        return price.price if price.per is None else {"price": price.price, "per": price.per}
    if price.mode == "package":
        return {"mode": "package", "price": price.price, "package_size": price.package_size}
    return {"mode": price.mode, "tiers": [{"price": tier.price, **({"up_to": tier.up_to} if tier.up_to else {})}
                                          for tier in price.tiers]}


def terms_yaml(terms: Any, plan_id: str) -> dict[str, Any]:
    found: dict[str, Any] = {}
    if terms.plan:
        found["plan"] = plan_id
    if terms.discount_percent:
        found["discount_percent"] = terms.discount_percent
    if terms.allowances:
        found["allowances"] = dict(terms.allowances)
    if terms.minimum:
        found["minimum"] = terms.minimum
    return found


# --- OTLP ------------------------------------------------------------------------------------------

def attribute(key: str, value: str | int) -> KeyValue:
    typed = AnyValue(int_value=value) if isinstance(value, int) else AnyValue(string_value=value)
    return KeyValue(key=key, value=typed)


def trace_request(spans: list[Span], names: dict[int, str], k: int, base: int) -> Any:
    request = trace_service_pb2.ExportTraceServiceRequest()
    by_customer: dict[int, Any] = {}
    for span in spans:
        if span.customer not in by_customer:
            resource_spans = request.resource_spans.add(resource=Resource(attributes=[
                attribute("service.name", "oracle-app"), attribute("service.instance.id", "spans"),
                attribute("customer.id", names[span.customer])]))
            by_customer[span.customer] = resource_spans.scope_spans.add(scope=InstrumentationScope(name="oracle"))
        attributes = [attribute("gen_ai.operation.name", "execute_tool"), attribute("gen_ai.tool.name", "search")] \
            if span.tool else [attribute("gen_ai.operation.name", "chat"),
                               attribute("gen_ai.provider.name", span.provider),
                               attribute("gen_ai.request.model", span.model),
                               attribute("gen_ai.usage.input_tokens", span.input),
                               attribute("gen_ai.usage.output_tokens", span.output)]
        if span.cache_read:
            attributes.append(attribute("gen_ai.usage.cache_read.input_tokens", span.cache_read))
        if span.reasoning:
            attributes.append(attribute("gen_ai.usage.reasoning.output_tokens", span.reasoning))
        by_customer[span.customer].spans.add(
            trace_id=k.to_bytes(8, "big") + (span.number + 1).to_bytes(8, "big"),
            span_id=(span.number + 1).to_bytes(8, "big"), name="execute_tool search" if span.tool else "chat",
            kind=trace_pb2.Span.SPAN_KIND_CLIENT, start_time_unix_nano=base + span.at - 10**6,
            end_time_unix_nano=base + span.at,
            attributes=attributes)
    return request


def metrics_request(points: list[Point], names: dict[int, str], base: int) -> Any:
    """Points in arrival order; each (customer, series) one metric, so its points keep their order.

    The points come from a service instance of their own (``service.instance.id``): the histories
    model an app whose metric tokens are other calls than its spans' (with one instance for both,
    ``token_metrics: unless_spans`` bills the spans only: meters.md, "Spans or metrics")."""
    request = metrics_service_pb2.ExportMetricsServiceRequest()
    scopes: dict[int, Any] = {}
    metrics: dict[tuple[int, int], Any] = {}
    for point in points:
        if point.customer not in scopes:
            resource_metrics = request.resource_metrics.add(resource=Resource(attributes=[
                attribute("service.name", "oracle-app"), attribute("service.instance.id", "metrics"),
                attribute("customer.id", names[point.customer])]))
            scopes[point.customer] = resource_metrics.scope_metrics.add(scope=InstrumentationScope(name="oracle"))
        key = (point.customer, point.series)
        if key not in metrics:
            metric = scopes[point.customer].metrics.add(name="gen_ai.client.token.usage", unit="{token}")
            metric.histogram.aggregation_temporality = (
                metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE if point.cumulative
                else metrics_pb2.AGGREGATION_TEMPORALITY_DELTA)
            metrics[key] = metric
        metrics[key].histogram.data_points.add(
            start_time_unix_nano=base + point.start, time_unix_nano=base + point.at, count=1, sum=float(point.value),
            attributes=[attribute("gen_ai.operation.name", "chat"), attribute("gen_ai.provider.name", point.provider),
                        attribute("gen_ai.request.model", point.model),
                        attribute("gen_ai.token.type", point.token_type),
                        attribute("oracle.series", str(point.series))])
    return request
