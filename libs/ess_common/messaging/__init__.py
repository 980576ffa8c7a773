"""Messaging: one durable topic exchange, a queue per consumer, retries and dead letters."""
