"""The Grafana dashboards in deploy/grafana are real: every ClickHouse panel and template
variable query, with its macros and variables expanded the way the grafana-clickhouse-datasource
plugin expands them, runs against the migrated schema in chDB holding rated usage, and the
figures equal what the usage API and the credit ledger answer for the same range. Prometheus
panels name only metrics that otel-meter serves (docs/operations.md, "Self-metrics")."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal as D
from pathlib import Path
from typing import Any

import pytest
import yaml

from otel_meter.exporters.clickhouse.arrow import to_arrow
from otel_meter.processors.rating.processor import RatingProcessor
from otel_meter.rating.rate_book import RateBook
from otel_meter.rating.rate_card import parse_rate_card
from otel_meter.storage.credit_queries import ALERT_COLUMNS
from otel_meter.usage import UNATTRIBUTED, UsageBatch
from tests.chdb_worker import ChdbWorker

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
CLICKHOUSE_UID = "otel-meter-clickhouse"
PROMETHEUS_UID = "otel-meter-prometheus"
PLUGIN = "grafana-clickhouse-datasource"
ALL = "$__all"
HOUR_S = 3600


def seconds(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp())


FROM_S, TO_S = seconds("2026-11-02T00:00:00"), seconds("2026-11-05T00:00:00")
ODD_CUSTOMER = "o'brien & co"
RECEIVED_S = seconds("2026-11-04T23:59:50")  # when the usage inside the range was received and stored

BUDGET_ALERT = json.dumps({"data": {"amount": "2.00", "currency": "USD", "customer": "acme", "period": "2026-11",
                                    "spend": "1.60", "threshold_percent": "80"}, "type": "budget.threshold_crossed"})

PRICES = """\
id: prices
currency: USD
versions:
  - version: "v1"
    effective_from: 2026-01-01T00:00:00Z
    models:
      - match: "gpt-4o*"
        prices: {input_tokens: "2.50", output_tokens: "10.00"}
      - match: "mini-*"
        prices: {input_tokens: "0.15", output_tokens: "0.60"}
    meters: {tool_calls: "0.01"}
"""
COSTS = """\
id: costs
kind: cost
currency: USD
versions:
  - version: "c1"
    effective_from: 2026-01-01T00:00:00Z
    models:
      - match: "gpt-4o*"
        prices: {input_tokens: "1.25", output_tokens: "5.00"}
"""

# (event id, time, customer, environment, feature, provider, model, meter, quantity)
Row = tuple[str, str, str, str, str, str, str, str, int]
ROWS: list[Row] = [
    ("a1", "2026-11-02T09:15:00", "acme", "prod", "search", "openai", "gpt-4o", "input_tokens", 120_000),
    ("a1", "2026-11-02T09:15:00", "acme", "prod", "search", "openai", "gpt-4o", "output_tokens", 8_000),
    ("a2", "2026-11-03T17:59:59", "acme", "staging", "chat", "openai", "mini-x", "input_tokens", 2_000_000),
    ("a2", "2026-11-03T17:59:59", "acme", "staging", "chat", "openai", "mini-x", "output_tokens", 300_000),
    ("a3", "2026-11-04T23:30:00", "acme", "prod", "search", "openai", "gpt-4o", "tool_calls", 7),
    ("g1", "2026-11-02T00:00:00", "globex", "prod", "chat", "anthropic", "claude-3", "input_tokens", 50_000),
    ("g2", "2026-11-03T12:00:00", "globex", "prod", "chat", "openai", "gpt-4o", "input_tokens", 999_999),
    ("o1", "2026-11-04T08:00:00", ODD_CUSTOMER, "prod", "search", "openai", "gpt-4o", "input_tokens", 10),
    ("u1", "2026-11-03T03:00:00", "", "prod", "batch", "openai", "gpt-4o", "input_tokens", 40_000),
    ("u2", "2026-11-03T04:00:00", "", "staging", "batch", "anthropic", "claude-3", "output_tokens", 1_000),
    # outside [from, to): the hour before, and the hour starting at `to`
    ("x1", "2026-11-01T23:59:59", "acme", "prod", "search", "openai", "gpt-4o", "input_tokens", 555_555),
    ("x2", "2026-11-05T00:00:00", "acme", "prod", "search", "openai", "gpt-4o", "input_tokens", 444_444),
]


# --- the plugin's expansion ---------------------------------------------------------------------------------

def macro_args(sql: str, open_paren: int) -> tuple[list[str], int]:
    """The arguments of the macro whose "(" is at ``open_paren`` and the index after its ")":
    split at commas one bracket deep, as the plugin's getMacroArgs does."""
    args, depth, start = [], 0, open_paren + 1
    for index in range(open_paren, len(sql)):
        char = sql[index]
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                args.append(sql[start:index])
                return args, index + 1
        elif char == "," and depth == 1:
            args.append(sql[start:index])
            start = index + 1
    raise AssertionError(f"unclosed macro at {open_paren}: {sql[open_paren:open_paren + 80]!r}")


def apply_conditional_all(sql: str, variables: dict[str, list[str] | str]) -> str:
    """CHDatasource.applyConditionalAll: right to left, ``cond`` unless the variable is All or empty."""
    macro = "$__conditionalAll("
    while (index := sql.rfind(macro)) != -1:
        args, end = macro_args(sql, index + len(macro) - 1)
        assert len(args) == 2, f"$__conditionalAll takes (condition, $variable): {sql[index:end]!r}"
        name = re.search(r"(?<=\$\{)\w+(?=\})|(?<=\$)\w+", args[1].strip())
        assert name and args[1].strip() in (f"${name[0]}", f"${{{name[0]}}}"), f"2nd argument: {args[1]!r}"
        value = variables[name[0]]
        phrase = "1=1" if value in (ALL, []) else args[0]
        sql = sql[:index] + phrase + sql[end:]
    return sql


def single_quote(values: list[str] | str) -> str:
    """Grafana's ``:singlequote`` format: each value in quotes, ``'`` escaped with a backslash."""
    assert values != ALL, "All reached a ${var:singlequote} outside $__conditionalAll: it would list every value"
    return ",".join("'" + value.replace("'", "\\'") + "'" for value in values)


def interpolate(sql: str, variables: dict[str, list[str] | str]) -> str:
    def replace(match: re.Match) -> str:
        name, fmt = match["name"] or match["bare"], match["format"]
        if name.startswith("__"):
            return match[0]  # a macro, expanded by the backend
        assert fmt == "singlequote", f"${name} needs the :singlequote format to be a safe SQL literal"
        return single_quote(variables[name])
    return re.sub(r"\$\{(?P<name>\w+)(?::(?P<format>\w+))?\}|\$(?P<bare>\w+)", replace, sql)


def expand_time_macros(sql: str, from_s: int, to_s: int, interval_s: int) -> str:
    """pkg/macros/macros.go for the macros the dashboards use."""
    def one(name: str, args: list[str]) -> str:
        column = args[0].strip() if args else ""
        if name == "timeFilter":
            return f"{column} >= toDateTime({from_s}) AND {column} <= toDateTime({to_s})"
        if name == "timeInterval":
            return f"toStartOfInterval(toDateTime({column}), INTERVAL {interval_s} second)"
        raise AssertionError(f"macro $__{name} is not expanded by this test")

    for name, value in (("fromTime", f"toDateTime({from_s})"), ("toTime", f"toDateTime({to_s})"),
                        ("interval_s", str(interval_s))):
        sql = re.sub(rf"\$__{name}\b(?!_)", value, sql)
    while match := re.search(r"\$__(\w+)\(", sql):
        args, end = macro_args(sql, match.end() - 1)
        sql = sql[:match.start()] + one(match[1], args) + sql[end:]
    assert "$" not in sql, f"unexpanded: {sql}"
    return sql


def expand(sql: str, variables: dict[str, list[str] | str], from_s: int = FROM_S, to_s: int = TO_S,
           interval_s: int = HOUR_S) -> str:
    """Frontend first (conditionalAll, then template variables), then the backend's macros."""
    return expand_time_macros(interpolate(apply_conditional_all(sql, variables), variables), from_s, to_s,
                              interval_s)


def selection(**chosen: list[str]) -> dict[str, list[str] | str]:
    return {"customer": ALL, "model": ALL, "environment": ALL, **chosen}


# --- the dashboards ---------------------------------------------------------------------------------------

def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            yield panel
        yield from panel.get("panels", [])


def clickhouse_targets() -> list[tuple[str, str, dict[str, Any]]]:
    found = []
    for path in DASHBOARDS:
        for panel in panels(load(path)):
            for target in panel["targets"]:
                if target["datasource"]["type"] == PLUGIN:
                    found.append((path.stem, panel["title"], target))
    return found


def panel_sql(title: str, dashboard: str | None = None) -> str:
    matches = [target["rawSql"] for board, panel, target in clickhouse_targets()
               if panel == title and dashboard in (None, board)]
    assert len(matches) == 1, f"one ClickHouse target titled {title!r}, found {len(matches)}"
    return matches[0]


# --- run in the child process that owns the store ---------------------------------------------------------

def rate_book() -> RateBook:
    cards = parse_rate_card(PRICES, "prices.yaml").versions + parse_rate_card(COSTS, "costs.yaml").versions
    return RateBook(cards, default_card="prices", cost_card="costs")


def usage_batch(rows: list[Row]) -> UsageBatch:
    batch = UsageBatch()
    for seq, (event_id, time, customer, environment, feature, provider, model, meter, quantity) in enumerate(rows):
        batch.append(event_id, seq, seconds(time) * 10**9, meter, quantity, provider, model, "chat", {}, {}, {})
        batch.customer.append(customer or UNATTRIBUTED)
        batch.feature.append(feature)
        batch.service.append("api")
        batch.environment.append(environment)
    return batch


def seed(store) -> None:
    from otel_meter.credits.burn_down import CreditGrant
    from otel_meter.credits.credit_store import add_grant

    rating = RatingProcessor(rate_book())
    inside = [row for row in ROWS if not row[0].startswith("x")]
    outside = [row for row in ROWS if row[0].startswith("x")]
    store.insert_usage(to_arrow(rating.process(usage_batch(inside)), RECEIVED_S * 10**6), "grafana-1")
    store.insert_usage(to_arrow(rating.process(usage_batch(outside)), TO_S * 10**6 + 5 * 10**6), "grafana-2")
    add_grant(store, CreditGrant("prepaid", "acme", D(2), "USD", seconds("2026-11-01T00:00:00") * 10**9, None),
              now_ns=seconds("2026-11-01T00:00:00") * 10**9)
    add_grant(store, CreditGrant("big", "globex", D(100), "USD", seconds("2026-11-03T00:00:00") * 10**9, None),
              now_ns=seconds("2026-11-03T00:00:00") * 10**9)
    store.client.insert("alerts", [
        ("alert_1", "acme", "budget", "2026-11", D(80), BUDGET_ALERT, "pending", "", datetime(2026, 11, 3, 18, 0)),
        ("alert_1", "acme", "budget", "2026-11", D(80), BUDGET_ALERT, "delivered", "200", datetime(2026, 11, 3, 18, 1)),
    ], column_names=ALERT_COLUMNS)


def run_sql(store, sql: str) -> tuple[list[str], list[tuple]]:
    result = store.client.query(sql)
    return list(result.column_names), [tuple(row) for row in result.result_rows]


def usage_api(store, start: str, end: str, group_by: str, customer: str | None = None) -> list[dict[str, Any]]:
    from otel_meter.storage.usage_report import UsageRequest, run_usage_query

    return run_usage_query(store, UsageRequest.parse(start, end, group_by, customer))


def credit_balances(store, customers: list[str], as_of_s: int) -> dict[str, D]:
    from otel_meter.credits.credit_store import credit_ledger

    return {customer: credit_ledger(store, customer, as_of_s * 10**9).balance("USD") for customer in customers}


@pytest.fixture(scope="module")
def worker(tmp_path_factory) -> Iterator[ChdbWorker]:
    with ChdbWorker(tmp_path_factory.mktemp("grafana") / "store") as child:
        child.call(seed)
        yield child


def query(worker: ChdbWorker, sql: str, variables: dict[str, list[str] | str] | None = None,
          **times: int) -> list[dict[str, Any]]:
    columns, rows = worker.call(run_sql, expand(sql, variables or selection(), **times))
    return [dict(zip(columns, row)) for row in rows]


def api(worker: ChdbWorker, group_by: str, customer: str | None = None, start: int = FROM_S,
        end: int = TO_S) -> list[dict[str, Any]]:
    def iso(seconds: int) -> str:
        return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    return worker.call(usage_api, iso(start), iso(end), group_by, customer)


def totals(rows: list[dict[str, Any]], keys: tuple[str, ...], value: str) -> dict[tuple, D]:
    """Sum of ``value`` per ``keys``, leaving out zeros (a panel may keep or drop an all-zero group)."""
    summed: dict[tuple, D] = {}
    for row in rows:
        key = tuple(str(row.get(k, "")) for k in keys)  # the usage API leaves out cost fields without a cost card
        summed[key] = summed.get(key, D(0)) + D(str(row.get(value, 0)))
    return {key: total for key, total in summed.items() if total != 0}


# --- provisioning ---------------------------------------------------------------------------------------

def test_datasources_are_provisioned_with_the_uids_the_dashboards_name():
    sources = {}
    for path in (GRAFANA / "provisioning" / "datasources").glob("*.yaml"):
        document = yaml.safe_load(path.read_text())
        assert document["apiVersion"] == 1
        sources.update({source["uid"]: source for source in document["datasources"]})
    clickhouse = sources[CLICKHOUSE_UID]
    assert clickhouse["type"] == PLUGIN
    assert clickhouse["jsonData"]["protocol"] == "http" and clickhouse["jsonData"]["port"] == 8123
    assert clickhouse["jsonData"]["username"] == "${CLICKHOUSE_GRAFANA_USER}"
    assert clickhouse["secureJsonData"]["password"] == "${CLICKHOUSE_GRAFANA_PASSWORD}"
    assert sources[PROMETHEUS_UID]["type"] == "prometheus"

    used = {(target["datasource"]["type"], target["datasource"]["uid"])
            for path in DASHBOARDS for panel in panels(load(path)) for target in panel["targets"]}
    used |= {(v["datasource"]["type"], v["datasource"]["uid"])
             for path in DASHBOARDS for v in load(path)["templating"]["list"] if v["type"] == "query"}
    assert used == {(PLUGIN, CLICKHOUSE_UID), ("prometheus", PROMETHEUS_UID)}


def test_dashboards_are_file_provisioned_with_unique_uids_and_variables():
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "otel-meter.yaml").read_text())
    assert provider["apiVersion"] == 1 and provider["providers"][0]["type"] == "file"
    assert len(DASHBOARDS) == 3
    uids = [load(path)["uid"] for path in DASHBOARDS]
    assert len(set(uids)) == len(uids) and all(8 <= len(uid) <= 40 for uid in uids)
    for path in DASHBOARDS:
        dashboard = load(path)
        assert dashboard["id"] is None and dashboard["schemaVersion"] >= 39
        names = [v["name"] for v in dashboard["templating"]["list"]]
        assert names == ["customer", "model", "environment"], path.name
        ids = [panel["id"] for panel in dashboard["panels"]]
        assert len(set(ids)) == len(ids)
        for panel in panels(dashboard):
            assert panel["targets"], f"{path.name}: {panel['title']} has no query"
            assert panel["datasource"] == panel["targets"][0]["datasource"]
            grid = panel["gridPos"]
            assert grid["x"] + grid["w"] <= 24


def test_prometheus_panels_use_only_documented_self_metrics():
    operations = (ROOT / "docs" / "operations.md").read_text()
    documented = set(re.findall(r"^\| `(otel_meter_\w+)` \|", operations, re.MULTILINE))
    named = set()
    for path in DASHBOARDS:
        for panel in panels(load(path)):
            for target in panel["targets"]:
                if target["datasource"]["uid"] == PROMETHEUS_UID:
                    metrics = set(re.findall(r"\botel_meter_\w+", target["expr"]))
                    assert metrics, f"{panel['title']}: {target['expr']}"
                    named |= metrics
    assert named and named <= documented, named - documented
    for needed in ("otel_meter_receiver_refused_items_total", "otel_meter_dedup_duplicate_items_total",
                   "otel_meter_exporter_queued_records", "otel_meter_receiver_received_items_total"):
        assert needed in named


# --- every query runs ---------------------------------------------------------------------------------

SELECTIONS = [selection(), selection(customer=["acme", ODD_CUSTOMER]), selection(model=["gpt-4o"]),
              selection(environment=["staging"], customer=["acme"]), selection(customer=[])]


@pytest.mark.parametrize("board,title,target", clickhouse_targets(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_clickhouse_panel_runs_on_the_schema(worker, board, title, target):
    assert target["editorType"] == "sql" and target["format"] in (0, 1)
    sql = target["rawSql"]
    for variables in SELECTIONS:
        columns, rows = worker.call(run_sql, expand(sql, variables))
        assert len(set(columns)) == len(columns)
        if target["format"] == 0 and rows:  # time series: a time column, numbers per series
            assert columns[0] == "time", title
    _, rows = worker.call(run_sql, expand(sql, selection()))
    assert rows, f"{title} found nothing in the seeded store"


def test_variable_queries_list_the_stored_values(worker):
    for path in DASHBOARDS:
        for variable in load(path)["templating"]["list"]:
            assert variable["multi"] and variable["includeAll"] and variable["refresh"] == 2
            sql = variable["query"]["rawSql"]
            assert sql == variable["definition"]
            _, rows = worker.call(run_sql, expand(sql, selection()))
            values = [row[0] for row in rows]
            expected = {"customer": ["acme", "globex", ODD_CUSTOMER, UNATTRIBUTED],
                        "model": ["claude-3", "gpt-4o", "mini-x"],
                        "environment": ["prod", "staging"]}[variable["name"]]
            assert values == sorted(expected), (path.name, variable["name"])


# --- the figures equal the usage API's ---------------------------------------------------------------------

def test_usage_table_equals_the_usage_api_row_for_row(worker):
    panel = query(worker, panel_sql("Usage by customer, model and meter"))
    expected = api(worker, "customer,model,meter")
    assert [(r["customer"], r["model"], r["meter"], r["currency"], D(str(r["quantity"])),
             D(str(r["unpriced_quantity"])), D(r["amount"])) for r in expected] == \
        [(r["customer"], r["model"], r["meter"], r["currency"], r["quantity"], r["unpriced_quantity"], r["amount"])
         for r in panel]
    assert D(0) not in {r["amount"] for r in panel if r["customer"] == "acme"}  # priced usage is there
    assert any(r["unpriced_quantity"] for r in panel)


@pytest.mark.parametrize("title,key,value", [
    ("Amount by customer", "customer", "amount"), ("Amount by model", "model", "amount"),
    ("Amount by provider", "provider", "amount"), ("Amount by feature", "feature", "amount"),
    ("Quantity by meter", "meter", "quantity"), ("Cost by model", "model", "cost"),
])
def test_series_over_time_add_up_to_the_usage_api(worker, title, key, value):
    panel = query(worker, panel_sql(title))
    assert {row["time"].minute for row in panel} == {0}
    assert totals(panel, (key,), value) == totals(api(worker, key), (key,), value)


def test_top_customers_and_models_equal_the_usage_api(worker):
    customers = query(worker, panel_sql("Top customers"))
    expected = api(worker, "customer")
    assert totals(customers, ("customer", "currency"), "amount") == totals(expected, ("customer", "currency"), "amount")
    assert totals(customers, ("customer",), "quantity") == totals(expected, ("customer",), "quantity")
    assert totals(customers, ("customer",), "cost") == totals(expected, ("customer",), "cost")
    assert [row["amount"] for row in customers] == sorted((row["amount"] for row in customers), reverse=True)
    margins = {row["customer"]: row["margin"] for row in customers}
    assert {(customer,): margin for customer, margin in margins.items() if margin != 0} == \
        totals(expected, ("customer",), "margin")
    assert margins["acme"] > 0

    models = query(worker, panel_sql("Top models"))
    assert totals(models, ("model", "currency"), "amount") == totals(api(worker, "model"), ("model", "currency"),
                                                                      "amount")
    assert {row["model"]: row["provider"] for row in models}["claude-3"] == "anthropic"


def test_totals_unpriced_and_unattributed_equal_the_usage_api(worker):
    by_customer = api(worker, "customer")
    assert totals(query(worker, panel_sql("Amount")), ("currency",), "amount") == \
        totals(by_customer, ("currency",), "amount")
    assert query(worker, panel_sql("Line items"))[0]["line_items"] == 10  # x1 and x2 lie outside the range
    assert totals(query(worker, panel_sql("Cost")), ("cost_currency",), "cost") == \
        totals(by_customer, ("cost_currency",), "cost")

    unpriced = query(worker, panel_sql("Unpriced usage"))
    assert totals(unpriced, ("customer",), "unpriced_quantity") == \
        totals(by_customer, ("customer",), "unpriced_quantity")
    assert {(r["customer"], r["model"]) for r in unpriced} == {("globex", "claude-3"), (UNATTRIBUTED, "claude-3")}
    assert totals(query(worker, panel_sql("Unpriced quantity by meter")), ("meter",), "unpriced_quantity") == \
        totals(api(worker, "meter"), ("meter",), "unpriced_quantity")

    unattributed = query(worker, panel_sql("Unattributed usage"), selection(customer=["acme"]))
    expected = [row for row in api(worker, "customer,model") if row["customer"] == UNATTRIBUTED]
    assert totals(unattributed, ("model",), "quantity") == totals(expected, ("model",), "quantity")
    assert totals(unattributed, ("model",), "amount") == totals(expected, ("model",), "amount")


def test_variables_filter_as_the_usage_api_does(worker):
    chosen = selection(customer=["acme", ODD_CUSTOMER])
    panel = query(worker, panel_sql("Usage by customer, model and meter"), chosen)
    expected = api(worker, "customer,model,meter", "acme") + api(worker, "customer,model,meter", ODD_CUSTOMER)
    assert totals(panel, ("customer", "model", "meter"), "amount") == \
        totals(expected, ("customer", "model", "meter"), "amount")
    assert {row["customer"] for row in panel} == {"acme", ODD_CUSTOMER}

    staging = query(worker, panel_sql("Top customers"), selection(environment=["staging"], model=["mini-x",
                                                                                                   "claude-3"]))
    expected = [row for row in api(worker, "environment,model,customer")
                if row["environment"] == "staging" and row["model"] in ("mini-x", "claude-3")]
    assert totals(staging, ("customer",), "quantity") == totals(expected, ("customer",), "quantity")
    assert totals(staging, ("customer",), "amount") == totals(expected, ("customer",), "amount")

    assert query(worker, panel_sql("Usage by customer, model and meter"), selection(customer=[])) == \
        query(worker, panel_sql("Usage by customer, model and meter"))  # nothing chosen = All


def test_unaligned_range_reads_the_whole_hours_it_touches(worker):
    start, end = seconds("2026-11-02T09:30:00"), seconds("2026-11-03T18:00:00")
    panel = query(worker, panel_sql("Top customers"), from_s=start, to_s=end)
    expected = api(worker, "customer", start=seconds("2026-11-02T09:00:00"), end=end)
    assert totals(panel, ("customer",), "amount") == totals(expected, ("customer",), "amount")


# --- credits and budgets -------------------------------------------------------------------------------------

def test_credits_remaining_equals_the_credit_ledger(worker):
    panel = query(worker, panel_sql("Credits remaining"))
    ledger = worker.call(credit_balances, ["acme", "globex"], TO_S)
    assert {row["customer"]: row["remaining"] for row in panel} == ledger
    assert ledger["acme"] == 0 and 0 < ledger["globex"] < 100  # one grant used up, one partly
    used = {row["customer"]: row["used"] for row in panel}
    globex = api(worker, "customer", "globex", start=seconds("2026-11-03T00:00:00"))
    assert used["globex"] == D(globex[0]["amount"])


def test_budget_burn_equals_the_usage_api(worker):
    month = query(worker, panel_sql("Month-to-date spend"))
    expected = api(worker, "customer", start=seconds("2026-11-01T00:00:00"))
    assert totals(month, ("customer",), "spend") == totals(expected, ("customer",), "amount")
    acme = next(row for row in month if row["customer"] == "acme")
    assert float(acme["projected_month"]) == pytest.approx(float(acme["spend"]) * 30 / 4)

    alerts = query(worker, panel_sql("Budget and credit alerts"))
    assert [(a["customer"], a["state"], a["spend"], a["budget"], a["currency"]) for a in alerts] == \
        [("acme", "delivered", "1.60", "2.00", "USD")]  # the latest row of the alert

    daily = query(worker, panel_sql("Spend per day"), to_s=TO_S - 1)
    assert totals(daily, ("customer",), "amount") == totals(api(worker, "customer"), ("customer",), "amount")


# --- stored usage ---------------------------------------------------------------------------------------------

def test_stored_rows_and_freshness_come_from_receipt_times(worker):
    stored = query(worker, panel_sql("Rows stored by receipt time"))
    assert {row["environment"]: row["rows"] for row in stored} == {"prod": 7, "staging": 3}
    assert {row["time"].timestamp() for row in stored} == {RECEIVED_S // HOUR_S * HOUR_S}
    newest = query(worker, panel_sql("Newest stored receipt"))[0]
    assert newest["seconds_behind"] == TO_S - RECEIVED_S
    delay = query(worker, panel_sql("Delivery delay (event to receipt)"))
    assert delay[0]["max_seconds"] == RECEIVED_S - seconds("2026-11-02T00:00:00")
