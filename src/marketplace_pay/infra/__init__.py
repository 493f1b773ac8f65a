"""Technology adapters shared by every context: Postgres, Redis, Kafka, outbox, inbox, bus."""
