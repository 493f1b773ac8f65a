"""Configuration, read once from the environment, in groups.

Every setting has a default, so `marketplace-pay serve` runs with nothing configured (embedded
PostgreSQL and Redis, in-memory bus). A setting's environment variable is derived from its
group and field: `Psp.capture_timeout_ms` is `MP_PSP_CAPTURE_TIMEOUT_MS`. The services and the
process-wide settings keep their conventional names (`DATABASE_URL`, `MP_WORKERS`, …).
`marketplace-pay settings` prints every one with its value, default and meaning; the README's
Configuration table lists the same (a test keeps the two in step).
"""

from __future__ import annotations

import dataclasses
import os
import socket
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, ClassVar

from marketplace_pay.settings_rules import SettingsError, check_cron, check_jwt_secret

__all__ = ["PSP_SCENARIOS", "Settings", "SettingsError", "check_cron", "check_jwt_secret", "env_name"]


def setting(
    default: Any,
    doc: str,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    choices: tuple[str, ...] = (),
    env: str = "",
    secret: bool = False,
    factory: Any = None,
) -> Any:
    """A field of a settings group: its default, what it means, and how its value is checked."""
    meta = {"doc": doc, "minimum": minimum, "maximum": maximum, "choices": choices, "env": env, "secret": secret}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


PSP_SCENARIOS = ("NORMAL", "PEAK", "DEGRADED", "BEST_PSP_EVER")
ROLES = ("all", "api", "pipeline")


@dataclass(frozen=True, slots=True)
class Services:
    """Where the backing services are; unset means embedded (PostgreSQL, Redis) or in-memory (bus)."""

    PREFIX: ClassVar[str] = ""
    database_url: str | None = setting(
        None, "PostgreSQL DSN; unset: embedded PostgreSQL in the data dir", env="DATABASE_URL", secret=True
    )
    redis_url: str | None = setting(
        None, "`redis://…` or `unix://…`; unset: embedded Redis", env="REDIS_URL", secret=True
    )
    kafka_bootstrap_servers: str | None = setting(
        None, "Kafka brokers; unset: the in-memory bus", env="KAFKA_BOOTSTRAP_SERVERS"
    )


@dataclass(frozen=True, slots=True)
class Process:
    """This process: its name, its data, how many workers serve."""

    PREFIX: ClassVar[str] = "MP_"
    data_dir: Path = setting(Path(".marketplace-pay"), "embedded databases and the generated JWT secret")
    instance_name: str = setting(
        None,
        "this process in logs, leases and Kafka client ids",
        factory=lambda: f"{socket.gethostname()}-{os.getpid()}",
    )
    workers: int = setting(
        0, "`serve` processes; 0: one per CPU core, at most 4. From 2 on, half of them (rounded down) run the pipeline"
    )
    role: str = setting(
        "all",
        "what this process runs: `all`; `api` (the API only: no outbox shards, handlers or jobs); "
        "`pipeline` (outbox shards, handlers and jobs). For one process; `serve --workers N` sets its workers' roles",
        choices=ROLES,
    )
    faults: str | None = setting(None, "crash points for fault tests, e.g. `relay.after_read=kill@2`")

    @property
    def runs_pipeline(self) -> bool:
        """Whether this process leads outbox shards and runs the handlers and jobs: every role
        but `api`, whose process only answers requests and wakes the others' relays."""
        return self.role != "api"


@dataclass(frozen=True, slots=True)
class Jwt:
    """How bearer tokens are verified."""

    PREFIX: ClassVar[str] = "MP_JWT_"
    secret: str | None = setting(
        None, "HS256 secret, ≥ 32 bytes, not a placeholder; unset: generated into the data dir", secret=True
    )
    jwks_url: str | None = setting(None, "verify RS256 tokens with this JWKS (needs MP_JWT_AUDIENCE)")
    issuer: str | None = setting(None, "required `iss` claim")
    audience: str | None = setting(None, "required `aud` claim (the client id tokens for this service carry)")
    jwks_cache_s: int = setting(300, "how long keys fetched from the JWKS are trusted", minimum=1)


@dataclass(frozen=True, slots=True)
class Psp:
    """The PSP (simulated) and how long we wait for it."""

    PREFIX: ClassVar[str] = "MP_PSP_"
    scenario: str = setting("NORMAL", "simulator behaviour", choices=PSP_SCENARIOS)
    seed: int = setting(0, "seed of the simulators' draws (the same key always gets the same answer)")
    auth_timeout_ms: int = setting(
        500, "budget of the synchronous authorization; past it the payment is PENDING_AUTH", minimum=1
    )
    capture_timeout_ms: int = setting(
        3000,
        "budget of one capture call, above the PSP's usual latency; past it the outcome is unknown "
        "(asked again, same key)",
        minimum=1,
    )
    call_log: Path | None = setting(None, "file the simulator appends every call to (JSON lines)")
    max_inflight: int = setting(256, "PSP calls in flight at once, per process", minimum=1)
    fee_bps: int = setting(30, "the PSP's fee on what it settles, in basis points", maximum=10000)


@dataclass(frozen=True, slots=True)
class Retry:
    """Capture retries: exponential back-off with jitter."""

    PREFIX: ClassVar[str] = "MP_RETRY_"
    base_ms: int = setting(2000, "first back-off", minimum=1)
    cap_ms: int = setting(60000, "longest back-off", minimum=1)
    max: int = setting(5, "retries after the first attempt; then the order is CAPTURE_FAILED")
    poll_ms: int = setting(500, "how often due retries are dispatched", minimum=10)
    inflight_timeout_ms: int = setting(
        60000, "a retry taken from Redis but not dispatched goes back after this", minimum=100
    )
    requeue_after_ms: int = setting(10000, "a retry overdue this long and missing from Redis is put back", minimum=100)


@dataclass(frozen=True, slots=True)
class PendingAuth:
    """Payments whose authorization timed out (PENDING_AUTH)."""

    PREFIX: ClassVar[str] = "MP_PENDING_AUTH_"
    check_after_ms: int = setting(2000, "age after which the PSP is asked for the outcome", minimum=1)
    poll_ms: int = setting(1000, "how often they are looked for", minimum=10)


@dataclass(frozen=True, slots=True)
class Idempotency:
    """`Idempotency-Key` records."""

    PREFIX: ClassVar[str] = "MP_IDEMPOTENCY_"
    ttl_hours: int = setting(48, "stored responses are kept at least this long", minimum=24)
    in_progress_ms: int = setting(
        30000, "a key whose first request died may be retried after this (409 before)", minimum=100
    )


@dataclass(frozen=True, slots=True)
class Sweep:
    """The sweeper of orders that stopped moving."""

    PREFIX: ClassVar[str] = "MP_SWEEP_"
    stuck_after_s: int = setting(120, "an order this far behind its schedule is re-driven and reported", minimum=1)


@dataclass(frozen=True, slots=True)
class Outbox:
    """The transactional outbox and its relay."""

    PREFIX: ClassVar[str] = "MP_OUTBOX_"
    batch_size: int = setting(500, "rows per relay read", minimum=1)
    poll_ms: int = setting(50, "relay fallback poll (a commit wakes it at once)", minimum=10)
    inflight_max: int = setting(5000, "rows published but not yet handled, per process", minimum=1)
    retention_s: int = setting(600, "published rows are kept this long (whole time partitions are dropped)")


@dataclass(frozen=True, slots=True)
class Payout:
    """Seller payouts."""

    PREFIX: ClassVar[str] = "MP_PAYOUT_"
    schedule: str | None = setting(None, "cron expression (5 fields, UTC) of automatic payouts; unset: none")
    minimum_minor: int = setting(
        1000, "automatic payouts skip sellers whose available balance is below this", minimum=1
    )
    bank_timeout_ms: int = setting(
        2000, "budget of one call to the bank; past it the outcome is unknown (asked again)", minimum=1
    )


@dataclass(frozen=True, slots=True)
class Settlement:
    """PSP settlement."""

    PREFIX: ClassVar[str] = "MP_SETTLEMENT_"
    schedule: str | None = setting(None, "cron expression (5 fields, UTC) of automatic settlement runs; unset: none")


@dataclass(frozen=True, slots=True)
class Bus:
    """The in-memory bus."""

    PREFIX: ClassVar[str] = "MP_BUS_"
    partitions: int = setting(4, "ordered handlers: parallel queues per handler (per-key order kept)", minimum=1)


@dataclass(frozen=True, slots=True)
class Handler:
    """Event handlers, on either bus."""

    PREFIX: ClassVar[str] = "MP_HANDLER_"
    batch_max: int = setting(200, "events per handler call", minimum=1)
    max_attempts: int = setting(5, "failures that are not transient before an event is dead-lettered", minimum=1)


@dataclass(frozen=True, slots=True)
class Kafka:
    """The Kafka bus (with KAFKA_BOOTSTRAP_SERVERS)."""

    PREFIX: ClassVar[str] = "MP_KAFKA_"
    session_timeout_ms: int = setting(10000, "consumer group session timeout", minimum=1000)
    topic_partitions: int = setting(
        0, "partitions of topics created at start; 0: 48 per payments topic, 24 per ledger topic"
    )
    replication_factor: int = setting(
        0, "replicas of topics created at start; 0: as many brokers as there are, up to 3"
    )


@dataclass(frozen=True, slots=True)
class Balance:
    """Balances: Postgres snapshots plus the Redis overlay."""

    PREFIX: ClassVar[str] = "MP_BALANCE_"
    fold_ms: int = setting(1000, "how often postings are folded into the snapshots", minimum=10)


@dataclass(frozen=True, slots=True)
class Reconcile:
    """The background reconciliation."""

    PREFIX: ClassVar[str] = "MP_RECONCILE_"
    interval_s: int = setting(300, "how often every balance is checked against its postings", minimum=1)


@dataclass(frozen=True, slots=True)
class Db:
    """The PostgreSQL connection pool."""

    PREFIX: ClassVar[str] = "MP_DB_"
    pool_min: int = setting(2, "connections kept open", minimum=1)
    pool_max: int = setting(20, "connections at most, per process", minimum=2)
    vacuum_s: int = setting(60, "vacuum interval when the server's autovacuum is off; 0: never")


@dataclass(frozen=True, slots=True)
class Redis:
    """Redis keys."""

    PREFIX: ClassVar[str] = "MP_REDIS_"
    prefix: str = setting("mp:", "prefix of every key (one database per prefix)")


@dataclass(frozen=True, slots=True)
class Log:
    """Logging."""

    PREFIX: ClassVar[str] = "MP_LOG_"
    level: str = setting(
        "INFO", "DEBUG, INFO, WARNING, ERROR", choices=("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
    )
    format: str = setting(
        "auto",
        "json, text, or auto: readable text on a terminal, JSON lines otherwise",
        choices=("auto", "json", "text"),
    )


@dataclass(frozen=True, slots=True)
class Shutdown:
    """Stopping on SIGTERM."""

    PREFIX: ClassVar[str] = "MP_SHUTDOWN_"
    grace_s: int = setting(20, "in-flight requests, events and jobs get this long to finish")


@dataclass(frozen=True, slots=True)
class Settings:
    services: Services = field(default_factory=Services)
    process: Process = field(default_factory=Process)
    jwt: Jwt = field(default_factory=Jwt)
    psp: Psp = field(default_factory=Psp)
    retry: Retry = field(default_factory=Retry)
    pending_auth: PendingAuth = field(default_factory=PendingAuth)
    idempotency: Idempotency = field(default_factory=Idempotency)
    sweep: Sweep = field(default_factory=Sweep)
    payout: Payout = field(default_factory=Payout)
    settlement: Settlement = field(default_factory=Settlement)
    outbox: Outbox = field(default_factory=Outbox)
    bus: Bus = field(default_factory=Bus)
    handler: Handler = field(default_factory=Handler)
    kafka: Kafka = field(default_factory=Kafka)
    balance: Balance = field(default_factory=Balance)
    reconcile: Reconcile = field(default_factory=Reconcile)
    db: Db = field(default_factory=Db)
    redis: Redis = field(default_factory=Redis)
    log: Log = field(default_factory=Log)
    shutdown: Shutdown = field(default_factory=Shutdown)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        groups = {}
        for group in fields(cls):
            kind = group_type(group.name)
            values = {}
            for f in fields(kind):
                raw = env.get(env_name(kind, f))
                if raw is not None and raw != "":
                    values[f.name] = _parse(kind, f, raw)
            groups[group.name] = kind(**values)
        settings = cls(**groups)
        settings.check()
        return settings

    def check(self) -> None:
        """Rules across settings."""
        if self.retry.cap_ms < self.retry.base_ms:
            raise SettingsError("MP_RETRY_CAP_MS must be >= MP_RETRY_BASE_MS")
        if self.db.pool_min > self.db.pool_max:
            raise SettingsError("MP_DB_POOL_MIN must be <= MP_DB_POOL_MAX")
        if self.jwt.jwks_url and not self.jwt.audience:
            # a realm's JWKS signs the tokens of every client of the realm: only the audience
            # says which of them are meant for this service
            raise SettingsError(
                "MP_JWT_AUDIENCE is required when MP_JWT_JWKS_URL is set "
                "(the client id tokens for this service carry in aud)"
            )
        if self.jwt.secret is not None:
            check_jwt_secret(self.jwt.secret)
        for name, schedule in (
            ("MP_PAYOUT_SCHEDULE", self.payout.schedule),
            ("MP_SETTLEMENT_SCHEDULE", self.settlement.schedule),
        ):
            if schedule:
                check_cron(schedule, name)

    def with_(self, **changes: object) -> Settings:
        """A copy with some settings changed, named `<group>_<field>` (`psp_scenario="PEAK"`)
        or, for the services and the process, by field (`database_url=…`, `workers=2`)."""
        by_group: dict[str, dict[str, object]] = {}
        for name, value in changes.items():
            group, field_name = _locate(name)
            by_group.setdefault(group, {})[field_name] = value
        return replace(self, **{g: replace(getattr(self, g), **v) for g, v in by_group.items()})


def env_name(group: type, f: dataclasses.Field[Any]) -> str:
    return f.metadata.get("env") or f"{group.PREFIX}{f.name.upper()}"  # type: ignore[attr-defined]


def group_type(name: str) -> type:
    hint = typing.get_type_hints(Settings)[name]
    assert isinstance(hint, type)
    return hint


def _locate(flat: str) -> tuple[str, str]:
    for group in fields(Settings):
        kind = group_type(group.name)
        names = {f.name for f in fields(kind)}
        if kind.PREFIX in ("", "MP_") and flat in names:  # type: ignore[attr-defined]
            return group.name, flat
        if flat.startswith(group.name + "_") and flat[len(group.name) + 1 :] in names:
            return group.name, flat[len(group.name) + 1 :]
    raise TypeError(f"no setting named {flat!r}")


def _parse(group: type, f: dataclasses.Field[Any], raw: str) -> Any:
    name = env_name(group, f)
    kind = typing.get_type_hints(group)[f.name]
    if isinstance(kind, types.UnionType):  # `X | None`
        kind = next(k for k in typing.get_args(kind) if k is not type(None))
    if kind is int:
        try:
            value = int(raw)
        except ValueError:
            raise SettingsError(f"{name} must be an integer, got {raw!r}") from None
        minimum = f.metadata["minimum"] if f.metadata["minimum"] is not None else 0
        if value < minimum:
            raise SettingsError(f"{name} must be >= {minimum}, got {value}")
        if f.metadata["maximum"] is not None and value > f.metadata["maximum"]:
            raise SettingsError(f"{name} must be <= {f.metadata['maximum']}, got {value}")
        return value
    if f.metadata["choices"]:
        choice = raw.upper() if f.metadata["choices"][0].isupper() else raw.lower()
        if choice not in f.metadata["choices"]:
            raise SettingsError(f"{name} must be one of {', '.join(f.metadata['choices'])}, got {raw!r}")
        return choice
    return Path(raw) if kind is Path else raw
