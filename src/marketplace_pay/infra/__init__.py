"""Technology adapters shared by every context: Postgres, Redis, Kafka, the outbox and its relay, the buses."""
