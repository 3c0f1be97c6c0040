"""Prepaid credit grants burned down by rated usage, deterministically.

A customer's balance and its history are a pure function of (grants, usage, as_of),
so they can be recomputed at any time and every cent explained. Amounts are exact
``Decimal`` (sums that would need more than 76 significant digits raise
``decimal.Inexact`` rather than round); times are int nanoseconds since the Unix epoch, UTC.

Burn order (the public contract):

1. Buckets are applied in ``start_ns`` order (stable for equal times: currency, then
   input order). Buckets with ``start_ns >= as_of_ns`` are ignored.
2. A grant can take usage from a bucket when it has the same currency, is not voided,
   ``effective_from_ns <= bucket.start_ns`` and (``expires_at_ns`` is None or
   ``bucket.start_ns < expires_at_ns``).
3. Among eligible grants with a remaining balance, burn order is: priority ascending,
   then earliest expiry (never-expiring last), then earliest ``effective_from_ns``, then
   earliest ``granted_at_ns``, then ``grant_id``. A bucket may span several grants; what
   no grant covers is overage (billed normally).
4. A negative bucket first reduces the overage accumulated so far in that currency (not
   below 0), then restores credit to grants it was consumed from, most recently consumed
   first, but only to grants still eligible at that bucket's time (an expired grant is not
   restored); what remains of the negative amount is lost (history kind
   ``adjustment_unapplied``).
5. At ``as_of_ns``, a grant whose expiry ``<= as_of_ns`` has its unused remainder expired
   (history entry ``expired`` at its expiry time, in time order).
6. A **period settlement** (:class:`PeriodSettlement`) returns what real time burned above a
   billing period's statement (allowances, tiers and packages lower a period below its
   real-time amount), so the credits burned for a period equal what its statement applies.
   Applied at its ``time_ns`` (after the buckets of that instant), the amount returned first
   lowers the overage of that period (overage entries since ``period_start_ns``, not below 0),
   then goes back to the grants that paid for usage since ``period_start_ns``, most recently
   consumed first (history kind ``returned``, with the reason). A grant that expired since
   takes its credits back and expires them again at once (``returned`` then ``expired``), so
   it never burned more than the statement applied. What is left (only if the statement's
   total is below 0) is ``adjustment_unapplied``.

History is in time order. At one instant, expiries come first, then grants becoming
effective (``granted``, emitted when ``effective_from_ns <= as_of_ns``), then buckets, then
settlements, which matches rule 2's boundaries. Entries of amount zero are not recorded (a grant
used up before its expiry expires with no ``expired`` entry). ``balance_after`` is the
sum of ``remaining`` over the grants of the entry's currency in effect at the entry's
time: not voided, ``effective_from_ns <= time < expires_at_ns``, after the entry applies.

Status at ``as_of_ns``, first match wins: ``voided``; ``pending`` (effective after as_of,
its full amount remaining but not in the balance); ``expired`` (expiry <= as_of, even if
nothing was left); ``depleted`` (nothing remaining); else ``active``. All grants passed to
one call belong to one customer and have distinct ids; an invalid grant or bucket raises
``CreditError`` (a ``ValueError``) naming it and the field.
"""

from __future__ import annotations

import decimal
import functools
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from otel_meter.errors import OtelMeterError

# Amounts add and subtract exactly or raise (the precision of money in usage.py); a used fraction is a
# ratio, not an amount, so it is rounded to 28 significant digits.
EXACT = decimal.Context(prec=76, traps=[decimal.Inexact, decimal.Overflow, decimal.InvalidOperation])
FRACTION = decimal.Context(prec=28, rounding=decimal.ROUND_HALF_EVEN)
ZERO = Decimal(0)


class CreditError(OtelMeterError, ValueError):
    """A credit grant or usage bucket is invalid; the message names it and the field."""


@dataclass(frozen=True)
class CreditGrant:
    grant_id: str
    customer: str
    amount: Decimal            # > 0
    currency: str              # "credits" or an ISO 4217 code; burns only usage of the same currency
    effective_from_ns: int
    expires_at_ns: int | None  # None: never expires; else > effective_from_ns
    priority: int = 0          # lower burns first
    granted_at_ns: int = 0     # when it was recorded (a tie-breaker)
    voided: bool = False       # a voided grant is ignored entirely

    def __post_init__(self) -> None:
        where = f"credit grant {self.grant_id!r}"
        if not isinstance(self.amount, Decimal) or not self.amount.is_finite() or self.amount <= 0:
            raise CreditError(f"{where}: amount must be a positive, finite Decimal, got {self.amount!r}")
        if not self.currency:
            raise CreditError(f"{where}: currency is empty; use \"credits\" or an ISO 4217 code")
        if self.expires_at_ns is not None and self.expires_at_ns <= self.effective_from_ns:
            raise CreditError(f"{where}: expires_at_ns ({self.expires_at_ns}) must be after effective_from_ns "
                              f"({self.effective_from_ns}); use None for a grant that never expires")


@dataclass(frozen=True)
class UsageBucket:
    start_ns: int              # applied bucket by bucket in time order (hourly rollups)
    currency: str
    amount: Decimal            # rated amount; negative for re-rating adjustments that lower a bill

    def __post_init__(self) -> None:
        if not isinstance(self.amount, Decimal) or not self.amount.is_finite():
            raise CreditError(f"usage bucket at {self.start_ns} ({self.currency}): amount must be a finite "
                              f"Decimal, got {self.amount!r}")


@dataclass(frozen=True)
class PeriodSettlement:
    """A billing period whose statement total is below its real-time amount (rule 6)."""

    period: str                # "2026-11", for the reason
    period_start_ns: int       # usage burned from here on paid for the period
    time_ns: int               # when it applies: the period's last nanosecond, or just before as_of
    currency: str
    amount: Decimal            # statement total - real-time total: < 0
    statement_total: Decimal   # for the reason

    def __post_init__(self) -> None:
        if not isinstance(self.amount, Decimal) or not self.amount.is_finite() or self.amount >= 0:
            raise CreditError(f"settlement of period {self.period} ({self.currency}): amount must be a negative, "
                              f"finite Decimal (the statement's total less the real-time total), got {self.amount!r}")

    @property
    def reason(self) -> str:
        realtime = EXACT.subtract(self.statement_total, self.amount)
        return (f"period {self.period}: the statement's total {_plain(self.statement_total)} {self.currency} is "
                f"{_plain(-self.amount)} below the {_plain(realtime)} {self.currency} burned in real time "
                f"(allowances, tiers or packages); the difference returns to the grants that paid for the period")


@dataclass(frozen=True)
class GrantState:
    grant: CreditGrant
    consumed: Decimal          # net of restorations
    remaining: Decimal         # 0 once expired and for a voided grant; the full amount while pending
    expired: Decimal           # unused amount lost at expiry
    status: str                # "pending", "active", "depleted", "expired" or "voided"


@dataclass(frozen=True)
class CreditEntry:
    time_ns: int
    grant_id: str              # "" for overage entries
    kind: str                  # granted, consumed, restored, returned, expired, overage, overage_reduced,
    #                            adjustment_unapplied
    amount: Decimal            # positive magnitude
    currency: str
    balance_after: Decimal     # see the module docstring
    reason: str = ""           # why, for entries of a period settlement


@dataclass(frozen=True)
class CreditLedger:
    customer: str | None       # None when there are no grants
    grants: tuple[GrantState, ...]   # in burn order
    history: tuple[CreditEntry, ...]
    overage: dict[str, Decimal] = field(hash=False)  # per currency of applied usage

    def balance(self, currency: str) -> Decimal:
        """Remaining of the active grants at as_of."""
        return _total(s.remaining for s in self._states(currency, "active"))

    def granted(self, currency: str) -> Decimal:
        """Total of the non-voided grants in effect by as_of (active, depleted or expired)."""
        return _total(s.grant.amount for s in self._states(currency, "active", "depleted", "expired"))

    def used_fraction(self, currency: str) -> Decimal | None:
        """Consumed / amount over the grants in effect and not expired at as_of; None when there are none."""
        states = self._states(currency, "active", "depleted")
        if not states:
            return None
        return FRACTION.divide(_total(s.consumed for s in states), _total(s.grant.amount for s in states))

    def _states(self, currency: str, *statuses: str) -> list[GrantState]:
        return [s for s in self.grants if s.grant.currency == currency and s.status in statuses]


def burn_down(grants: Iterable[CreditGrant], usage: Iterable[UsageBucket], as_of_ns: int,
              settlements: Iterable[PeriodSettlement] = ()) -> CreditLedger:
    """Apply usage and period settlements before ``as_of_ns`` to the grants in burn order (see the
    module docstring)."""
    grants = sorted(grants, key=_burn_key)
    _check_one_customer(grants)
    # (time, 0 expiry | 1 effective | 2 bucket, tie-breaker, item): rule 1's order and rule 2's boundaries
    events: list[tuple[Any, ...]] = []
    for g in grants:
        if g.voided:
            continue
        if g.effective_from_ns <= as_of_ns:
            events.append((g.effective_from_ns, 1, g.grant_id, g))
        if g.expires_at_ns is not None and g.expires_at_ns <= as_of_ns:
            events.append((g.expires_at_ns, 0, g.grant_id, g))
    for index, bucket in enumerate(usage):
        if bucket.start_ns < as_of_ns:
            events.append((bucket.start_ns, 2, (bucket.currency, index), bucket))
    for index, settlement in enumerate(settlements):
        if settlement.time_ns < as_of_ns:
            events.append((settlement.time_ns, 3, (settlement.currency, index), settlement))
    events.sort(key=lambda event: event[:3])

    burner = _Burner(grants)
    with decimal.localcontext(EXACT):
        for time_ns, kind, _, item in events:
            if kind == 0:
                burner.expire(time_ns, item)
            elif kind == 1:
                burner.take_effect(time_ns, item)
            elif kind == 3:
                burner.settle(item)
            elif item.amount >= 0:
                burner.consume(item)
            else:
                burner.refund(item)
    states = tuple(_state(g, burner.remaining[g.grant_id], burner.expired[g.grant_id], as_of_ns) for g in grants)
    return CreditLedger(customer=grants[0].customer if grants else None, grants=states,
                        history=tuple(burner.history), overage=burner.overage)


class _Burner:
    """The running state of one burn-down; each method applies one event in time order."""

    def __init__(self, grants: list[CreditGrant]) -> None:
        self.remaining = {g.grant_id: g.amount for g in grants}
        self.expired = {g.grant_id: ZERO for g in grants}
        self.in_effect: list[CreditGrant] = []       # effective and not yet expired, in burn order
        # currency -> [[grant_id, amount, time_ns, sequence], ...], oldest first: what grants in effect gave
        self.consumptions: dict[str, list[list[Any]]] = {}
        self.sequence = 0
        self.expired_consumptions: dict[str, list[list[Any]]] = {}  # the same, of grants that expired since (rule 6)
        self.overage: dict[str, Decimal] = {}
        self.history: list[CreditEntry] = []

    def take_effect(self, time_ns: int, grant: CreditGrant) -> None:
        self.in_effect = sorted([*self.in_effect, grant], key=_burn_key)
        self._record(time_ns, grant.grant_id, "granted", grant.amount, grant.currency)

    def expire(self, time_ns: int, grant: CreditGrant) -> None:
        gid = grant.grant_id
        self.expired[gid], self.remaining[gid] = self.remaining[gid], ZERO
        self.in_effect.remove(grant)
        stack = self.consumptions.get(grant.currency, [])
        self.consumptions[grant.currency] = [entry for entry in stack if entry[0] != gid]  # never restored (rule 4)
        self.expired_consumptions.setdefault(grant.currency, []).extend(entry for entry in stack if entry[0] == gid)
        self._record(time_ns, gid, "expired", self.expired[gid], grant.currency)

    def consume(self, bucket: UsageBucket) -> None:
        need, currency = bucket.amount, bucket.currency
        stack = self.consumptions.setdefault(currency, [])
        for g in self.in_effect:
            take = min(need, self.remaining[g.grant_id]) if g.currency == currency else ZERO
            if not take:
                continue
            self.remaining[g.grant_id] -= take
            need -= take
            if stack and stack[-1][0] == g.grant_id and stack[-1][2] == bucket.start_ns:
                stack[-1][1] += take
            else:
                self.sequence += 1
                stack.append([g.grant_id, take, bucket.start_ns, self.sequence])
            self._record(bucket.start_ns, g.grant_id, "consumed", take, currency)
        self.overage[currency] = self.overage.get(currency, ZERO) + need
        self._record(bucket.start_ns, "", "overage", need, currency)

    def refund(self, bucket: UsageBucket) -> None:
        credit, currency = -bucket.amount, bucket.currency
        reduced = min(credit, self.overage.get(currency, ZERO))
        self.overage[currency] = self.overage.get(currency, ZERO) - reduced
        credit -= reduced
        self._record(bucket.start_ns, "", "overage_reduced", reduced, currency)
        stack = self.consumptions.get(currency, [])
        restored: list[list[Any]] = []  # [grant_id, amount]: one entry per run of the same grant
        for entry in reversed(stack):  # most recent first; only grants still in effect are on the stack
            back = min(credit, entry[1])
            if not back:
                break
            entry[1] -= back
            self.remaining[entry[0]] += back
            credit -= back
            if restored and restored[-1][0] == entry[0]:
                restored[-1][1] += back
            else:
                restored.append([entry[0], back])
        for grant_id, back in restored:
            self._record(bucket.start_ns, grant_id, "restored", back, currency)
        self.consumptions[currency] = [entry for entry in stack if entry[1]]
        self._record(bucket.start_ns, "", "adjustment_unapplied", credit, currency)

    def settle(self, settlement: PeriodSettlement) -> None:
        """Rule 6: give back what real time burned above the period's statement."""
        credit, currency, time_ns, reason = -settlement.amount, settlement.currency, settlement.time_ns, \
            settlement.reason
        period_overage = _total((e.amount if e.kind == "overage" else -e.amount) for e in self.history
                                if e.currency == currency and e.time_ns >= settlement.period_start_ns
                                and e.kind in ("overage", "overage_reduced"))
        reduced = min(credit, max(ZERO, min(period_overage, self.overage.get(currency, ZERO))))
        self.overage[currency] = self.overage.get(currency, ZERO) - reduced
        credit -= reduced
        self._record(time_ns, "", "overage_reduced", reduced, currency, reason)
        live = self.consumptions.get(currency, [])
        gone = self.expired_consumptions.get(currency, [])
        expired_ids = {id(entry) for entry in gone}
        paid = sorted((entry for entry in live + gone if entry[2] >= settlement.period_start_ns and entry[1]),
                      key=lambda entry: entry[3], reverse=True)  # most recently consumed first
        returned: list[list[Any]] = []  # [grant_id, amount, expired]: one entry per run of the same grant
        for entry in paid:
            back = min(credit, entry[1])
            if not back:
                break
            entry[1] -= back
            credit -= back
            expired = id(entry) in expired_ids
            if returned and returned[-1][0] == entry[0] and returned[-1][2] == expired:
                returned[-1][1] += back
            else:
                returned.append([entry[0], back, expired])
        for grant_id, back, expired in returned:
            if expired:  # the grant has expired: what comes back expires again
                self.expired[grant_id] += back
                self._record(time_ns, grant_id, "returned", back, currency, reason)
                self._record(time_ns, grant_id, "expired", back, currency, reason)
            else:
                self.remaining[grant_id] += back
                self._record(time_ns, grant_id, "returned", back, currency, reason)
        self.consumptions[currency] = [entry for entry in live if entry[1]]
        self.expired_consumptions[currency] = [entry for entry in gone if entry[1]]
        self._record(time_ns, "", "adjustment_unapplied", credit, currency, reason)

    def _record(self, time_ns: int, grant_id: str, kind: str, amount: Decimal, currency: str,
                reason: str = "") -> None:
        if amount:
            balance = _total(self.remaining[g.grant_id] for g in self.in_effect if g.currency == currency)
            self.history.append(CreditEntry(time_ns, grant_id, kind, amount, currency, balance, reason))


def _plain(value: Decimal) -> str:
    text = format(value, "f")
    return (text.rstrip("0").rstrip(".") if "." in text else text) or "0"


def _burn_key(grant: CreditGrant) -> tuple[Any, ...]:
    expiry = grant.expires_at_ns
    return grant.priority, expiry is None, expiry or 0, grant.effective_from_ns, grant.granted_at_ns, grant.grant_id


def _state(grant: CreditGrant, remaining: Decimal, expired: Decimal, as_of_ns: int) -> GrantState:
    if grant.voided:
        return GrantState(grant, ZERO, ZERO, ZERO, "voided")
    if grant.effective_from_ns > as_of_ns:
        status = "pending"
    elif grant.expires_at_ns is not None and grant.expires_at_ns <= as_of_ns:
        status = "expired"
    else:
        status = "active" if remaining else "depleted"
    consumed = EXACT.subtract(EXACT.subtract(grant.amount, remaining), expired)
    return GrantState(grant, consumed, remaining, expired, status)


def _check_one_customer(grants: list[CreditGrant]) -> None:
    seen: set[str] = set()
    for g in grants:
        if g.grant_id in seen:
            raise CreditError(f"credit grant {g.grant_id!r}: grant_id appears twice; grant ids must be unique")
        if g.customer != grants[0].customer:
            raise CreditError(f"credit grant {g.grant_id!r}: customer is {g.customer!r} but grant "
                              f"{grants[0].grant_id!r} is for {grants[0].customer!r}; burn one customer at a time")
        seen.add(g.grant_id)


def _total(values: Iterable[Decimal]) -> Decimal:
    return functools.reduce(EXACT.add, values, ZERO)
