"""Snowflake instance ids leased from PostgreSQL: two processes never mint with the same one."""

from __future__ import annotations

import asyncio

import pytest

from marketplace_pay.infra.locks import IdsUnavailable, LeasedIdGenerator, SessionLocks
from marketplace_pay.shared.ids import id_instance


async def locks(dsn: str, name: str) -> SessionLocks:
    session = SessionLocks(dsn, application_name=name)
    await session.start()
    return session


async def test_two_processes_lease_different_ids_and_a_burst_never_collides(fresh_database: str) -> None:
    a, b = await locks(fresh_database, "proc-a"), await locks(fresh_database, "proc-b")
    try:
        gen_a = LeasedIdGenerator(a, holder="proc-a", preferred=5)
        gen_b = LeasedIdGenerator(b, holder="proc-b", preferred=5)
        assert await gen_a.acquire() == 5
        assert await gen_b.acquire() == 6
        burst = [g.next_id(shard) for _ in range(3000) for g in (gen_a, gen_b) for shard in (0, 3)]
        assert len(set(burst)) == len(burst)
        assert {id_instance(i) for i in burst} == {5, 6}
    finally:
        await a.stop()
        await b.stop()


async def test_a_vanished_holders_id_waits_until_its_heartbeat_is_stale(fresh_database: str) -> None:
    a = await locks(fresh_database, "proc-a")
    b = await locks(fresh_database, "proc-b")
    c = await locks(fresh_database, "proc-c")
    try:
        gen_a = LeasedIdGenerator(a, holder="proc-a", preferred=9, stale_after_s=1.0)
        assert await gen_a.acquire() == 9
        # proc-a's session dies (network cut, database restart): its advisory lock is gone...
        await b.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'proc-a:locks'"
        )
        # ...but its heartbeat is fresh, so nobody takes id 9 while proc-a may still be minting.
        gen_b = LeasedIdGenerator(b, holder="proc-b", preferred=9, stale_after_s=1.0)
        assert await gen_b.acquire() == 10
        await asyncio.sleep(0.6)
        with pytest.raises(IdsUnavailable):  # proc-a stops minting after stale/2 without a heartbeat
            gen_a.next_id(0)
        await asyncio.sleep(0.6)
        gen_c = LeasedIdGenerator(c, holder="proc-c", preferred=9, stale_after_s=1.0)
        assert await gen_c.acquire() == 9
    finally:
        for s in (a, b, c):
            await s.stop()


async def test_the_heartbeat_re_leases_after_a_lost_session(fresh_database: str) -> None:
    a = await locks(fresh_database, "proc-a")
    admin = await locks(fresh_database, "admin")
    try:
        gen = LeasedIdGenerator(a, holder="proc-a", preferred=12, stale_after_s=1.0)
        await gen.acquire()
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'proc-a:locks'"
        )
        with pytest.raises(Exception):  # noqa: B017, PT011 - asyncpg reports a killed session in several ways
            await gen.heartbeat()  # notices the dead session
        assert a.generation == 1
        await gen.heartbeat()  # reconnects and leases again (its own stale row is reusable)
        assert gen.instance_id is not None
        gen.next_id(1)
    finally:
        await a.stop()
        await admin.stop()
