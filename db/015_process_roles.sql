-- Process roles: an API-only process (MP_ROLE=api) holds an instance-id lease — it mints payment
-- ids — but leads no outbox shard. The relays share the 32 shards among the live processes that
-- do (`relays`), so an API process must not count: it would leave shards without a leader.
SET LOCAL lock_timeout = '5s';
ALTER TABLE instance_leases ADD COLUMN relays boolean NOT NULL DEFAULT true;
