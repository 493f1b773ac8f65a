"""Logging for machines and for people.

`MP_LOG_FORMAT`: `json` — one JSON object per line (`ts`, `level`, `logger`, `msg`, `traceId`, and
the record's fields: `paymentId`, `eventId`, `consumer`, …); `text` — one readable line,
`time LEVEL logger: message key=value …`, colored when stderr is a terminal; `auto` (the
default) — text on a terminal, JSON everywhere else (a file, a pipe, a container's log).

Every line written while work for a payment runs carries its trace id (the formatter reads the
current one); lines about a payment also carry its public id (`paymentId`, `pay_…`), set by the
code that knows it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import IO, Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from marketplace_pay.infra.telemetry import current_trace_id

LOG_FORMATS = ("auto", "json", "text")

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
    "color_message",  # uvicorn's colored copy of the message
}


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        trace_id = current_trace_id()
        if trace_id is not None:
            entry["traceId"] = trace_id
        entry.update(_fields(record))  # a record's own traceId (about another trace) wins
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


_RESET = "\x1b[0m"
_DIM = "\x1b[2m"
_KEY = "\x1b[36m"  # cyan
_LEVEL_COLORS = {
    "DEBUG": "\x1b[2m",
    "INFO": "\x1b[32m",  # green
    "WARNING": "\x1b[33m",  # yellow
    "ERROR": "\x1b[31m",  # red
    "CRITICAL": "\x1b[1;31m",
}
_PLAIN = re.compile(r"[^\s\"'=]+")


def _value(value: Any) -> str:
    if isinstance(value, str):
        return value if _PLAIN.fullmatch(value) else json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, default=str, ensure_ascii=False, separators=(",", ":"))
    return str(value)


class TextFormatter(logging.Formatter):
    """`2025-06-01 12:00:00.123 INFO  payments.capture: message key=value … traceId=…`: the local
    time, the logger without the package name, the record's fields as key=value, the trace id
    last (it is long, and it is what one pastes into the trace viewer)."""

    def __init__(self, *, color: bool = False) -> None:
        super().__init__()
        self.color = color

    def _paint(self, code: str, text: str) -> str:
        return f"{code}{text}{_RESET}" if self.color else text

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.fromtimestamp(record.created).strftime("%Y-%m-%d %H:%M:%S") + f".{int(record.msecs):03d}"
        level = record.levelname
        name = record.name.removeprefix("marketplace_pay.")
        fields = _fields(record)
        trace_id = fields.pop("traceId", None) or current_trace_id()
        parts = [
            self._paint(_DIM, when),
            self._paint(_LEVEL_COLORS.get(level, ""), f"{level:<7}"),
            self._paint(_DIM, f"{name}:"),
            record.getMessage(),
        ]
        for key, value in fields.items():
            parts.append(f"{self._paint(_KEY, key)}={_value(value)}")
        if trace_id is not None:
            parts.append(f"{self._paint(_KEY, 'traceId')}={trace_id}")
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self._paint(_LEVEL_COLORS["ERROR"], self.formatException(record.exc_info))
        return line


def _is_terminal(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def resolve_format(fmt: str, stream: IO[str]) -> str:
    """`auto` → text on a terminal, JSON elsewhere."""
    if fmt == "auto":
        return "text" if _is_terminal(stream) else "json"
    return fmt


def formatter_for(fmt: str, stream: IO[str], env: Mapping[str, str] | None = None) -> logging.Formatter:
    env = os.environ if env is None else env
    if resolve_format(fmt, stream) == "json":
        return JsonFormatter()
    color = _is_terminal(stream) and "NO_COLOR" not in env and env.get("TERM") != "dumb"
    return TextFormatter(color=color)


def setup_logging(level: str = "INFO", fmt: str = "auto", stream: IO[str] | None = None) -> None:
    stream = stream or sys.stderr
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter_for(fmt, stream))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("pgserver", "aiokafka", "apscheduler.executors", "httpx", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    # "skipped: maximum number of running instances reached" is routine for our one-at-a-time jobs
    logging.getLogger("apscheduler.scheduler").setLevel(max(logging.ERROR, root.level))


def about(envelope: Any) -> dict[str, Any]:
    """Log fields naming an event: its id, its trace, and its payment's public id when it has one."""
    fields: dict[str, Any] = {"eventId": envelope.event_id, "traceId": envelope.trace_id}
    payment_id = getattr(envelope.data, "public_payment_id", None)
    if payment_id:
        fields["paymentId"] = payment_id
    return fields


# -- the start-up line ------------------------------------------------------------------------------

_SECRET_KEYS = re.compile(r"pass|pwd|secret|token|key|auth|credential", re.IGNORECASE)
_KEYWORD_SECRET = re.compile(r"((?:password|passwd|sslpassword)\s*=\s*)(?:'[^']*'|\S+)", re.IGNORECASE)


def redact_url(url: str) -> str:
    """A service URL as it may be logged: no password (user info keeps the user name), no
    secret-looking query values."""
    if "://" not in url:
        return _KEYWORD_SECRET.sub(r"\1***", url)  # libpq "host=… password=…"
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "<unparsable URL>"
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc += f":{port}"
    if parts.username:
        netloc = f"{parts.username}@{netloc}"
    query = urlencode(
        [(k, "***" if _SECRET_KEYS.search(k) else v) for k, v in parse_qsl(parts.query, keep_blank_values=True)],
        safe="/*",
    )
    return f"{parts.scheme}://{netloc}{parts.path}" + (f"?{query}" if query else "")


def startup_fields(settings: Any, *, listen: str, workers: int, tracing: str, metrics: str) -> dict[str, Any]:
    """What a person starting the service wants to see first: where it listens and what it uses.
    Never a secret."""
    data_dir = str(settings.process.data_dir)
    return {
        "listen": listen,
        "workers": workers,
        "database": redact_url(settings.services.database_url)
        if settings.services.database_url
        else f"embedded PostgreSQL in {data_dir}/postgres",
        "redis": redact_url(settings.services.redis_url)
        if settings.services.redis_url
        else f"embedded Redis in {data_dir}/redis",
        "bus": f"kafka {settings.services.kafka_bootstrap_servers}"
        if settings.services.kafka_bootstrap_servers
        else "in-memory",
        "tracing": tracing,
        "metrics": metrics,
        # several workers lease an instance each; their "ready" lines name them
        **({"instance": settings.process.instance_name} if workers == 1 else {}),
    }
