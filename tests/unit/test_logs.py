"""Logs for machines (JSON) and people (text, colored on a terminal): the format follows
MP_LOG_FORMAT, lines carry the trace id and the record's fields, and the start-up line names
where the service listens and what it uses, never a secret."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest

from marketplace_pay.infra import telemetry
from marketplace_pay.infra.logs import JsonFormatter, TextFormatter, about, formatter_for, redact_url, startup_fields
from marketplace_pay.settings import Settings, SettingsError

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE}-00f067aa0ba902b7-01"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def record(msg: str = "psp authorization timed out", **fields: object) -> logging.LogRecord:
    r = logging.LogRecord(
        "marketplace_pay.payments.application.create_payment", logging.WARNING, __file__, 1, msg, None, None
    )
    r.__dict__.update(fields)
    return r


@pytest.mark.parametrize(
    ("fmt", "stream", "expected"),
    [
        ("auto", io.StringIO(), JsonFormatter),  # a file, a pipe, a container's log
        ("auto", Terminal(), TextFormatter),  # a person at a terminal
        ("json", Terminal(), JsonFormatter),
        ("text", io.StringIO(), TextFormatter),
    ],
)
def test_the_format_follows_the_setting_and_the_terminal(fmt: str, stream: io.StringIO, expected: type) -> None:
    assert type(formatter_for(fmt, stream, env={})) is expected


def test_colors_only_on_a_terminal_that_wants_them() -> None:
    assert formatter_for("text", Terminal(), env={}).color  # type: ignore[attr-defined]
    assert not formatter_for("text", io.StringIO(), env={}).color  # type: ignore[attr-defined]
    assert not formatter_for("text", Terminal(), env={"NO_COLOR": "1"}).color  # type: ignore[attr-defined]
    assert not formatter_for("auto", Terminal(), env={"TERM": "dumb"}).color  # type: ignore[attr-defined]


def test_a_json_line_carries_the_current_trace_id_and_the_payment() -> None:
    with telemetry.span_for("resolve pending authorization", TRACEPARENT):  # no exporter: ids only
        line = json.loads(JsonFormatter().format(record(paymentId="pay_AAAAAAAAAAA")))
    assert line["traceId"] == TRACE
    assert line["paymentId"] == "pay_AAAAAAAAAAA"
    assert line["msg"] == "psp authorization timed out" and line["level"] == "WARNING"
    assert "color_message" not in json.loads(JsonFormatter().format(record(color_message="\x1b[1mx")))


def test_a_record_about_another_trace_keeps_its_own_trace_id() -> None:
    with telemetry.span_for("some batch", None):
        line = json.loads(JsonFormatter().format(record(traceId=TRACE)))
    assert line["traceId"] == TRACE


def test_a_text_line_reads_as_key_value_with_the_trace_id_last() -> None:
    with telemetry.span_for("resolve pending authorization", TRACEPARENT):
        line = TextFormatter().format(record(paymentId="pay_AAAAAAAAAAA", error="TimeoutError()", orders=[1, 2]))
    assert "WARNING" in line
    assert "payments.application.create_payment: psp authorization timed out" in line
    assert "paymentId=pay_AAAAAAAAAAA error=TimeoutError() orders=[1,2]" in line
    assert line.endswith(f"traceId={TRACE}")
    assert "\x1b[" not in line
    assert 'detail="two words"' in TextFormatter().format(record(detail="two words"))
    assert "\x1b[33m" in TextFormatter(color=True).format(record())  # WARNING in yellow


def test_event_fields_name_the_event_its_trace_and_its_payment() -> None:
    class Data:
        public_payment_id = "pay_AAAAAAAAAAA"

    class Env:
        event_id = "pay_AAAAAAAAAAA:authorized"
        trace_id = TRACE
        data = Data()

    assert about(Env()) == {"eventId": "pay_AAAAAAAAAAA:authorized", "traceId": TRACE, "paymentId": "pay_AAAAAAAAAAA"}


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "postgresql://mp:s3cr3t-pw@db.internal:5432/marketplace_pay",
            "postgresql://mp@db.internal:5432/marketplace_pay",
        ),
        (
            "postgresql://mp@db/x?sslmode=require&sslpassword=s3cr3t-pw",
            "postgresql://mp@db/x?sslmode=require&sslpassword=***",
        ),
        ("redis://:s3cr3t-pw@redis:6379/0", "redis://redis:6379/0"),
        ("rediss://default:s3cr3t-pw@[::1]:6380/1", "rediss://default@[::1]:6380/1"),
        ("unix:///tmp/mp/redis.sock?db=0", "unix:///tmp/mp/redis.sock?db=0"),
        ("host=db user=mp password=s3cr3t-pw dbname=x", "host=db user=mp password=*** dbname=x"),
    ],
)
def test_service_urls_are_logged_without_their_secrets(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_the_start_up_line_says_where_and_with_what_and_no_secret() -> None:
    settings = Settings().with_(
        database_url="postgresql://mp:s3cr3t-pw@db:5432/mp",
        redis_url="redis://:s3cr3t-pw@redis:6379/0",
        kafka_bootstrap_servers="kafka:9092",
        jwt_secret="s3cr3t-pw" * 5,
        instance_name="replica-1",
    )
    fields = startup_fields(
        settings, listen="http://0.0.0.0:8000", workers=1, tracing="off", metrics="http://0.0.0.0:8000/metrics"
    )
    assert fields == {
        "listen": "http://0.0.0.0:8000",
        "workers": 1,
        "database": "postgresql://mp@db:5432/mp",
        "redis": "redis://redis:6379/0",
        "bus": "kafka kafka:9092",
        "tracing": "off",
        "metrics": "http://0.0.0.0:8000/metrics",
        "instance": "replica-1",
    }
    embedded = startup_fields(
        Settings().with_(data_dir=Path("/data")), listen="x", workers=2, tracing="off", metrics="x"
    )
    assert embedded["database"] == "embedded PostgreSQL in /data/postgres"
    assert embedded["redis"] == "embedded Redis in /data/redis"
    assert embedded["bus"] == "in-memory" and "instance" not in embedded
    assert "s3cr3t" not in json.dumps(fields)


def test_mp_log_format_defaults_to_auto_and_refuses_nonsense() -> None:
    assert Settings.from_env({}).log.format == "auto"
    assert Settings.from_env({"MP_LOG_FORMAT": "TEXT"}).log.format == "text"
    with pytest.raises(SettingsError, match="MP_LOG_FORMAT"):
        Settings.from_env({"MP_LOG_FORMAT": "xml"})
