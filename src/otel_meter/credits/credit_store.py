"""Prepaid credit grants in the store, and the credit ledger computed from them.

Grants live in ``credit_grants`` (a ReplacingMergeTree keyed by customer and grant id): a grant
is never edited in place, voiding it writes a newer row of the same key with ``voided = true``,
and reads take the latest row (``FINAL``). A grant id is unique per customer: adding one that
exists is refused rather than silently replacing it.

The ledger is :func:`otel_meter.credits.burn_down.burn_down` over the customer's grants, its
rated usage per hour and currency (``usage_hourly``) and, given the rate cards, the settlement
of each billing period whose statement (the period view) is below its real-time amount, so it
is recomputed, never stored, always agrees with the usage the API reports, and burns for each
period exactly the credits its statement applies.

Every input problem raises :class:`~otel_meter.credits.burn_down.CreditError` (an
``OtelMeterError``) naming the grant and the field; :class:`UnknownGrantError` and
:class:`DuplicateGrantError` are its subclasses for a grant that is missing or already there.
"""

from __future__ import annotations

import dataclasses
import decimal
import functools
import logging
import re
import time
import uuid
from collections.abc import Mapping
from datetime import datetime, timezone
from decimal import Decimal
from typing import TYPE_CHECKING, Any, cast

import pyarrow as pa

from otel_meter.credits.burn_down import (
    EXACT,
    CreditError,
    CreditGrant,
    CreditLedger,
    PeriodSettlement,
    UsageBucket,
    burn_down,
)
from otel_meter.rating.period import Period
from otel_meter.rating.statement import period_view, prices_by_period
from otel_meter.storage import credit_queries
from otel_meter.storage.store import INSERT_SETTINGS, Store

if TYPE_CHECKING:
    from otel_meter.rating.rate_book import RateBook

logger = logging.getLogger(__name__)

__all__ = ["DuplicateGrantError", "UnknownGrantError", "add_grant", "check_grant", "credit_ledger",
           "grants_of_customers", "ledger_document", "list_grants", "money_text", "parse_grant",
           "period_settlements", "usage_buckets", "usage_buckets_of_customers", "void_grant"]

AMOUNT_SCALE = 18
"""Decimal places of ``credit_grants.amount`` (Decimal(38, 18))."""
MAX_AMOUNT = Decimal(10) ** (38 - AMOUNT_SCALE)
MAX_TIME_NS = 2**63 - 1
"""DateTime64(9) ends in 2262; so does an int64 of nanoseconds."""
MAX_GRANT_ID_LENGTH = 128
CURRENCY = re.compile(r"^([A-Z]{3}|credits)$")


class UnknownGrantError(CreditError):
    """No grant with that id exists for that customer."""


class DuplicateGrantError(CreditError):
    """A grant with that id already exists for that customer."""


# --- grants ---------------------------------------------------------------------------------------

def add_grant(store: Store, grant: CreditGrant, note: str = "", *, now_ns: int | None = None) -> CreditGrant:
    """Store a new grant and return it as stored.

    An empty ``grant_id`` gets a generated one (a UUID); ``granted_at_ns`` 0 becomes now. The
    store keeps ``granted_at`` to the microsecond, so the returned grant has it rounded down to one.
    """
    now_ns = time.time_ns() if now_ns is None else now_ns
    grant = dataclasses.replace(grant, grant_id=grant.grant_id or uuid.uuid4().hex,
                                granted_at_ns=(grant.granted_at_ns or now_ns) // 1000 * 1000)
    check_grant(grant)
    if not isinstance(note, str):
        raise CreditError(f"credit grant {grant.grant_id!r}: note must be text, got {type(note).__name__}")
    if _stored_grant(store, grant.customer, grant.grant_id) is not None:
        raise DuplicateGrantError(f"credit grant {grant.grant_id!r} already exists for customer {grant.customer!r}; "
                                  f"grant ids are unique per customer: use another id, or void the grant and add "
                                  f"a new one")
    _insert_grants(store, [(grant, note, max(now_ns // 1000, grant.granted_at_ns // 1000))])
    return grant


def void_grant(store: Store, customer: str, grant_id: str, *, now_ns: int | None = None) -> CreditGrant:
    """Void a grant: from now on it is ignored entirely (no credit from it, past or future).

    Voiding a voided grant changes nothing. Raises :class:`UnknownGrantError` when the customer
    has no grant with that id."""
    stored = _stored_grant(store, customer, grant_id)
    if stored is None:
        raise UnknownGrantError(f"customer {customer!r} has no credit grant {grant_id!r}; list the customer's "
                                f"grants to find its id")
    grant, note, updated_at_us = stored
    if grant.voided:
        return grant
    voided = dataclasses.replace(grant, voided=True)
    now_us = (time.time_ns() if now_ns is None else now_ns) // 1000
    _insert_grants(store, [(voided, note, max(now_us, updated_at_us + 1))])  # newer than the row it replaces
    return voided


def list_grants(store: Store, customer: str) -> list[CreditGrant]:
    """Every grant of ``customer``, voided ones included (``voided`` says so), by grant id."""
    return [grant for grant, _, _ in _grant_rows(store.query(credit_queries.GRANTS_OF_CUSTOMER,
                                                             {"customer": customer}))]


def grants_of_customers(store: Store) -> dict[str, list[CreditGrant]]:
    """Every grant of every customer, voided ones included, in one query."""
    grants: dict[str, list[CreditGrant]] = {}
    for grant, _, _ in _grant_rows(store.query(credit_queries.ALL_GRANTS, {})):
        grants.setdefault(grant.customer, []).append(grant)
    return grants


def check_grant(grant: CreditGrant) -> None:
    """What the store needs beyond :class:`CreditGrant`'s own checks; raises :class:`CreditError`."""
    where = f"credit grant {grant.grant_id!r}"
    if not isinstance(grant.grant_id, str) or not grant.grant_id.isascii() or not grant.grant_id.isprintable() \
            or len(grant.grant_id) > MAX_GRANT_ID_LENGTH:
        raise CreditError(f"{where}: grant_id must be printable ASCII of at most {MAX_GRANT_ID_LENGTH} characters")
    if not isinstance(grant.customer, str) or not grant.customer:
        raise CreditError(f"{where}: customer is empty; name the customer the credits are for")
    if not CURRENCY.match(grant.currency):
        raise CreditError(f"{where}: currency is {grant.currency!r}; use \"credits\" or an ISO 4217 code in capitals "
                          f"such as \"USD\"")
    if grant.amount >= MAX_AMOUNT:
        raise CreditError(f"{where}: amount {grant.amount:f} is too large; the store holds amounts below {MAX_AMOUNT}")
    if _decimal_places(grant.amount) > AMOUNT_SCALE:
        raise CreditError(f"{where}: amount {grant.amount:f} has more than {AMOUNT_SCALE} decimal places; the store "
                          f"keeps amounts to {AMOUNT_SCALE} places (Decimal(38, 18))")
    for name in ("effective_from_ns", "expires_at_ns", "granted_at_ns"):
        value = getattr(grant, name)
        if value is None and name == "expires_at_ns":
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_TIME_NS:
            raise CreditError(f"{where}: {name} must be nanoseconds since the Unix epoch between 1970 and 2262, "
                              f"got {value!r}")
    if isinstance(grant.priority, bool) or not isinstance(grant.priority, int) or not -2**31 <= grant.priority < 2**31:
        raise CreditError(f"{where}: priority must be an integer from {-2**31} to {2**31 - 1}, got {grant.priority!r}")


def parse_grant(document: Mapping[str, Any], customer: str | None = None, *,
                now_ns: int | None = None) -> tuple[CreditGrant, str]:
    """A grant and its note from a JSON object, as an API receives it; raises :class:`CreditError`.

    Keys: ``amount`` (a positive decimal string such as ``"100.00"``, or an integer; a float is
    refused because it is not exact), ``currency`` (default ``credits``), ``effective_from`` and
    ``expires_at`` (ISO 8601 with a time zone; default now and never), ``priority`` (integer,
    default 0, lower burns first), ``grant_id`` (default generated), ``note``, and ``customer``
    unless given as an argument (then the document may only repeat it)."""
    if not isinstance(document, Mapping):
        raise CreditError("credit grant: expected a JSON object with amount, currency, effective_from, ...")
    known = {"amount", "currency", "effective_from", "expires_at", "priority", "grant_id", "note", "customer"}
    unknown = sorted(str(key) for key in document if key not in known)
    if unknown:
        raise CreditError(f"credit grant: unknown key(s) {', '.join(unknown)}; known keys: {', '.join(sorted(known))}")
    grant_id = document.get("grant_id") or ""
    where = f"credit grant {grant_id!r}" if grant_id else "credit grant"
    if not isinstance(grant_id, str):
        raise CreditError(f"{where}: grant_id must be a string")
    named = document.get("customer")
    if customer is None:
        customer = named
    elif named is not None and named != customer:
        raise CreditError(f"{where}: customer {named!r} differs from the customer {customer!r} it is added for")
    if not isinstance(customer, str) or not customer:
        raise CreditError(f"{where}: customer is missing; name the customer the credits are for")
    now_ns = time.time_ns() if now_ns is None else now_ns
    amount = _positive_decimal(document.get("amount"), where)
    currency = document.get("currency", "credits")
    if not isinstance(currency, str) or not CURRENCY.match(currency):
        raise CreditError(f"{where}: currency is {currency!r}; use \"credits\" or an ISO 4217 code in capitals "
                          f"such as \"USD\"")
    effective_from = _time_ns(document.get("effective_from"), "effective_from", where)
    effective_from = now_ns if effective_from is None else effective_from
    expires_at = _time_ns(document.get("expires_at"), "expires_at", where)
    if expires_at is not None and expires_at <= effective_from:
        raise CreditError(f"{where}: expires_at must be after effective_from; leave it out for credits that "
                          f"never expire")
    priority = document.get("priority", 0)
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise CreditError(f"{where}: priority must be an integer (lower burns first), got {priority!r}")
    note = document.get("note", "")
    if not isinstance(note, str):
        raise CreditError(f"{where}: note must be a string")
    grant = CreditGrant(grant_id=grant_id, customer=customer, amount=amount, currency=currency,
                        effective_from_ns=effective_from, expires_at_ns=expires_at, priority=priority)
    check_grant(dataclasses.replace(grant, grant_id=grant_id or "new"))  # the id is generated when added
    return grant, note


# --- usage and the ledger ---------------------------------------------------------------------------

def usage_buckets(store: Store, customer: str, until_ns: int, *, since_ns: int = 0) -> list[UsageBucket]:
    """The customer's rated amount per hour and currency, of the hours starting before ``until_ns``
    (the hour in progress included, with what it holds so far), from the hour holding ``since_ns``.

    Unpriced usage (amount 0) and hours whose amounts net to 0 are left out."""
    rows = store.query(credit_queries.USAGE_BUCKETS, {"customer": customer, "since_s": since_ns // 10**9,
                                                      "until_s": _ceil_seconds(until_ns)})
    return [UsageBucket(applied_at(start_s, until_ns), currency, exact(total)) for start_s, currency, total in rows]


def usage_buckets_of_customers(store: Store, since_ns: Mapping[str, int],
                               until_ns: int) -> dict[str, list[UsageBucket]]:
    """:func:`usage_buckets` for several customers in one query, each from its own ``since_ns``."""
    if not since_ns:
        return {}
    customers = list(since_ns)
    starts = [max(0, since_ns[customer]) // 10**9 // 3600 * 3600 for customer in customers]  # the hour holding it
    rows = store.query(credit_queries.USAGE_BUCKETS_OF_CUSTOMERS,
                       {"customers": customers, "since_s": starts, "min_since_s": min(starts),
                        "until_s": _ceil_seconds(until_ns)})
    buckets: dict[str, list[UsageBucket]] = {customer: [] for customer in customers}
    for customer, start_s, currency, total in rows:
        buckets[customer].append(UsageBucket(applied_at(start_s, until_ns), currency, exact(total)))
    return buckets


def applied_at(hour_start_s: int, until_ns: int) -> int:
    """When an hour's usage burns credits: at the hour's last nanosecond, or just before
    ``until_ns`` for the hour in progress. So credits granted at 10:30 cover the usage of
    10:00-11:00; credits that expire at 10:30 do not (they are gone when the hour is applied)."""
    return min((hour_start_s + 3600) * 10**9 - 1, until_ns - 1)


def credit_ledger(store: Store, customer: str, as_of_ns: int | None = None,
                  book: RateBook | None = None) -> CreditLedger:
    """The customer's grants burned down by all its rated usage before ``as_of_ns`` (default now),
    each billing period settled with its statement under ``book`` (:func:`period_settlements`).

    Without a book no period can be settled: credits stay burned at real-time amounts, which a
    statement with allowances, tiers or packages may not apply. That is logged (once per process)."""
    as_of_ns = time.time_ns() if as_of_ns is None else as_of_ns
    buckets = usage_buckets(store, customer, as_of_ns)
    if book is None:
        _warn_unsettled()
    settlements = period_settlements(store, book, customer, buckets, as_of_ns) if book is not None else []
    return burn_down(list_grants(store, customer), buckets, as_of_ns, settlements)


def period_settlements(store: Store, book: RateBook, customer: str, buckets: list[UsageBucket],
                       as_of_ns: int) -> list[PeriodSettlement]:
    """For each billing period with usage in ``buckets`` and each currency of it, the settlement
    that returns what real time burned above the period's statement total (allowances, tiers and
    packages), so the credits burned for a period equal what its statement applies.

    The statement is the period view of the usage of the hours that start before ``as_of_ns``
    (for the period in progress: so far); it is applied at the period's last nanosecond, or just
    before ``as_of_ns`` for the period in progress. A statement at or above real time (a minimum,
    say) settles nothing: credits pay real-time usage, the rest is billed. Cards with no
    allowance, tiers or packages cannot lower a period, so no period is priced for them."""
    if not buckets or not prices_by_period(book):
        return []
    settlements = []
    for start_ns in sorted({Period.containing(bucket.start_ns).start_ns for bucket in buckets}):
        period = Period.containing(start_ns)
        if period.start_ns >= as_of_ns:
            continue
        view = period_view(store, book, customer, period, until_ns=as_of_ns)
        for statement in view.statements:
            difference = EXACT.subtract(statement.total, statement.realtime_total)
            if difference < 0:
                settlements.append(PeriodSettlement(period.name, period.start_ns, min(period.end_ns, as_of_ns) - 1,
                                                    statement.currency, difference, statement.total))
    return settlements


@functools.cache
def _warn_unsettled() -> None:
    logger.warning("credits: a credit ledger was computed without the rate cards, so no billing period was settled "
                   "with its statement; balances count usage at real-time amounts (pass the rate book, as the "
                   "usage API does)")


def ledger_document(ledger: CreditLedger, as_of_ns: int) -> dict[str, Any]:
    """The ledger as JSON values: amounts as exact decimal strings, times in ISO 8601 UTC."""
    currencies = sorted({state.grant.currency for state in ledger.grants})
    return {
        "customer": ledger.customer,
        "as_of": iso_time(as_of_ns),
        "balances": {currency: money_text(ledger.balance(currency)) for currency in currencies},
        "granted": {currency: money_text(ledger.granted(currency)) for currency in currencies},
        "overage": {currency: money_text(amount) for currency, amount in sorted(ledger.overage.items())},
        "grants": [{
            "grant_id": state.grant.grant_id, "status": state.status, "currency": state.grant.currency,
            "amount": money_text(state.grant.amount), "consumed": money_text(state.consumed),
            "remaining": money_text(state.remaining), "expired": money_text(state.expired),
            "priority": state.grant.priority, "effective_from": iso_time(state.grant.effective_from_ns),
            "expires_at": None if state.grant.expires_at_ns is None else iso_time(state.grant.expires_at_ns),
            "voided": state.grant.voided,
        } for state in ledger.grants],
        "history": [{
            "time": iso_time(entry.time_ns), "grant_id": entry.grant_id, "kind": entry.kind,
            "amount": money_text(entry.amount), "currency": entry.currency,
            "balance_after": money_text(entry.balance_after), "reason": entry.reason,
        } for entry in ledger.history],
    }


# --- helpers ---------------------------------------------------------------------------------------

def exact(value: Decimal) -> Decimal:
    """A stored Decimal(38, 18) without its trailing zeros (equal in value, shorter to read)."""
    if not value:
        return Decimal(0)
    normal = value.normalize()
    return normal.quantize(Decimal(1)) if cast(int, normal.as_tuple().exponent) > 0 else normal


def decimal_text(value: Decimal) -> str:
    """An exact decimal string without exponent or trailing zeros: ``12.34``, ``100``, ``0``."""
    return format(exact(value), "f")


def money_text(value: Decimal) -> str:
    """An exact amount with at least two decimal places: ``12.34``, ``100.00``, ``0.025``, ``0.00``."""
    value = exact(value)
    return format(value.quantize(Decimal("0.01")) if value.as_tuple().exponent > -2 else value, "f")  # type: ignore[operator]


def iso_time(time_ns: int) -> str:
    seconds, rest = divmod(time_ns, 10**9)
    moment = datetime.fromtimestamp(seconds, timezone.utc).replace(microsecond=rest // 1000)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def _decimal_places(value: Decimal) -> int:
    return max(0, -exact(value).as_tuple().exponent)  # type: ignore[operator]


def _ceil_seconds(time_ns: int) -> int:
    return -(-time_ns // 10**9)


def _positive_decimal(value: Any, where: str) -> Decimal:
    if isinstance(value, float):
        raise CreditError(f"{where}: amount {value!r} is a JSON number with a fraction, which is not exact; send "
                          f"it as a decimal string such as \"{value}\"")
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise CreditError(f"{where}: amount must be a positive decimal string such as \"100.00\"")
    try:
        amount = Decimal(value.strip() if isinstance(value, str) else value)
    except decimal.InvalidOperation:
        raise CreditError(f"{where}: amount {value!r} is not a decimal number; use e.g. \"100.00\"") from None
    if not amount.is_finite() or amount <= 0:
        raise CreditError(f"{where}: amount must be a positive decimal string such as \"100.00\", got {value!r}")
    return amount


def _time_ns(value: Any, name: str, where: str) -> int | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise CreditError(f"{where}: {name} must be an ISO 8601 time with a time zone, e.g. 2026-11-01T00:00:00Z")
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise CreditError(f"{where}: {name} {value!r} is not an ISO 8601 time; use e.g. 2026-11-01T00:00:00Z") \
            from None
    if moment.utcoffset() is None:
        raise CreditError(f"{where}: {name} {value!r} has no time zone; add one, e.g. 2026-11-01T00:00:00Z")
    delta = moment - datetime(1970, 1, 1, tzinfo=timezone.utc)
    time_ns = (delta.days * 86400 + delta.seconds) * 10**9 + delta.microseconds * 1000
    if not 0 <= time_ns <= MAX_TIME_NS:
        raise CreditError(f"{where}: {name} {value!r} is outside 1970-2262")
    return time_ns


def _grant_rows(rows: list[tuple[Any, ...]]) -> list[tuple[CreditGrant, str, int]]:
    grants = []
    for (grant_id, customer, amount, currency, effective_from_ns, expires_at_ns, priority, voided, granted_at_us,
         note, updated_at_us) in rows:
        grant = CreditGrant(grant_id=grant_id, customer=customer, amount=exact(amount), currency=currency,
                            effective_from_ns=int(effective_from_ns),
                            expires_at_ns=None if expires_at_ns is None else int(expires_at_ns),
                            priority=int(priority), granted_at_ns=int(granted_at_us) * 1000, voided=bool(voided))
        grants.append((grant, note, int(updated_at_us)))
    return grants


def _stored_grant(store: Store, customer: str, grant_id: str) -> tuple[CreditGrant, str, int] | None:
    found = _grant_rows(store.query(credit_queries.GRANT_BY_ID, {"customer": customer, "grant_id": grant_id}))
    return found[0] if found else None


def _insert_grants(store: Store, rows: list[tuple[CreditGrant, str, int]]) -> None:
    grants = [grant for grant, _, _ in rows]
    table = pa.table({
        "grant_id": pa.array([g.grant_id for g in grants], pa.string()),
        "customer": pa.array([g.customer for g in grants], pa.string()),
        "amount": pa.array([g.amount for g in grants], pa.decimal128(38, AMOUNT_SCALE)),
        "currency": pa.array([g.currency for g in grants], pa.string()),
        "effective_from": pa.array([g.effective_from_ns for g in grants], pa.int64()).cast(pa.timestamp("ns", "UTC")),
        "expires_at": pa.array([g.expires_at_ns for g in grants], pa.int64()).cast(pa.timestamp("ns", "UTC")),
        "priority": pa.array([g.priority for g in grants], pa.int32()),
        "note": pa.array([note for _, note, _ in rows], pa.string()),
        "voided": pa.array([g.voided for g in grants], pa.bool_()),
        "granted_at": pa.array([g.granted_at_ns // 1000 for g in grants], pa.int64()).cast(pa.timestamp("us", "UTC")),
        "updated_at": pa.array([updated for _, _, updated in rows], pa.int64()).cast(pa.timestamp("us", "UTC")),
    })
    assert tuple(table.column_names) == credit_queries.GRANT_COLUMNS
    store.client.insert_arrow("credit_grants", table, settings=dict(INSERT_SETTINGS))

