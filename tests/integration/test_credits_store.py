"""Credit grants in a real embedded store (chDB, in a child process: see tests/chdb_worker.py), the
hourly usage that burns them, the ledger, and the checks on grants before they are stored."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timezone
from decimal import Decimal as D
from typing import Iterator

import pytest

from otel_meter.credits import credit_store
from otel_meter.credits.burn_down import CreditError, CreditGrant, UsageBucket
from otel_meter.credits.credit_store import DuplicateGrantError, UnknownGrantError, check_grant, parse_grant
from otel_meter.errors import OtelMeterError
from tests.chdb_worker import ChdbWorker

HOUR = 3_600 * 10**9
NOV = int(datetime(2026, 11, 1, tzinfo=timezone.utc).timestamp()) * 10**9


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChdbWorker]:
    with ChdbWorker(tmp_path_factory.mktemp("credits") / "data") as worker:
        yield worker


def grant(grant_id: str, customer: str, amount: str, *, currency: str = "credits", effective: int = NOV,
          expires: int | None = None, priority: int = 0) -> CreditGrant:
    return CreditGrant(grant_id=grant_id, customer=customer, amount=D(amount), currency=currency,
                       effective_from_ns=effective, expires_at_ns=expires, priority=priority)


def insert_hourly(store, rows: list[tuple[int, str, str, str, str]]) -> None:
    """One insert (one part) of usage_hourly rows: (hour start ns, customer, meter, currency, amount)."""
    store.client.insert("usage_hourly", [[start // 10**9, customer, meter, currency, currency != "", D(amount)]
                                         for start, customer, meter, currency, amount in rows],
                        column_names=["hour", "customer", "meter", "currency", "priced", "amount"],
                        settings={"async_insert": 0})


def grant_rows(store, customer: str) -> int:
    return store.query("SELECT count() FROM credit_grants WHERE customer = {c:String}", {"c": customer})[0][0]


# --- grants in the store ------------------------------------------------------------------------------

def test_an_added_grant_lists_back_with_its_exact_amount_and_nanosecond_times(store: ChdbWorker) -> None:
    added = store.call(credit_store.add_grant, grant("g-1", "exact", "100.123456789012345678", currency="USD",
                                                      effective=NOV + 123_456_789, expires=NOV + 30 * 24 * HOUR + 1,
                                                      priority=-2), "welcome credits", now_ns=NOV + 5_000_999)
    assert added.granted_at_ns == NOV + 5_000_000  # stored to the microsecond
    assert store.call(credit_store.list_grants, "exact") == [added]
    listed = store.call(credit_store.list_grants, "exact")[0]
    assert listed.amount == D("100.123456789012345678")
    assert (listed.effective_from_ns, listed.expires_at_ns, listed.priority) == (NOV + 123_456_789,
                                                                                 NOV + 30 * 24 * HOUR + 1, -2)


def test_a_grant_without_an_id_gets_a_generated_one(store: ChdbWorker) -> None:
    first = store.call(credit_store.add_grant, grant("", "generated", "5"))
    second = store.call(credit_store.add_grant, grant("", "generated", "5"))
    assert len(first.grant_id) == 32 and first.grant_id != second.grant_id
    assert {g.grant_id for g in store.call(credit_store.list_grants, "generated")} == {first.grant_id,
                                                                                       second.grant_id}


def test_adding_a_grant_id_the_customer_already_has_is_refused_and_changes_nothing(store: ChdbWorker) -> None:
    store.call(credit_store.add_grant, grant("g-1", "duplicate", "10"))
    with pytest.raises(DuplicateGrantError, match="credit grant 'g-1' already exists for customer 'duplicate'"):
        store.call(credit_store.add_grant, grant("g-1", "duplicate", "99"))
    assert [g.amount for g in store.call(credit_store.list_grants, "duplicate")] == [D(10)]
    # Ids are per customer.
    assert store.call(credit_store.add_grant, grant("g-1", "duplicate-2", "7")).amount == D(7)


def test_a_voided_grant_is_listed_as_voided_and_burns_nothing(store: ChdbWorker) -> None:
    store.call(credit_store.add_grant, grant("first", "voids", "10", priority=0))
    store.call(credit_store.add_grant, grant("second", "voids", "10", priority=1))
    store.call(insert_hourly, [(NOV + HOUR, "voids", "input_tokens", "credits", "4")])
    voided = store.call(credit_store.void_grant, "voids", "first", now_ns=NOV)  # a clock behind the grant's row
    assert voided.voided and voided.amount == D(10)

    assert {g.grant_id: g.voided for g in store.call(credit_store.list_grants, "voids")} == {"first": True,
                                                                                            "second": False}
    ledger = store.call(credit_store.credit_ledger, "voids", NOV + 2 * HOUR)
    assert {s.grant.grant_id: (s.status, s.consumed, s.remaining) for s in ledger.grants} == {
        "first": ("voided", D(0), D(0)), "second": ("active", D(4), D(6))}
    assert ledger.balance("credits") == D(6)


def test_voiding_a_voided_grant_changes_nothing(store: ChdbWorker) -> None:
    store.call(credit_store.add_grant, grant("g", "twice", "1"))
    store.call(credit_store.void_grant, "twice", "g")
    assert store.call(credit_store.void_grant, "twice", "g").voided
    assert store.call(grant_rows, "twice") == 2


def test_voiding_an_unknown_grant_names_the_customer_and_the_grant(store: ChdbWorker) -> None:
    store.call(credit_store.add_grant, grant("real", "unknown-void", "1"))
    with pytest.raises(UnknownGrantError, match="customer 'unknown-void' has no credit grant 'typo'"):
        store.call(credit_store.void_grant, "unknown-void", "typo")
    with pytest.raises(UnknownGrantError, match="customer 'someone-else' has no credit grant 'real'"):
        store.call(credit_store.void_grant, "someone-else", "real")


def test_grants_of_every_customer_come_from_one_query(store: ChdbWorker) -> None:
    store.call(credit_store.add_grant, grant("a", "all-1", "1"))
    store.call(credit_store.add_grant, grant("b", "all-2", "2", currency="EUR"))
    everyone = store.call(credit_store.grants_of_customers)
    assert [(g.grant_id, g.amount, g.currency) for g in everyone["all-1"]] == [("a", D(1), "credits")]
    assert [(g.grant_id, g.amount, g.currency) for g in everyone["all-2"]] == [("b", D(2), "EUR")]


# --- usage and the ledger ------------------------------------------------------------------------------

def test_usage_buckets_sum_every_row_of_an_hour_per_currency_before_until(store: ChdbWorker) -> None:
    c = "buckets"
    store.call(insert_hourly, [(NOV, c, "input_tokens", "USD", "0.000000000000000001"),
                               (NOV, c, "output_tokens", "USD", "1.25"),
                               (NOV, c, "input_tokens", "credits", "3"),
                               (NOV, c, "input_tokens", "", "0"),              # unpriced
                               (NOV, "someone-else", "input_tokens", "USD", "100")])
    # Another part for the same hour (not merged yet), the hour in progress, and one at until.
    store.call(insert_hourly, [(NOV, c, "input_tokens", "USD", "2"),
                               (NOV + HOUR, c, "input_tokens", "USD", "0.5"),
                               (NOV + HOUR, c, "input_tokens", "USD", "-0.5"),  # nets to zero: left out
                               (NOV + 2 * HOUR, c, "input_tokens", "USD", "0.7"),
                               (NOV + 3 * HOUR, c, "input_tokens", "USD", "9")])
    until = NOV + 2 * HOUR + 1  # one nanosecond into the third hour: that hour counts
    # An hour's usage burns at its last nanosecond; the hour in progress just before until.
    end_of_first = NOV + HOUR - 1
    assert store.call(credit_store.usage_buckets, c, until) == [
        UsageBucket(end_of_first, "USD", D("3.250000000000000001")),
        UsageBucket(end_of_first, "credits", D(3)),
        UsageBucket(until - 1, "USD", D("0.7")),
    ]
    assert store.call(credit_store.usage_buckets, c, NOV + 2 * HOUR) == [
        UsageBucket(end_of_first, "USD", D("3.250000000000000001")), UsageBucket(end_of_first, "credits", D(3))]
    # From the hour holding since_ns.
    assert store.call(credit_store.usage_buckets, c, until, since_ns=NOV + HOUR + 1) == [
        UsageBucket(until - 1, "USD", D("0.7"))]


def test_buckets_of_several_customers_start_at_each_ones_own_hour(store: ChdbWorker) -> None:
    store.call(insert_hourly, [(NOV, "many-1", "m", "credits", "1"), (NOV + HOUR, "many-1", "m", "credits", "2"),
                               (NOV, "many-2", "m", "credits", "4"), (NOV + HOUR, "many-2", "m", "credits", "8")])
    found = store.call(credit_store.usage_buckets_of_customers, {"many-1": NOV, "many-2": NOV + HOUR, "none": NOV},
                       NOV + 5 * HOUR)
    assert found == {"many-1": [UsageBucket(NOV + HOUR - 1, "credits", D(1)),
                                UsageBucket(NOV + 2 * HOUR - 1, "credits", D(2))],
                     "many-2": [UsageBucket(NOV + 2 * HOUR - 1, "credits", D(8))], "none": []}


def test_the_ledger_burns_hourly_usage_in_burn_order_with_expiry_and_overage(store: ChdbWorker) -> None:
    c = "ledger"
    store.call(credit_store.add_grant, grant("promo", c, "10", expires=NOV + 3 * HOUR))
    store.call(credit_store.add_grant, grant("prepaid", c, "100"))
    store.call(credit_store.add_grant, grant("dollars", c, "5", currency="USD"))
    store.call(credit_store.add_grant, grant("later", c, "50", effective=NOV + 10 * HOUR))
    store.call(insert_hourly, [(NOV, c, "input_tokens", "credits", "6"),
                               (NOV + HOUR, c, "input_tokens", "credits", "7.5"),
                               (NOV + HOUR, c, "input_tokens", "USD", "7.25"),
                               (NOV + 4 * HOUR, c, "input_tokens", "credits", "1")])
    ledger = store.call(credit_store.credit_ledger, c, NOV + 5 * HOUR)
    # Expiring first: promo takes 6 then 4 of the 7.5, prepaid the other 3.5, then 1 after promo expired
    # (an expired grant says so even when nothing was left to expire).
    assert {s.grant.grant_id: (s.status, s.consumed, s.remaining, s.expired) for s in ledger.grants} == {
        "promo": ("expired", D(10), D(0), D(0)),
        "prepaid": ("active", D("4.5"), D("95.5"), D(0)),
        "dollars": ("depleted", D(5), D(0), D(0)),
        "later": ("pending", D(0), D(50), D(0)),
    }
    assert ledger.balance("credits") == D("95.5")
    assert ledger.overage == {"credits": D(0), "USD": D("2.25")}
    assert credit_store.ledger_document(ledger, NOV + 5 * HOUR)["balances"] == {"USD": "0.00", "credits": "95.50"}


# --- checks before storing (no store needed) -------------------------------------------------------------

def test_a_grant_amount_beyond_the_stores_18_decimal_places_is_refused() -> None:
    with pytest.raises(CreditError, match=r"amount 0\.0000000000000000001 has more than 18 decimal places"):
        check_grant(grant("tiny", "acme", "0.0000000000000000001"))
    check_grant(grant("fine", "acme", "0.000000000000000001000"))  # trailing zeros are not places


@pytest.mark.parametrize("change, message", [
    ({"currency": "usd"}, "currency is 'usd'; use \"credits\" or an ISO 4217 code"),
    ({"customer": ""}, "customer is empty"),
    ({"grant_id": "id with\nnewline"}, "grant_id must be printable ASCII"),
    ({"amount": D("1E+20")}, "amount 100000000000000000000 is too large"),
    ({"effective_from_ns": -1, "expires_at_ns": None}, "effective_from_ns must be nanoseconds since the Unix epoch"),
    ({"priority": 2**31}, "priority must be an integer"),
])
def test_a_grant_the_store_cannot_hold_is_refused_naming_the_field(change: dict, message: str) -> None:
    with pytest.raises(CreditError, match=message):
        check_grant(dataclasses.replace(grant("g", "acme", "1"), **change))


def test_a_grant_document_is_parsed_exactly_with_defaults() -> None:
    parsed, note = parse_grant({"amount": "250.50", "expires_at": "2026-12-01T00:00:00+01:00", "note": "Q4"},
                               "acme", now_ns=NOV)
    assert parsed == CreditGrant(grant_id="", customer="acme", amount=D("250.50"), currency="credits",
                                 effective_from_ns=NOV, expires_at_ns=NOV + (30 * 24 - 1) * HOUR, priority=0)
    assert note == "Q4"
    assert parse_grant({"amount": 3, "currency": "USD", "grant_id": "g-7", "customer": "acme", "priority": 2,
                        "effective_from": "2026-11-01T00:00:00Z"})[0] == \
        CreditGrant("g-7", "acme", D(3), "USD", NOV, None, priority=2)


@pytest.mark.parametrize("document, message", [
    ({"amount": 1.5}, ("amount 1.5 is a JSON number with a fraction, which is not exact; send it as a decimal "
                       "string such as \"1.5\"")),
    ({"amount": "0"}, "amount must be a positive decimal string such as \"100.00\", got '0'"),
    ({"amount": "-5"}, "amount must be a positive decimal string"),
    ({"amount": "ten"}, "amount 'ten' is not a decimal number"),
    ({"amount": "NaN"}, "amount must be a positive decimal string"),
    ({}, "amount must be a positive decimal string"),
    ({"amount": "1", "effective_from": "2026-11-02T00:00:00Z", "expires_at": "2026-11-01T00:00:00Z"},
     "expires_at must be after effective_from"),
    ({"amount": "1", "expires_at": "2026-12-01T00:00:00"}, "expires_at '2026-12-01T00:00:00' has no time zone"),
    ({"amount": "1", "expires_at": "next month"}, "expires_at 'next month' is not an ISO 8601 time"),
    ({"amount": "1", "currency": "dollars"}, "currency is 'dollars'"),
    ({"amount": "1", "priority": "high"}, "priority must be an integer"),
    ({"amount": "1", "customer": "globex"}, "customer 'globex' differs from the customer 'acme'"),
    ({"amount": "1", "amout": "2"}, "unknown key\\(s\\) amout"),
])
def test_a_bad_grant_document_is_refused_with_a_clear_message(document: dict, message: str) -> None:
    with pytest.raises(CreditError, match=message) as raised:
        parse_grant(document, "acme", now_ns=NOV)
    assert isinstance(raised.value, OtelMeterError)


def test_a_grant_document_needs_a_customer() -> None:
    with pytest.raises(CreditError, match="customer is missing"):
        parse_grant({"amount": "1"})


def test_store_errors_subclass_the_credit_error() -> None:
    assert issubclass(UnknownGrantError, CreditError) and issubclass(DuplicateGrantError, CreditError)
    assert issubclass(CreditError, OtelMeterError)


