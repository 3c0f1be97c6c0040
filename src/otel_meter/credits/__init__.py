"""Prepaid credits: grants burned down by rated usage (:mod:`burn_down`, pure and deterministic)
and the grants kept in the store with each customer's ledger (:mod:`credit_store`)."""
