"""Prepaid-credit documents: what ``GET /v1/credits/{customer}`` and the grant routes answer,
and what ``otel-meter credits balance --format json`` prints. The usage API and the command
line's local (no server) path both call these functions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from otel_meter.credits import credit_store

if TYPE_CHECKING:
    from otel_meter.credits.burn_down import CreditGrant
    from otel_meter.rating.rate_book import RateBook
    from otel_meter.storage.store import Store


@dataclass(frozen=True)
class BalanceRequest:
    """A customer's credits as of ``as_of_ns``."""

    customer: str
    as_of_ns: int


def balance_document(store: Store, book: RateBook | None, request: BalanceRequest) -> dict[str, Any]:
    """Balance, grants and history as of the request's time. ``book`` settles each billing period's
    credits with its statement (None: no rating processor, real-time amounts; logged)."""
    ledger = credit_store.credit_ledger(store, request.customer, request.as_of_ns, book)
    return credit_store.ledger_document(ledger, request.as_of_ns)


def grant_document(grant: CreditGrant) -> dict[str, Any]:
    """One stored grant (amount as exact decimal text, times in ISO 8601 UTC)."""
    return {"grant_id": grant.grant_id, "customer": grant.customer, "amount": credit_store.money_text(grant.amount),
            "currency": grant.currency, "effective_from": credit_store.iso_time(grant.effective_from_ns),
            "expires_at": None if grant.expires_at_ns is None else credit_store.iso_time(grant.expires_at_ns),
            "priority": grant.priority, "voided": grant.voided}
