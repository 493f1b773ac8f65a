-- The queue and status tables are rewritten all day: every outbox row is updated twice (claimed,
-- sent) and deleted, every payment order several times. PostgreSQL's default autovacuum
-- trigger (20 % of the table dead) lets them bloat between runs; vacuum them after a fixed
-- number of dead rows instead. (Where autovacuum is off entirely, the service vacuums these
-- tables itself: MP_DB_VACUUM_S.)
ALTER TABLE outbox SET (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 5000,
                        autovacuum_analyze_scale_factor = 0.02);
ALTER TABLE inbox SET (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 5000,
                       autovacuum_analyze_scale_factor = 0.02);
ALTER TABLE payments SET (autovacuum_vacuum_scale_factor = 0.02, autovacuum_analyze_scale_factor = 0.02);
ALTER TABLE payment_orders SET (autovacuum_vacuum_scale_factor = 0.02, autovacuum_analyze_scale_factor = 0.02);
ALTER TABLE journal_entries SET (autovacuum_analyze_scale_factor = 0.02);
ALTER TABLE postings SET (autovacuum_analyze_scale_factor = 0.02);
