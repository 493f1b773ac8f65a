"""Balances context: real-time account balances (snapshot in Postgres + deltas in Redis)."""
