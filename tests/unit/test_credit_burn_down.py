"""Prepaid credit burn-down: the documented burn order, its boundaries, adjustments and invariants."""

from __future__ import annotations

from decimal import Decimal as D

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from otel_meter.credits.burn_down import CreditEntry, CreditError, CreditGrant, PeriodSettlement, UsageBucket, burn_down
from otel_meter.errors import OtelMeterError

HOUR = 3_600_000_000_000
AS_OF = 1_000 * HOUR


def grant(grant_id: str, amount: str, *, currency: str = "credits", effective: int = 0, expires: int | None = None,
          priority: int = 0, granted_at: int = 0, voided: bool = False, customer: str = "acme") -> CreditGrant:
    return CreditGrant(grant_id=grant_id, customer=customer, amount=D(amount), currency=currency,
                       effective_from_ns=effective, expires_at_ns=expires, priority=priority,
                       granted_at_ns=granted_at, voided=voided)


def bucket(start_ns: int, amount: str, currency: str = "credits") -> UsageBucket:
    return UsageBucket(start_ns=start_ns, currency=currency, amount=D(amount))


def consumed(ledger) -> dict[str, D]:
    return {state.grant.grant_id: state.consumed for state in ledger.grants}


def entries(ledger, *kinds: str) -> list[tuple[int, str, str, D]]:
    return [(e.time_ns, e.grant_id, e.kind, e.amount) for e in ledger.history if not kinds or e.kind in kinds]


# --- burn order -------------------------------------------------------------------------------------------

def test_lower_priority_burns_before_an_earlier_expiry():
    ledger = burn_down([grant("soon", "10", expires=5 * HOUR, priority=1), grant("forever", "10")],
                       [bucket(HOUR, "4")], AS_OF)
    assert consumed(ledger) == {"forever": D(4), "soon": D(0)}


def test_earlier_expiry_burns_before_later_expiry():
    ledger = burn_down([grant("late", "10", expires=9 * HOUR), grant("early", "10", expires=5 * HOUR)],
                       [bucket(HOUR, "4")], AS_OF)
    assert consumed(ledger) == {"early": D(4), "late": D(0)}


def test_never_expiring_grant_burns_last():
    ledger = burn_down([grant("forever", "10"), grant("far", "10", expires=AS_OF * 10)],
                       [bucket(HOUR, "4")], AS_OF)
    assert consumed(ledger) == {"far": D(4), "forever": D(0)}


def test_earlier_effective_date_burns_first_when_priority_and_expiry_tie():
    ledger = burn_down([grant("newer", "10", effective=HOUR), grant("older", "10", effective=0)],
                       [bucket(2 * HOUR, "4")], AS_OF)
    assert consumed(ledger) == {"older": D(4), "newer": D(0)}


def test_earlier_recorded_grant_then_grant_id_break_remaining_ties():
    ledger = burn_down([grant("b", "1", granted_at=5), grant("c", "1", granted_at=1), grant("a", "1", granted_at=5)],
                       [bucket(HOUR, "1"), bucket(2 * HOUR, "1"), bucket(3 * HOUR, "1")], AS_OF)
    assert entries(ledger, "consumed") == [(HOUR, "c", "consumed", D(1)), (2 * HOUR, "a", "consumed", D(1)),
                                           (3 * HOUR, "b", "consumed", D(1))]


def test_a_bucket_is_split_across_two_grants_in_burn_order():
    ledger = burn_down([grant("first", "3.25", priority=0), grant("second", "10", priority=1)],
                       [bucket(HOUR, "5.000000000000000001")], AS_OF)
    assert consumed(ledger) == {"first": D("3.25"), "second": D("1.750000000000000001")}
    assert entries(ledger, "consumed") == [(HOUR, "first", "consumed", D("3.25")),
                                           (HOUR, "second", "consumed", D("1.750000000000000001"))]
    assert ledger.overage == {"credits": D(0)}
    assert [s.status for s in ledger.grants] == ["depleted", "active"]


def test_usage_beyond_every_grant_is_overage():
    ledger = burn_down([grant("only", "10")], [bucket(HOUR, "7"), bucket(2 * HOUR, "7")], AS_OF)
    assert consumed(ledger) == {"only": D(10)}
    assert ledger.overage == {"credits": D(4)}
    assert entries(ledger, "overage") == [(2 * HOUR, "", "overage", D(4))]
    assert ledger.balance("credits") == D(0)


def test_usage_with_no_grant_at_all_is_all_overage():
    ledger = burn_down([], [bucket(HOUR, "2.5", "USD")], AS_OF)
    assert ledger.customer is None
    assert ledger.overage == {"USD": D("2.5")}
    assert ledger.used_fraction("USD") is None


def test_buckets_are_applied_in_time_order_not_input_order():
    ledger = burn_down([grant("soon", "5", expires=3 * HOUR), grant("forever", "100")],
                       [bucket(4 * HOUR, "5"), bucket(HOUR, "5")], AS_OF)
    assert consumed(ledger) == {"soon": D(5), "forever": D(5)}


def test_buckets_at_or_after_as_of_are_ignored():
    ledger = burn_down([grant("g", "10")], [bucket(AS_OF - 1, "1"), bucket(AS_OF, "2"), bucket(AS_OF + 1, "4")],
                       AS_OF)
    assert consumed(ledger) == {"g": D(1)}
    assert ledger.overage == {"credits": D(0)}


# --- eligibility boundaries, to the nanosecond --------------------------------------------------------------

def test_bucket_at_effective_from_exactly_takes_the_grant():
    ledger = burn_down([grant("g", "10", effective=5 * HOUR)], [bucket(5 * HOUR, "1")], AS_OF)
    assert consumed(ledger) == {"g": D(1)}


def test_bucket_one_nanosecond_before_effective_from_does_not_take_the_grant():
    ledger = burn_down([grant("g", "10", effective=5 * HOUR)], [bucket(5 * HOUR - 1, "1")], AS_OF)
    assert consumed(ledger) == {"g": D(0)}
    assert ledger.overage == {"credits": D(1)}


def test_bucket_at_expires_at_exactly_does_not_take_the_grant():
    ledger = burn_down([grant("g", "10", expires=5 * HOUR)], [bucket(5 * HOUR - 1, "1"), bucket(5 * HOUR, "2")],
                       AS_OF)
    assert consumed(ledger) == {"g": D(1)}
    assert ledger.overage == {"credits": D(2)}


def test_grant_expiring_exactly_at_as_of_is_expired():
    ledger = burn_down([grant("g", "10", expires=AS_OF)], [bucket(HOUR, "1")], AS_OF)
    (state,) = ledger.grants
    assert (state.status, state.remaining, state.expired) == ("expired", D(0), D(9))


def test_grant_effective_exactly_at_as_of_is_active_and_after_it_pending():
    ledger = burn_down([grant("now", "10", effective=AS_OF), grant("later", "10", effective=AS_OF + 1)], [], AS_OF)
    assert {s.grant.grant_id: s.status for s in ledger.grants} == {"now": "active", "later": "pending"}
    assert entries(ledger) == [(AS_OF, "now", "granted", D(10))]
    assert ledger.balance("credits") == D(10)


# --- negative buckets (re-rating adjustments) ---------------------------------------------------------------

def test_negative_bucket_reduces_overage_before_restoring_credit():
    ledger = burn_down([grant("g", "10")], [bucket(HOUR, "13"), bucket(2 * HOUR, "-5")], AS_OF)
    assert ledger.overage == {"credits": D(0)}
    assert consumed(ledger) == {"g": D(8)}
    assert entries(ledger, "overage_reduced", "restored") == [(2 * HOUR, "", "overage_reduced", D(3)),
                                                              (2 * HOUR, "g", "restored", D(2))]


def test_negative_bucket_restores_most_recently_consumed_grant_first():
    grants = [grant("a", "5", priority=0), grant("b", "5", priority=1), grant("c", "5", priority=2)]
    usage = [bucket(HOUR, "4"), bucket(2 * HOUR, "4"), bucket(3 * HOUR, "3"), bucket(4 * HOUR, "-6")]
    ledger = burn_down(grants, usage, AS_OF)
    # consumed: a 4, then a 1 + b 3, then b 2 + c 1; the refund unwinds c 1, b 2, b 3
    assert entries(ledger, "restored") == [(4 * HOUR, "c", "restored", D(1)), (4 * HOUR, "b", "restored", D(5))]
    assert consumed(ledger) == {"a": D(5), "b": D(0), "c": D(0)}
    assert ledger.balance("credits") == D(10)


def test_negative_bucket_does_not_restore_an_expired_grant_and_the_rest_is_unapplied():
    grants = [grant("soon", "5", expires=2 * HOUR), grant("forever", "5", priority=1)]
    usage = [bucket(HOUR, "7"), bucket(3 * HOUR, "-4")]
    ledger = burn_down(grants, usage, AS_OF)
    assert entries(ledger, "restored", "adjustment_unapplied") == [
        (3 * HOUR, "forever", "restored", D(2)), (3 * HOUR, "", "adjustment_unapplied", D(2))]
    states = {s.grant.grant_id: s for s in ledger.grants}
    assert (states["soon"].consumed, states["soon"].expired, states["soon"].status) == (D(5), D(0), "expired")
    assert (states["forever"].consumed, states["forever"].remaining) == (D(0), D(5))


def test_negative_bucket_with_nothing_to_undo_is_unapplied():
    ledger = burn_down([grant("g", "5")], [bucket(HOUR, "-1.5")], AS_OF)
    assert entries(ledger) == [(0, "g", "granted", D(5)), (HOUR, "", "adjustment_unapplied", D("1.5"))]
    assert ledger.overage == {"credits": D(0)}
    assert ledger.balance("credits") == D(5)


# --- currencies, voids, expiry, statuses, history -------------------------------------------------------------

def test_currencies_are_kept_apart():
    grants = [grant("cr", "10", currency="credits"), grant("usd", "10", currency="USD")]
    ledger = burn_down(grants, [bucket(HOUR, "3", "USD"), bucket(HOUR, "12", "credits"), bucket(HOUR, "1", "EUR")],
                       AS_OF)
    assert consumed(ledger) == {"cr": D(10), "usd": D(3)}
    assert ledger.overage == {"credits": D(2), "USD": D(0), "EUR": D(1)}
    assert (ledger.balance("credits"), ledger.balance("USD"), ledger.balance("EUR")) == (D(0), D(7), D(0))


def test_voided_grant_is_ignored_entirely():
    ledger = burn_down([grant("void", "100", voided=True, expires=HOUR), grant("g", "1", priority=5)],
                       [bucket(0, "3")], AS_OF)
    states = {s.grant.grant_id: s for s in ledger.grants}
    assert (states["void"].status, states["void"].consumed, states["void"].remaining) == ("voided", D(0), D(0))
    assert all(e.grant_id != "void" for e in ledger.history)
    assert ledger.overage == {"credits": D(2)}
    assert ledger.granted("credits") == D(1)


def test_expiry_entries_are_in_time_order_at_the_expiry_time():
    grants = [grant("a", "10", expires=3 * HOUR), grant("b", "10", effective=2 * HOUR, expires=5 * HOUR),
              grant("used_up", "1", priority=-1, expires=2 * HOUR)]
    ledger = burn_down(grants, [bucket(HOUR, "4"), bucket(4 * HOUR, "1")], AS_OF)
    assert ledger.history == (
        CreditEntry(0, "a", "granted", D(10), "credits", D(10)),
        CreditEntry(0, "used_up", "granted", D(1), "credits", D(11)),
        CreditEntry(HOUR, "used_up", "consumed", D(1), "credits", D(10)),
        CreditEntry(HOUR, "a", "consumed", D(3), "credits", D(7)),
        # used_up expires at 2h with nothing left: no entry
        CreditEntry(2 * HOUR, "b", "granted", D(10), "credits", D(17)),
        CreditEntry(3 * HOUR, "a", "expired", D(7), "credits", D(10)),
        CreditEntry(4 * HOUR, "b", "consumed", D(1), "credits", D(9)),
        CreditEntry(5 * HOUR, "b", "expired", D(9), "credits", D(0)),
    )
    assert all(s.status == "expired" and s.remaining == 0 for s in ledger.grants)
    assert ledger.balance("credits") == D(0)


def test_expiry_at_the_same_instant_comes_before_a_grant_becoming_effective():
    ledger = burn_down([grant("old", "4", expires=2 * HOUR), grant("new", "6", effective=2 * HOUR)], [], AS_OF)
    assert [(e.time_ns, e.kind, e.balance_after) for e in ledger.history] == [
        (0, "granted", D(4)), (2 * HOUR, "expired", D(0)), (2 * HOUR, "granted", D(6))]


def test_statuses_and_ledger_totals():
    grants = [grant("active", "10"), grant("depleted", "2", priority=-1),
              grant("expired", "5", expires=HOUR, priority=1), grant("pending", "7", effective=AS_OF + 1),
              grant("voided", "9", voided=True)]
    ledger = burn_down(grants, [bucket(0, "3")], AS_OF)
    states = {s.grant.grant_id: s for s in ledger.grants}
    assert {gid: s.status for gid, s in states.items()} == {gid: gid for gid in states}
    assert (states["pending"].remaining, states["expired"].expired, states["active"].consumed) == (D(7), D(5), D(1))
    assert ledger.balance("credits") == D(9)
    assert ledger.granted("credits") == D(17)
    assert ledger.used_fraction("credits") == D(3) / D(12)  # (2 + 1) / (2 + 10): expired and pending left out
    assert ledger.customer == "acme"


def test_used_fraction_is_none_without_grants_in_effect():
    ledger = burn_down([grant("pending", "7", effective=AS_OF + 1)], [], AS_OF)
    assert ledger.used_fraction("credits") is None
    assert ledger.granted("credits") == D(0)


def test_used_fraction_of_a_third_is_rounded_to_28_digits():
    ledger = burn_down([grant("g", "3")], [bucket(0, "1")], AS_OF)
    assert ledger.used_fraction("credits") == D("0.3333333333333333333333333333")


# --- validation -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("amount", [D(0), D(-1), D("NaN"), D("Infinity"), 1.5, 2])
def test_grant_amount_must_be_a_positive_finite_decimal(amount):
    with pytest.raises(ValueError, match=r"credit grant 'g1': amount"):
        CreditGrant("g1", "acme", amount, "credits", 0, None)


@pytest.mark.parametrize("expires", [10, 9])
def test_grant_expiry_must_be_after_its_effective_time(expires):
    with pytest.raises(CreditError, match=r"credit grant 'g1': expires_at_ns \(\d+\) must be after effective_from_ns"):
        CreditGrant("g1", "acme", D(1), "credits", 10, expires)


def test_credit_errors_belong_to_the_service_hierarchy():
    assert issubclass(CreditError, OtelMeterError) and issubclass(CreditError, ValueError)


def test_bucket_amount_must_be_a_finite_decimal():
    with pytest.raises(CreditError, match=r"usage bucket at 7 \(USD\): amount"):
        UsageBucket(7, "USD", 0.1)


def test_grant_ids_must_be_unique():
    with pytest.raises(CreditError, match=r"'g': grant_id appears twice"):
        burn_down([grant("g", "1"), grant("g", "2")], [], AS_OF)


def test_grants_of_two_customers_are_refused():
    with pytest.raises(CreditError, match=r"'b': customer is 'other'"):
        burn_down([grant("a", "1"), grant("b", "2", customer="other")], [], AS_OF)


# --- properties ---------------------------------------------------------------------------------------------

CURRENCIES = ("credits", "USD")
money = st.integers(1, 10**8).map(lambda n: D(n).scaleb(-4))
times = st.integers(0, 40)


@st.composite
def grant_lists(draw):
    grants = []
    for index in range(draw(st.integers(0, 6))):
        effective = draw(times)
        expires = draw(st.none() | st.integers(effective + 1, 45))
        grants.append(CreditGrant(
            grant_id=f"g{index}", customer="acme", amount=draw(money), currency=draw(st.sampled_from(CURRENCIES)),
            effective_from_ns=effective, expires_at_ns=expires, priority=draw(st.integers(0, 2)),
            granted_at_ns=draw(st.integers(0, 3)), voided=draw(st.sampled_from([False, False, False, True]))))
    return grants


def bucket_lists(signed: bool):
    amount = (money | money.map(lambda m: -m) | st.just(D(0))) if signed else (money | st.just(D(0)))
    return st.lists(st.builds(UsageBucket, start_ns=times, currency=st.sampled_from(CURRENCIES), amount=amount),
                    max_size=12)


def total(values) -> D:
    return sum(values, D(0))


@settings(max_examples=300)
@given(grants=grant_lists(), usage=bucket_lists(signed=False), as_of=st.integers(0, 50))
def test_non_negative_usage_is_conserved_as_consumption_plus_overage(grants, usage, as_of):
    ledger = burn_down(grants, usage, as_of)
    applied = total(b.amount for b in usage if b.start_ns < as_of)
    assert total(s.consumed for s in ledger.grants) + total(ledger.overage.values()) == applied


@settings(max_examples=300)
@given(grants=grant_lists(), usage=bucket_lists(signed=True), as_of=st.integers(0, 50))
def test_signed_usage_is_conserved_counting_unapplied_adjustments(grants, usage, as_of):
    ledger = burn_down(grants, usage, as_of)
    applied = total(b.amount for b in usage if b.start_ns < as_of)
    unapplied = total(e.amount for e in ledger.history if e.kind == "adjustment_unapplied")
    assert total(s.consumed for s in ledger.grants) + total(ledger.overage.values()) == applied + unapplied
    assert all(v >= 0 for v in ledger.overage.values())


@settings(max_examples=300)
@given(grants=grant_lists(), usage=bucket_lists(signed=True), as_of=st.integers(0, 50))
def test_every_grant_is_consumed_within_its_amount_and_accounts_for_it(grants, usage, as_of):
    ledger = burn_down(grants, usage, as_of)
    for state in ledger.grants:
        assert D(0) <= state.consumed <= state.grant.amount
        assert state.remaining >= 0 and state.expired >= 0
        if state.status in ("active", "depleted", "expired"):
            assert state.consumed + state.remaining + state.expired == state.grant.amount
        if state.status == "expired":
            assert state.remaining == 0


@settings(max_examples=200)
@given(grants=grant_lists(), usage=bucket_lists(signed=True), as_of=st.integers(0, 50), data=st.data())
def test_result_is_independent_of_the_input_order_of_grants(grants, usage, as_of, data):
    shuffled = data.draw(st.permutations(grants))
    assert burn_down(shuffled, usage, as_of) == burn_down(grants, usage, as_of)


@settings(max_examples=300)
@given(grants=grant_lists(), usage=bucket_lists(signed=True), as_of=st.integers(0, 50))
def test_balance_is_the_remaining_of_active_grants_and_the_last_balance_after(grants, usage, as_of):
    ledger = burn_down(grants, usage, as_of)
    for currency in CURRENCIES:
        assert ledger.balance(currency) == total(s.remaining for s in ledger.grants
                                                 if s.status == "active" and s.grant.currency == currency)
        entries_in_currency = [e for e in ledger.history if e.currency == currency]
        if entries_in_currency:  # nothing changes the balance without an entry
            assert entries_in_currency[-1].balance_after == ledger.balance(currency)
        else:
            assert ledger.balance(currency) == 0
    times_in_history = [e.time_ns for e in ledger.history]
    assert times_in_history == sorted(times_in_history)
    assert all(e.amount > 0 and e.time_ns <= as_of for e in ledger.history)


# --- a period's statement below its real-time usage -------------------------------------------------------

PERIOD_START, PERIOD_END = 10 * HOUR, 40 * HOUR


def settlement(amount: str, *, currency: str = "credits", time_ns: int = PERIOD_END - 1,
               statement_total: str = "0") -> PeriodSettlement:
    return PeriodSettlement(period="2026-11", period_start_ns=PERIOD_START, time_ns=time_ns, currency=currency,
                            amount=D(amount), statement_total=D(statement_total))


def net_consumed_in_period(ledger) -> D:
    signs = {"consumed": 1, "restored": -1, "returned": -1}
    return total(signs[e.kind] * e.amount for e in ledger.history
                 if e.kind in signs and PERIOD_START <= e.time_ns < PERIOD_END)


def test_credits_burned_above_the_statement_return_to_the_grant_with_an_entry_that_says_why():
    usage = [bucket(PERIOD_START + hour * HOUR, "2") for hour in range(10)]
    ledger = burn_down([grant("g", "20")], usage, AS_OF, [settlement("-10", statement_total="10")])
    assert consumed(ledger) == {"g": D(10)} and ledger.balance("credits") == D(10)
    (returned,) = [e for e in ledger.history if e.kind == "returned"]
    assert returned == CreditEntry(PERIOD_END - 1, "g", "returned", D(10), "credits", D(10), reason=(
        "period 2026-11: the statement's total 10 credits is 10 below the 20 credits burned in real time "
        "(allowances, tiers or packages); the difference returns to the grants that paid for the period"))
    assert net_consumed_in_period(ledger) == D(10)


def test_a_return_first_lowers_the_periods_own_overage_not_an_earlier_periods():
    before = [bucket(PERIOD_START - HOUR, "100")]  # no grant in effect yet: overage of the month before
    usage = before + [bucket(PERIOD_START + HOUR, "30")]
    ledger = burn_down([grant("g", "20", effective=PERIOD_START)], usage, AS_OF,
                       [settlement("-15", statement_total="15")])
    # 30 burned: 20 from the grant, 10 overage; the statement is 15: 10 of overage, then 5 back to the grant.
    assert entries(ledger, "overage_reduced", "returned") == [(PERIOD_END - 1, "", "overage_reduced", D(10)),
                                                              (PERIOD_END - 1, "g", "returned", D(5))]
    assert consumed(ledger) == {"g": D(15)} and ledger.overage == {"credits": D(100)}
    assert net_consumed_in_period(ledger) == D(15)


def test_credits_returned_to_a_grant_that_expired_in_the_period_expire_again():
    usage = [bucket(PERIOD_START + HOUR, "5"), bucket(PERIOD_START + 20 * HOUR, "5")]
    grants = [grant("short", "5", expires=PERIOD_START + 10 * HOUR), grant("long", "100", priority=1)]
    ledger = burn_down(grants, usage, AS_OF, [settlement("-8", statement_total="2")])
    # most recently burned first: 5 back to long, then 3 to short, which expired: they expire again.
    assert entries(ledger, "returned", "expired")[-3:] == [(PERIOD_END - 1, "long", "returned", D(5)),
                                                           (PERIOD_END - 1, "short", "returned", D(3)),
                                                           (PERIOD_END - 1, "short", "expired", D(3))]
    assert consumed(ledger) == {"short": D(2), "long": D(0)}
    assert net_consumed_in_period(ledger) == D(2)


def test_a_settlement_at_or_after_as_of_is_not_applied_yet():
    ledger = burn_down([grant("g", "20")], [bucket(PERIOD_START, "10")], PERIOD_END - 1,
                       [settlement("-10", statement_total="0")])
    assert consumed(ledger) == {"g": D(10)}


def test_a_settlement_must_lower_the_burn():
    with pytest.raises(CreditError, match=r"settlement of period 2026-11 \(credits\): amount must be a negative"):
        settlement("1")


period_times = st.integers(0, 39).map(lambda hour: hour * HOUR)


@settings(max_examples=300, deadline=None)
@given(grants=st.lists(st.builds(
           lambda index, amount, effective, expires, priority: grant(
               f"g{index}", str(amount), effective=effective, expires=None if expires is None else effective + expires,
               priority=priority),
           st.integers(0, 10**6), money, period_times, st.none() | st.integers(1, 50).map(lambda h: h * HOUR),
           st.integers(0, 2)), max_size=4, unique_by=lambda g: g.grant_id),
       usage=st.lists(st.builds(UsageBucket, start_ns=period_times, currency=st.just("credits"),
                                amount=money | st.just(D(0))), max_size=10),
       share=st.fractions(0, 1))
def test_credits_burned_for_a_period_equal_what_its_statement_applies(grants, usage, share):
    """The invoice applies min(credits burned in the period, the statement's total): after the
    period's settlement, what the ledger says was burned in the period is exactly that."""
    realtime = total(b.amount for b in usage if PERIOD_START <= b.start_ns < PERIOD_END)
    statement_total = (D(share.numerator) * realtime / D(share.denominator)).quantize(D("0.0001"), rounding="ROUND_DOWN")
    before = burn_down(grants, usage, AS_OF)
    settlements = [settlement(str(statement_total - realtime), statement_total=str(statement_total))] \
        if statement_total < realtime else []
    after = burn_down(grants, usage, AS_OF, settlements)
    applied = min(net_consumed_in_period(before), statement_total)
    assert net_consumed_in_period(after) == applied
    returned = total(e.amount for e in after.history if e.kind == "returned")
    assert returned == net_consumed_in_period(before) - applied
    for state in after.grants:
        assert D(0) <= state.consumed <= state.grant.amount
        assert state.consumed + state.remaining + state.expired == state.grant.amount or state.status == "pending"
