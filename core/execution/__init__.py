"""Brokers, risk and ledger."""
