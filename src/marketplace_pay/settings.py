"""Configuration, read once from the environment.

Every setting has a default so that `marketplace-pay serve` runs with nothing configured
(embedded PostgreSQL and Redis, in-memory bus). The README lists them all.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path


class SettingsError(ValueError):
    """An environment variable has a value that cannot be used."""


def _int(env: Mapping[str, str], name: str, default: int, *, minimum: int = 0) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise SettingsError(f"{name} must be >= {minimum}, got {value}")
    return value


def _str(env: Mapping[str, str], name: str, default: str | None = None) -> str | None:
    raw = env.get(name)
    return default if raw is None or raw == "" else raw


PSP_SCENARIOS = ("NORMAL", "PEAK", "DEGRADED", "BEST_PSP_EVER")

JWT_SECRET_BYTES_MIN = 32
# Template text ("change-me-to-a-long-random-secret…") and secrets made of nothing but such
# words and digits ("secret-secret-1234…", "test-secret-0123456789…").
_PLACEHOLDER = re.compile(r"change.?me|placeholder|example|replace.?me|your.?secret|insert.?here", re.IGNORECASE)
_PLACEHOLDER_WORDS = re.compile(r"(?:secret|password|passwd|jwt|key|token|test|dev|default|[0-9])+")
GENERATE_SECRET_HINT = "generate one with: python3 -c 'import secrets; print(secrets.token_urlsafe(48))'"


def check_jwt_secret(secret: str, source: str = "MP_JWT_SECRET") -> None:
    """Refuse HS256 secrets that anyone could guess: whoever knows the secret can mint tokens
    with any role."""
    if len(secret.encode("utf-8", "surrogatepass")) < JWT_SECRET_BYTES_MIN:
        raise SettingsError(f"{source} must be at least {JWT_SECRET_BYTES_MIN} bytes; {GENERATE_SECRET_HINT}")
    letters = re.sub(r"[^a-z0-9]", "", secret.lower())
    if _PLACEHOLDER.search(secret) or _PLACEHOLDER_WORDS.fullmatch(letters) or len(set(secret)) < 8:
        raise SettingsError(f"{source} looks like a placeholder, not a secret; {GENERATE_SECRET_HINT}")


@dataclass(frozen=True, slots=True)
class Settings:
    # services: None means "embedded" for PostgreSQL/Redis and "in-memory bus" for Kafka
    database_url: str | None = None
    redis_url: str | None = None
    kafka_bootstrap_servers: str | None = None
    data_dir: Path = Path(".marketplace-pay")
    instance_name: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")

    # auth
    jwt_secret: str | None = None
    jwt_jwks_url: str | None = None
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    jwt_jwks_cache_s: int = 300

    # PSP simulator
    psp_scenario: str = "NORMAL"
    psp_seed: int = 0
    psp_auth_timeout_ms: int = 500
    psp_capture_timeout_ms: int = 500
    psp_call_log: Path | None = None
    psp_max_inflight: int = 256

    # capture retries (seed §7.1)
    retry_base_ms: int = 2000
    retry_cap_ms: int = 60000
    retry_max: int = 5
    retry_poll_ms: int = 500
    retry_inflight_timeout_ms: int = 60000
    retry_requeue_after_ms: int = 10000

    # payments
    pending_auth_check_after_ms: int = 2000
    pending_auth_poll_ms: int = 1000
    idempotency_ttl_hours: int = 48
    idempotency_in_progress_ms: int = 30000
    sweep_stuck_after_s: int = 120

    # outbox / inbox / bus
    outbox_batch_size: int = 500
    outbox_poll_ms: int = 50
    outbox_inflight_max: int = 5000
    outbox_retention_s: int = 600
    inbox_retention_hours: int = 168
    bus_partitions: int = 4
    handler_batch_max: int = 200
    handler_max_attempts: int = 5
    kafka_session_timeout_ms: int = 10000
    kafka_topic_partitions: int = 0  # 0 = 48 per payments topic, 24 per ledger topic
    kafka_replication_factor: int = 0  # 0 = as many brokers as the cluster has, up to 3

    # balances (issue 4)
    balance_fold_ms: int = 1000
    reconcile_interval_s: int = 300

    # database
    db_pool_min: int = 2
    db_pool_max: int = 20
    db_vacuum_s: int = 60  # 0: never; only acts when the server's autovacuum is off
    redis_prefix: str = "mp:"

    # runtime
    log_level: str = "INFO"
    log_format: str = "auto"  # json, text, or auto: text on a terminal, else json
    shutdown_grace_s: int = 20
    faults: str | None = None
    workers: int = 0  # 0 = one per two CPU cores (PostgreSQL shares the machine by default)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        scenario = (_str(env, "MP_PSP_SCENARIO", "NORMAL") or "NORMAL").upper()
        if scenario not in PSP_SCENARIOS:
            raise SettingsError(f"MP_PSP_SCENARIO must be one of {', '.join(PSP_SCENARIOS)}, got {scenario!r}")
        log_format = (_str(env, "MP_LOG_FORMAT", "auto") or "auto").lower()
        if log_format not in ("auto", "json", "text"):
            raise SettingsError(f"MP_LOG_FORMAT must be auto, json or text, got {log_format!r}")
        defaults = cls()
        settings = cls(
            database_url=_str(env, "DATABASE_URL"),
            redis_url=_str(env, "REDIS_URL"),
            kafka_bootstrap_servers=_str(env, "KAFKA_BOOTSTRAP_SERVERS"),
            data_dir=Path(_str(env, "MP_DATA_DIR", str(defaults.data_dir)) or defaults.data_dir),
            instance_name=_str(env, "MP_INSTANCE_NAME", defaults.instance_name) or defaults.instance_name,
            jwt_secret=_str(env, "MP_JWT_SECRET"),
            jwt_jwks_url=_str(env, "MP_JWT_JWKS_URL"),
            jwt_issuer=_str(env, "MP_JWT_ISSUER"),
            jwt_audience=_str(env, "MP_JWT_AUDIENCE"),
            jwt_jwks_cache_s=_int(env, "MP_JWT_JWKS_CACHE_S", defaults.jwt_jwks_cache_s, minimum=1),
            psp_scenario=scenario,
            psp_seed=_int(env, "MP_PSP_SEED", defaults.psp_seed),
            psp_auth_timeout_ms=_int(env, "MP_PSP_AUTH_TIMEOUT_MS", defaults.psp_auth_timeout_ms, minimum=1),
            psp_capture_timeout_ms=_int(env, "MP_PSP_CAPTURE_TIMEOUT_MS", defaults.psp_capture_timeout_ms, minimum=1),
            psp_call_log=Path(p) if (p := _str(env, "MP_PSP_CALL_LOG")) else None,
            psp_max_inflight=_int(env, "MP_PSP_MAX_INFLIGHT", defaults.psp_max_inflight, minimum=1),
            retry_base_ms=_int(env, "MP_RETRY_BASE_MS", defaults.retry_base_ms, minimum=1),
            retry_cap_ms=_int(env, "MP_RETRY_CAP_MS", defaults.retry_cap_ms, minimum=1),
            retry_max=_int(env, "MP_RETRY_MAX", defaults.retry_max),
            retry_poll_ms=_int(env, "MP_RETRY_POLL_MS", defaults.retry_poll_ms, minimum=10),
            retry_inflight_timeout_ms=_int(
                env, "MP_RETRY_INFLIGHT_TIMEOUT_MS", defaults.retry_inflight_timeout_ms, minimum=100
            ),
            retry_requeue_after_ms=_int(env, "MP_RETRY_REQUEUE_AFTER_MS", defaults.retry_requeue_after_ms, minimum=100),
            pending_auth_check_after_ms=_int(
                env, "MP_PENDING_AUTH_CHECK_AFTER_MS", defaults.pending_auth_check_after_ms, minimum=1
            ),
            pending_auth_poll_ms=_int(env, "MP_PENDING_AUTH_POLL_MS", defaults.pending_auth_poll_ms, minimum=10),
            idempotency_ttl_hours=_int(env, "MP_IDEMPOTENCY_TTL_HOURS", defaults.idempotency_ttl_hours, minimum=24),
            idempotency_in_progress_ms=_int(
                env, "MP_IDEMPOTENCY_IN_PROGRESS_MS", defaults.idempotency_in_progress_ms, minimum=100
            ),
            sweep_stuck_after_s=_int(env, "MP_SWEEP_STUCK_AFTER_S", defaults.sweep_stuck_after_s, minimum=1),
            outbox_batch_size=_int(env, "MP_OUTBOX_BATCH_SIZE", defaults.outbox_batch_size, minimum=1),
            outbox_poll_ms=_int(env, "MP_OUTBOX_POLL_MS", defaults.outbox_poll_ms, minimum=10),
            outbox_inflight_max=_int(env, "MP_OUTBOX_INFLIGHT_MAX", defaults.outbox_inflight_max, minimum=1),
            outbox_retention_s=_int(env, "MP_OUTBOX_RETENTION_S", defaults.outbox_retention_s),
            inbox_retention_hours=_int(env, "MP_INBOX_RETENTION_HOURS", defaults.inbox_retention_hours, minimum=1),
            bus_partitions=_int(env, "MP_BUS_PARTITIONS", defaults.bus_partitions, minimum=1),
            handler_batch_max=_int(env, "MP_HANDLER_BATCH_MAX", defaults.handler_batch_max, minimum=1),
            handler_max_attempts=_int(env, "MP_HANDLER_MAX_ATTEMPTS", defaults.handler_max_attempts, minimum=1),
            kafka_session_timeout_ms=_int(
                env, "MP_KAFKA_SESSION_TIMEOUT_MS", defaults.kafka_session_timeout_ms, minimum=1000
            ),
            kafka_topic_partitions=_int(env, "MP_KAFKA_TOPIC_PARTITIONS", defaults.kafka_topic_partitions),
            kafka_replication_factor=_int(env, "MP_KAFKA_REPLICATION_FACTOR", defaults.kafka_replication_factor),
            balance_fold_ms=_int(env, "MP_BALANCE_FOLD_MS", defaults.balance_fold_ms, minimum=10),
            reconcile_interval_s=_int(env, "MP_RECONCILE_INTERVAL_S", defaults.reconcile_interval_s, minimum=1),
            db_pool_min=_int(env, "MP_DB_POOL_MIN", defaults.db_pool_min, minimum=1),
            db_pool_max=_int(env, "MP_DB_POOL_MAX", defaults.db_pool_max, minimum=2),
            db_vacuum_s=_int(env, "MP_DB_VACUUM_S", defaults.db_vacuum_s),
            redis_prefix=_str(env, "MP_REDIS_PREFIX", defaults.redis_prefix) or defaults.redis_prefix,
            log_level=(_str(env, "MP_LOG_LEVEL", "INFO") or "INFO").upper(),
            log_format=log_format,
            shutdown_grace_s=_int(env, "MP_SHUTDOWN_GRACE_S", defaults.shutdown_grace_s),
            faults=_str(env, "MP_FAULTS"),
            workers=_int(env, "MP_WORKERS", defaults.workers),
        )
        if settings.retry_cap_ms < settings.retry_base_ms:
            raise SettingsError("MP_RETRY_CAP_MS must be >= MP_RETRY_BASE_MS")
        if settings.db_pool_min > settings.db_pool_max:
            raise SettingsError("MP_DB_POOL_MIN must be <= MP_DB_POOL_MAX")
        if settings.jwt_jwks_url and not settings.jwt_audience:
            # a realm's JWKS signs the tokens of every client of the realm: only the audience
            # says which of them are meant for this service
            raise SettingsError(
                "MP_JWT_AUDIENCE is required when MP_JWT_JWKS_URL is set (the client id tokens for this service carry in aud)"
            )
        if settings.jwt_secret is not None:
            check_jwt_secret(settings.jwt_secret)
        return settings

    def with_(self, **changes: object) -> Settings:
        return replace(self, **changes)  # type: ignore[arg-type]
