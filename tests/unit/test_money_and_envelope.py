import hashlib
from datetime import UTC, datetime

import msgspec
import pytest

from marketplace_pay.infra.codec import decode_envelope, encode
from marketplace_pay.ledger.domain.events import LedgerEntriesRecorded, LedgerEntryData
from marketplace_pay.payments import PaymentOrderStatus
from marketplace_pay.payments.domain.events import (
    CapturePaymentOrder,
    PaymentAuthorized,
    PaymentLineData,
    PaymentOrderFinalized,
)
from marketplace_pay.shared.envelope import envelope
from marketplace_pay.shared.money import Currency, CurrencyMismatch, Money

NOW = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)


def test_money_arithmetic_keeps_minor_units_and_currency() -> None:
    a, b = Money(1050, Currency.EUR), Money(25, Currency.EUR)
    assert a + b == Money(1075, Currency.EUR)
    assert a - b == Money(1025, Currency.EUR)
    assert -a == Money(-1050, Currency.EUR)
    with pytest.raises(CurrencyMismatch):
        _ = a + Money(1, Currency.USD)


def _entry(journal_id: str) -> LedgerEntryData:
    return LedgerEntryData(
        seq=1, tx=3, journal_entry_id=journal_id, journal_type="CAPTURE", currency="EUR", created_at=NOW, postings=[]
    )


def test_ledger_entries_recorded_has_the_same_id_for_the_same_journals_in_any_order() -> None:
    a = LedgerEntriesRecorded(ledger_entries=[_entry("CAPTURE:1"), _entry("AUTH:2")])
    b = LedgerEntriesRecorded(ledger_entries=[_entry("AUTH:2"), _entry("CAPTURE:1")], traceparents=["x"])
    assert a.event_id() == b.event_id() != LedgerEntriesRecorded(ledger_entries=[_entry("AUTH:2")]).event_id()


def _order_fields() -> dict[str, object]:
    return {
        "payment_order_id": "11",
        "public_payment_order_id": "po_AAAAAAAAAAs",
        "payment_id": "10",
        "public_payment_id": "pay_AAAAAAAAAAo",
        "seller_id": "SELLER-111",
        "amount_minor": 1000,
        "currency": "EUR",
        "timestamp": NOW,
    }


@pytest.mark.parametrize(
    ("event", "event_id", "key", "topic"),
    [
        (
            PaymentAuthorized(
                payment_id="10",
                public_payment_id="pay_AAAAAAAAAAo",
                buyer_id="b",
                order_id="o",
                total_amount_minor=1000,
                currency="EUR",
                payment_lines=[PaymentLineData("11", "po_AAAAAAAAAAs", "SELLER-111", 1000, "EUR")],
                authorized_at=NOW,
            ),
            "pay_AAAAAAAAAAo:authorized",
            "10",
            "payment_authorized_topic",
        ),
        (
            CapturePaymentOrder(**_order_fields(), attempt=3),
            "po_AAAAAAAAAAs:capture:3",
            "11",
            "payment_order_capture_request_queue_topic",
        ),
        (
            PaymentOrderFinalized(**_order_fields(), status=PaymentOrderStatus.CAPTURED),
            "po_AAAAAAAAAAs:payment_order_finalized:CAPTURED",
            "11",
            "payment_order_finalized_topic",
        ),
        (
            LedgerEntriesRecorded(ledger_entries=[_entry("CAPTURE:11"), _entry("COMMISSION:11")]),
            "ledger-entries:"
            + hashlib.sha256(b"CAPTURE:11|COMMISSION:11").hexdigest()[:32]
            + ":ledger_entries_recorded",
            "CAPTURE:11",
            "ledger_entries_recorded_topic",
        ),
    ],
)
def test_deterministic_event_ids_keys_and_topics(event, event_id: str, key: str, topic: str) -> None:  # type: ignore[no-untyped-def]
    env = envelope(event, aggregate_id=key, timestamp=NOW, trace_id="t" * 32)
    assert (env.event_id, env.key, env.topic, env.event_type) == (event_id, key, topic, event.event_type)
    again = envelope(event, aggregate_id=key, timestamp=datetime.now(UTC), trace_id="x" * 32)
    assert again.event_id == env.event_id


def test_root_events_are_their_own_parent_and_children_inherit_the_trace() -> None:
    root = envelope(
        PaymentOrderFinalized(**_order_fields(), status=PaymentOrderStatus.CAPTURED),
        aggregate_id="11",
        timestamp=NOW,
        trace_id="a" * 32,
        traceparent="00-" + "a" * 32 + "-" + "b" * 16 + "-01",
    )
    assert root.parent_event_id == root.event_id
    child = envelope(
        CapturePaymentOrder(**_order_fields()), aggregate_id="11", timestamp=NOW, trace_id="ignored", caused_by=root
    )
    assert (child.parent_event_id, child.trace_id, child.traceparent) == (root.event_id, "a" * 32, root.traceparent)


def test_envelope_json_shape_round_trips() -> None:
    env = envelope(
        PaymentOrderFinalized(**_order_fields(), status=PaymentOrderStatus.CAPTURED),
        aggregate_id="11",
        timestamp=NOW,
        trace_id="c" * 32,
    )
    raw = encode(env)
    as_dict = msgspec.json.decode(raw)
    assert set(as_dict) == {"eventId", "eventType", "aggregateId", "data", "timestamp", "traceId", "parentEventId"}
    assert as_dict["timestamp"] == "2026-01-02T03:04:05.123456Z"
    assert as_dict["data"]["publicPaymentOrderId"] == "po_AAAAAAAAAAs"
    assert decode_envelope(raw, PaymentOrderFinalized) == env
