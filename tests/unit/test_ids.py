"""Snowflake layout and public ids, with instance bits."""

import pytest

from marketplace_pay.shared.ids import (
    EPOCH_MS,
    InvalidPublicId,
    SnowflakeGenerator,
    coord_shard,
    decode_public_id,
    encode_public_id,
    id_instance,
    id_shard,
    id_timestamp_ms,
    java_string_hash,
    public_payment_id,
    seller_shard,
)


@pytest.mark.parametrize(("seller", "shard"), [("SELLER-111", 3), ("SELLER-222", 4), ("SELLER-333", 5)])
def test_seller_shards_are_the_java_hash_of_the_seller_id(seller: str, shard: int) -> None:
    assert seller_shard(seller) == shard


@pytest.mark.parametrize(
    ("buyer", "order", "shard"),
    [("BUYER-123", "ORDER-XYZ", 0), ("BUYER-123", "ORDER-20240508-XYZ", 2), ("buyer-1", "order-1", 7)],
)
def test_coordinator_shards_are_the_java_hash_of_buyer_and_order(buyer: str, order: str, shard: int) -> None:
    assert coord_shard(buyer, order) == shard


def test_java_hash_overflows_like_java() -> None:
    assert java_string_hash("") == 0
    assert java_string_hash("a") == 97
    assert java_string_hash("polygenelubricants") == -(2**31)  # the famous Integer.MIN_VALUE string
    assert java_string_hash("\U0001f600") == java_string_hash(
        "\ud83d\ude00".encode("utf-16", "surrogatepass").decode("utf-16")
    )


def _java_hash_by_definition(text: str) -> int:
    h = 0
    data = text.encode("utf-16-be", "surrogatepass")
    for i in range(0, len(data), 2):
        h = (31 * h + ((data[i] << 8) | data[i + 1])) & 0xFFFFFFFF
    return h - (1 << 32) if h & 0x80000000 else h


@pytest.mark.parametrize(
    "text", ["x" * 63, "x" * 64, "x" * 65, "BUYER-1:" + "ö" * 500, "\U0001f600" * 100, "漢字" * 77 + "\uffff"]
)
def test_java_hash_of_long_and_non_ascii_text_is_the_definition(text: str) -> None:
    assert java_string_hash(text) == _java_hash_by_definition(text)


def test_layout_worked_example() -> None:
    # ts offset 1000 ms, region (here: instance) 1, node (shard) 3, seq 0 → 4194447360
    gen = SnowflakeGenerator(1, clock_ms=lambda: EPOCH_MS + 1000)
    snowflake = gen.next_id(3)
    assert snowflake == 4194447360
    assert (id_timestamp_ms(snowflake), id_instance(snowflake), id_shard(snowflake)) == (EPOCH_MS + 1000, 1, 3)
    assert public_payment_id(snowflake) == "pay_AAAAAPoCMAA"


def test_sequence_increments_within_a_millisecond_and_resets_on_the_next() -> None:
    now = [EPOCH_MS + 5]
    gen = SnowflakeGenerator(0, clock_ms=lambda: now[0])
    a, b = gen.next_id(0), gen.next_id(0)
    assert b == a + 1
    now[0] += 1
    c = gen.next_id(0)
    assert c & 0xFFF == 0 and c > b


def test_sequence_wrap_waits_for_the_next_millisecond() -> None:
    ticks = iter([EPOCH_MS + 7] * 4097 + [EPOCH_MS + 7, EPOCH_MS + 8] + [EPOCH_MS + 8] * 10)
    gen = SnowflakeGenerator(0, clock_ms=lambda: next(ticks))
    ids = [gen.next_id(0) for _ in range(4097)]
    assert len(set(ids)) == 4097
    assert id_timestamp_ms(ids[-1]) == EPOCH_MS + 8


def test_clock_going_backwards_never_repeats_an_id() -> None:
    times = iter([EPOCH_MS + 100, EPOCH_MS + 100, EPOCH_MS + 90, EPOCH_MS + 95, EPOCH_MS + 101])
    gen = SnowflakeGenerator(0, clock_ms=lambda: next(times))
    ids = [gen.next_id(0) for _ in range(5)]
    assert len(set(ids)) == 5
    assert ids == sorted(ids)


def test_two_instances_in_the_same_millisecond_and_shard_do_not_collide() -> None:
    """Two processes on one shard in one millisecond make different ids: the instance bits differ."""
    clock = lambda: EPOCH_MS + 42  # noqa: E731 - one frozen millisecond for both
    first, second = SnowflakeGenerator(1, clock_ms=clock), SnowflakeGenerator(2, clock_ms=clock)
    burst = [g.next_id(shard) for _ in range(2000) for g in (first, second) for shard in (3, 4)]
    assert len(set(burst)) == len(burst)


def test_ids_are_unique_and_increasing_per_shard() -> None:
    gen = SnowflakeGenerator(5)
    ids = [gen.next_id(1) for _ in range(20000)]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


@pytest.mark.parametrize("bad", [-1, 32])
def test_rejects_out_of_range_shards_and_instances(bad: int) -> None:
    with pytest.raises(ValueError, match="instance"):
        SnowflakeGenerator(bad)
    with pytest.raises(ValueError, match="shard"):
        SnowflakeGenerator(0).next_id(bad)


@pytest.mark.parametrize(("value", "encoded"), [(1, "AAAAAAAAAAE"), (10, "AAAAAAAAAAo")])
def test_public_id_examples(value: int, encoded: str) -> None:
    assert encode_public_id("pay_", value) == "pay_" + encoded
    assert decode_public_id("pay_", "pay_" + encoded) == value


@pytest.mark.parametrize("value", [0, 1, -1, 2**63 - 1, -(2**63), 4194447360])
def test_public_ids_round_trip(value: int) -> None:
    assert decode_public_id("po_", encode_public_id("po_", value)) == value
    assert len(encode_public_id("po_", value)) == len("po_") + 11


@pytest.mark.parametrize(
    "text",
    [
        "",
        "pay_",
        "po_AAAAAPoCMAA",
        "pay_AAAAAPoCMA",
        "pay_AAAAAPoCMAAA",
        "pay_AAAAAPoCMA!",
        "pay_AAAAAPoCMAB",
        "AAAAAPoCMAA",
    ],
)
def test_invalid_public_ids_are_refused(text: str) -> None:
    with pytest.raises(InvalidPublicId):
        decode_public_id("pay_", text)
