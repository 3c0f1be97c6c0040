"""The console's pages, added to the usage API's ASGI app (``mount_console``): each handler reads
its query, asks the application layer for its documents and renders a template. Handlers run in
a worker thread (they query the store); none holds SQL or a business rule."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from importlib.resources import files
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any, Callable
from urllib.parse import parse_qs, urlencode

from fastapi import FastAPI
from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.staticfiles import StaticFiles

from otel_meter import __version__
from otel_meter.app.billing import LedgerRequest, ledger_document
from otel_meter.app.billing_status import billing_status
from otel_meter.app.credits import BalanceRequest, balance_document
from otel_meter.app.customers import budget_alerts, customer_list
from otel_meter.app.ingest import ingest_document
from otel_meter.app.invoices import InvoiceRequest, PeriodRequest, customer_invoice, period_statement
from otel_meter.app.overview import OverviewRequest, overview_document
from otel_meter.app.pricing import (
    CardFile,
    CardVersionNotFoundError,
    CardVersionRequest,
    PriceExplanationRequest,
    apply_card_file,
    card_list,
    card_version,
    meter_names,
    price_explanation,
)
from otel_meter.billing.invoice_render import render
from otel_meter.console.access import (
    COOKIE,
    AccessDenied,
    Viewer,
    admin_viewer,
    change_refusal,
    portal_viewer,
    same_origin,
)
from otel_meter.errors import OtelMeterError, RateCardError, StoreError
from otel_meter.rating.card_diff import diff_versions
from otel_meter.rating.period import Period
from otel_meter.security import AuthenticationError
from otel_meter.storage.usage_report import NS, parse_time, to_ns

if TYPE_CHECKING:
    from otel_meter.extensions.usage_api.server import UsageApiServer
    from otel_meter.rating.registry import RateCardRegistry

logger = logging.getLogger(__name__)

STATIC = files("otel_meter.console") / "static"
TEMPLATES = Environment(loader=PackageLoader("otel_meter.console", "templates"),
                        autoescape=select_autoescape(["html"]), trim_blocks=True, lstrip_blocks=True)
RANGES = {"24h": timedelta(hours=24), "7d": timedelta(days=7), "30d": timedelta(days=30), "90d": timedelta(days=90)}
BUCKETS = ("hour", "day", "month")
GROUPS = ("model", "meter", "provider", "customer")
NAVIGATION = (("/", "Overview"), ("/customers", "Customers"), ("/rate-cards", "Rate cards"),
              ("/billing", "Billing"), ("/ingest", "Ingest health"))
INVOICE_TYPES = {"html": "text/html; charset=utf-8", "csv": "text/csv; charset=utf-8",
                 "json": "application/json"}


@dataclass(frozen=True)
class RangeChoice:
    """The range picker's state: a preset (``24h`` ...) or ``custom`` days, the bucket and grouping.
    ``24h`` ends at the next full hour; the longer presets end at the next midnight (UTC) and
    are whole days, as custom ranges are; so every range reads a rollup."""

    name: str
    start_ns: int
    end_ns: int
    bucket: str
    group_by: str
    start_day: str
    end_day: str


def range_choice(request: Request, now_ns: int, group_default: str = "model") -> RangeChoice:
    query = request.query_params
    name = query.get("range", "7d")
    if name == "custom" and query.get("from") and query.get("to"):
        start_day, end_day = date.fromisoformat(query["from"]), date.fromisoformat(query["to"])
        start = datetime(start_day.year, start_day.month, start_day.day, tzinfo=timezone.utc)
        end = datetime(end_day.year, end_day.month, end_day.day, tzinfo=timezone.utc) + timedelta(days=1)
        if end <= start:
            raise ValueError(f"to ({end_day}) must not be before from ({start_day})")
    else:
        name = name if name in RANGES else "7d"
        unit = 3600 if RANGES[name] < timedelta(days=2) else 86400  # whole days: a day's bar is the whole day
        end = datetime.fromtimestamp(now_ns // NS // unit * unit + unit, tz=timezone.utc)
        start = end - RANGES[name]
    default_bucket = "hour" if end - start <= timedelta(days=2) else "day"
    bucket = query.get("bucket", "")
    bucket = bucket if bucket in BUCKETS else default_bucket
    group_by = query.get("group_by", "")
    group_by = group_by if group_by in GROUPS else group_default
    return RangeChoice(name, to_ns(start), to_ns(end), bucket, group_by, start.date().isoformat(),
                       (end - timedelta(seconds=1)).date().isoformat())


def registry_of(api: UsageApiServer) -> RateCardRegistry | None:
    """The ``rating`` processor's cards (the first by name without one), as the API's default."""
    registries = api.host.rate_cards()
    return registries.get("rating") or (registries[sorted(registries)[0]] if registries else None)


def page(name: str, status: int = 200, **context: Any) -> HTMLResponse:
    context.setdefault("navigation", NAVIGATION)
    context.setdefault("portal", False)
    return HTMLResponse(TEMPLATES.get_template(name).render(version=__version__, **context), status_code=status)


def refused(error: AccessDenied) -> HTMLResponse:
    return page("refused.html", error.status, message=str(error), code=error.status,
                navigation=() if error.status == 403 else NAVIGATION)


def bad_request(message: str) -> HTMLResponse:
    return page("refused.html", 400, message=message, code=400)


def store_unavailable(error: StoreError) -> HTMLResponse:
    """The store failed: say so (503, as the API answers), never a page of partial numbers."""
    logger.warning("console: %s", error)
    return page("refused.html", 503, message=f"the store did not answer: {error}; the page shows nothing "
                                                 "rather than partial numbers, try again", code=503)


def admin_page(api: UsageApiServer, build: Callable[[Request, Viewer], Response]) -> Callable[[Request], Response]:
    def handler(request: Request) -> Response:
        try:
            return build(request, admin_viewer(api, request))
        except AccessDenied as error:
            return refused(error)
        except StoreError as error:
            return store_unavailable(error)
        except (OtelMeterError, ValueError) as error:
            return bad_request(str(error))
    return handler


def mount_console(app: FastAPI, api: UsageApiServer) -> None:
    """Add the console's pages and static files to the API's app (left out of its OpenAPI document)."""
    app.mount("/console/static", StaticFiles(directory=str(STATIC)), name="console-static")

    def add(path: str, handler: Callable[[Request], Any], methods: tuple[str, ...] = ("GET",)) -> None:
        app.add_api_route(path, handler, methods=list(methods), include_in_schema=False)

    def overview(request: Request, viewer: Viewer) -> Response:
        now_ns = time.time_ns()
        choice = range_choice(request, now_ns)
        document = overview_document(api.store, OverviewRequest(choice.start_ns, choice.end_ns, choice.bucket,
                                                                choice.group_by),
                                     api.host.metrics().refused_items())
        return page("overview.html", current="/", choice=choice, ranges=RANGES, buckets=BUCKETS, groups=GROUPS,
                    document=document, series_json=json.dumps(document["series"]))

    def customers(request: Request, viewer: Viewer) -> Response:
        now_ns = time.time_ns()
        registry = registry_of(api)
        monitor = api.host.budgets()
        document = customer_list(api.store, registry.book if registry else None, Period.containing(now_ns), now_ns,
                                 request.query_params.get("q", ""), monitor.entitlement if monitor else None)
        return page("customers.html", current="/customers", document=document)

    def customer(request: Request, viewer: Viewer) -> Response:
        name = request.path_params["customer"]
        return page("customer.html", **customer_context(api, request, name, False))

    def invoice_download(request: Request, viewer: Viewer) -> Response:
        return invoice_file(api, request, request.path_params["customer"])

    def rate_cards(request: Request, viewer: Viewer, applying: dict[str, Any] | None = None,
                   status: int = 200) -> Response:
        registry = registry_of(api)
        if registry is None:
            return page("rate_cards.html", current="/rate-cards", cards=None)
        now_ns = time.time_ns()
        cards = card_list(registry, now_ns)["cards"]
        query = request.query_params
        chosen = query.get("card") or (cards[0]["id"] if cards else None)
        shown = diff = explanation = None
        if chosen is not None:
            try:
                shown = card_version(registry, CardVersionRequest(chosen, now_ns, query.get("version") or None))
            except CardVersionNotFoundError as error:
                return bad_request(str(error))
            against = query.get("against")
            if against:
                diff = version_diff(registry, chosen, against, shown["version"])
        if query.get("model"):
            at_ns = to_ns(parse_time("at", query["at"])) if query.get("at") else now_ns
            explanation = price_explanation(registry, PriceExplanationRequest(
                query["model"], at_ns, provider=query.get("provider", ""), customer=query.get("customer", ""),
                meters=meter_names(query.get("meter"))))
        return page("rate_cards.html", status, current="/rate-cards", cards=cards, chosen=chosen, shown=shown,
                    diff=diff, against=query.get("against", ""), explain_query=dict(query), explanation=explanation,
                    explanation_json=json.dumps(explanation, indent=2) if explanation is not None else None,
                    apply_refusal=change_refusal(api, viewer), applying=applying or {})

    def apply_card(request: Request, viewer: Viewer, form: dict[str, list[str]]) -> Response:
        """The apply form: the card file's text checked and applied as ``rates apply`` does; the
        page again, with what was added or the error naming the problem (400)."""
        refusal = change_refusal(api, viewer)
        if refusal is not None:
            raise AccessDenied(403, refusal)
        if not same_origin(request):
            raise AccessDenied(403, "the form was posted from another site's page; apply cards from this console")
        registry = registry_of(api)
        if registry is None:
            return bad_request("no rating processor is configured, so no rate card can be applied")
        field = {name: values[-1] for name, values in form.items()}
        source = field.get("file", "").strip() or "console.yaml"
        card_file = CardFile(field.get("card", ""), source, PurePosixPath(source).stem or "rate-card",
                             dry_run="dry_run" in field, force="force" in field)
        applying = {"card": card_file.text, "file": source, "dry_run": card_file.dry_run, "force": card_file.force}
        try:
            answer = apply_card_file(registry, card_file)
        except RateCardError as error:
            return rate_cards(request, viewer, {**applying, "error": str(error)}, 400)
        logger.info("console: rate card %s applied from %s: %s", answer["card"], source, answer["message"])
        return rate_cards(request, viewer, {**applying, "answer": answer})

    def billing(request: Request, viewer: Viewer) -> Response:
        now_ns = time.time_ns()
        name = request.query_params.get("period")
        period = Period.parse(name) if name else Period.containing(now_ns)
        scheduler = api.host.billing_scheduler()
        document = billing_status(api.store, api.host.billing(), LedgerRequest(period), now_ns,
                                  scheduler.last_runs if scheduler is not None else None)
        return page("billing.html", current="/billing", document=document)

    def ingest(request: Request, viewer: Viewer) -> Response:
        return page("ingest.html", current="/ingest", document=ingest_document(api.host.metrics()),
                    queued_records=api.queued_records())

    async def apply_card_form(request: Request) -> Response:
        form = parse_qs((await request.body()).decode("utf-8", "replace"), keep_blank_values=True)
        return await run_in_threadpool(admin_page(api, lambda request, viewer: apply_card(request, viewer, form)),
                                       request)

    def portal(request: Request) -> Response:
        try:
            viewer, name = portal_viewer(api, request)
            context = customer_context(api, request, name, True, viewer.link)
        except AccessDenied as error:
            return refused(error)
        except StoreError as error:
            return store_unavailable(error)
        except (OtelMeterError, ValueError) as error:
            return bad_request(str(error))
        return page("customer.html", navigation=(), portal=True, **context)

    def portal_invoice(request: Request) -> Response:
        try:
            _, name = portal_viewer(api, request)
            return invoice_file(api, request, name)
        except AccessDenied as error:
            return refused(error)
        except (OtelMeterError, ValueError) as error:
            return bad_request(str(error))

    def sign_in_form(request: Request) -> Response:
        return page("sign_in.html", navigation=(), next=safe_next(request.query_params.get("next")))

    async def sign_in(request: Request) -> Response:
        form = parse_qs((await request.body()).decode("utf-8", "replace"))
        token = (form.get("token") or [""])[-1].strip()
        next_path = safe_next((form.get("next") or ["/"])[-1])
        if api.authenticator is not None:
            try:
                principal = api.authenticator.authenticate(f"Bearer {token}")
            except AuthenticationError as error:
                return page("sign_in.html", 401, navigation=(), next=next_path, error=str(error))
            if principal.customer is not None:
                next_path = "/portal"
        answer = RedirectResponse(next_path, status_code=303)
        answer.set_cookie(COOKIE, token, httponly=True, samesite="strict", secure=api.config.tls is not None)
        return answer

    def sign_out(request: Request) -> Response:
        answer = RedirectResponse("/sign-in", status_code=303)
        answer.delete_cookie(COOKIE)
        return answer

    add("/", admin_page(api, overview))
    add("/customers", admin_page(api, customers))
    add("/customers/{customer}", admin_page(api, customer))
    add("/customers/{customer}/invoice", admin_page(api, invoice_download))
    add("/rate-cards", admin_page(api, rate_cards))
    add("/rate-cards", apply_card_form, ("POST",))
    add("/billing", admin_page(api, billing))
    add("/ingest", admin_page(api, ingest))
    add("/portal", portal)
    add("/portal/invoice", portal_invoice)
    add("/sign-in", sign_in_form)
    add("/sign-in", sign_in, ("POST",))
    add("/sign-out", sign_out, ("POST",))


def safe_next(path: str | None) -> str:
    """Only a path on this server (no ``//host``): the form must not redirect elsewhere."""
    return path if path and path.startswith("/") and not path.startswith("//") else "/"


def version_diff(registry: RateCardRegistry, card_id: str, against: str, version: str) -> dict[str, Any]:
    by_name = {v.version: v for v in registry.versions() if v.card_id == card_id}
    if against not in by_name:
        raise CardVersionNotFoundError(f"card {card_id!r} has no applied version {against!r}")
    return {"from": against, "to": version, "lines": diff_versions(by_name[against], by_name[version])}


def customer_context(api: UsageApiServer, request: Request, name: str, portal: bool,
                     link: str | None = None) -> dict[str, Any]:
    """What the customer page and the portal show: usage over time by model or meter, the period
    view, credits, entitlement and invoice links; and, outside the portal, what was exported."""
    now_ns = time.time_ns()
    choice = range_choice(request, now_ns, group_default="model")
    if choice.group_by == "customer":
        choice = RangeChoice(choice.name, choice.start_ns, choice.end_ns, choice.bucket, "model",
                             choice.start_day, choice.end_day)
    registry = registry_of(api)
    book = registry.book if registry else None
    period_name = request.query_params.get("period")
    period = Period.parse(period_name) if period_name else Period.containing(now_ns)
    overview = overview_document(api.store, OverviewRequest(choice.start_ns, choice.end_ns, choice.bucket,
                                                            choice.group_by, name))
    statement = period_statement(api.store, book, PeriodRequest(name, period)) if book is not None else None
    monitor = api.host.budgets()
    ledger = None if portal else ledger_document(api.store, LedgerRequest(period, customer=name))
    base = "/portal" if portal else f"/customers/{name}"
    keep = {"link": link} if link else ({"customer": name} if portal else {})
    return {"customer": name, "current": "/customers", "choice": choice, "ranges": RANGES, "buckets": BUCKETS,
            "groups": ("model", "meter", "provider"), "document": overview,
            "series_json": json.dumps(overview["series"]), "statement": statement, "period": period.name,
            "credits": balance_document(api.store, book, BalanceRequest(name, now_ns)),
            "entitlement": monitor.entitlement(name) if monitor else None,
            "alerts": budget_alerts(monitor.alerts(), name) if monitor else None, "ledger": ledger, "base": base,
            "keep": keep, "invoice_base": f"{'/portal/invoice' if portal else base + '/invoice'}?"
                                          + urlencode({**keep, "period": period.name})}


def invoice_file(api: UsageApiServer, request: Request, customer: str) -> Response:
    """The period's invoice as HTML (inline), CSV or JSON: the document ``GET /v1/invoice`` answers."""
    registry = registry_of(api)
    if registry is None:
        return bad_request("invoices need a rating processor with rate cards")
    output_format = request.query_params.get("format", "html")
    if output_format not in INVOICE_TYPES:
        return bad_request(f"format: {output_format!r}; use html, csv or json")
    name = request.query_params.get("period")
    period = Period.parse(name) if name else Period.containing(time.time_ns())
    billing = api.host.billing()
    target_meters = {target: config.meters for target, config in billing.targets.items()} if billing else None
    document = customer_invoice(api.store, registry.book, InvoiceRequest(customer, period,
                                                                         target_meters=target_meters))
    content = (json.dumps(document, indent=2, default=str) if output_format == "json"
               else render(document, output_format))
    headers = {} if output_format == "html" else {
        "Content-Disposition": f'attachment; filename="invoice-{period.name}.{output_format}"'}
    return Response(content.encode(), media_type=INVOICE_TYPES[output_format], headers=headers)
