"""Cron in a cluster: three schedulers share one store and the shards; each due time fires exactly once."""

from __future__ import annotations

from server.cron import CronScheduler
from server.engine import Engine
from server.models import CronSpec
from server.secrets import SecretBox
from server.store import InMemoryStore
from tests.unit.test_cron import ECHO, NS, FakeClock, graph, never, ts

SHARDS = 6


async def test_each_due_time_fires_once_across_three_schedulers_even_when_its_shard_moves() -> None:
    store = InMemoryStore()
    clock = FakeClock(ts(2026, 1, 1, 12, 0, 30))
    box = SecretBox(b"c" * 32)
    engines: list[Engine] = []
    crons: list[CronScheduler] = []
    for index in range(3):
        engine = Engine(store, secret_box=box, shard_count=SHARDS, own_all_shards=False)
        engine.runtimes.nodes[NS, "Echo"] = ECHO
        await engine.start()
        engine.catalog.shared = True  # as cluster mode sets it: graphs saved elsewhere are found in the store
        engine.shards.acquire([s for s in range(SHARDS) if s % 3 == index])
        cron = CronScheduler(engine, clock=clock, sleep=never)
        engine.on_graph_saved = cron.reload
        await cron.start()
        engines.append(engine)
        crons.append(cron)
    try:
        await engines[0].upsert_graph(graph(triggers=[CronSpec(expression="* * * * *")]), None)
        for engine in engines[1:]:
            engine.refresh_from_store()  # what each cluster heartbeat does
        [key] = crons[0].trigger_keys()
        key_shard = engines[0].shards.shard_for_key(key)
        owner = next(i for i, e in enumerate(engines) if e.shards.owns_shard(key_shard))

        async def minute() -> None:
            clock.advance(60)
            for cron in crons:
                await cron.tick()
            for engine in engines:
                await engine.commit()

        for _ in range(3):
            await minute()
        # The schedule's shard moves to another scheduler (its owner left): the watermark moves with the store.
        await engines[owner].shards.release([key_shard])
        engines[(owner + 1) % 3].shards.acquire([key_shard])
        for _ in range(3):
            await minute()
        runs = store.list_runs(NS, "g", 100)
        assert len(runs) == 6  # 12:01 .. 12:06, once each
        assert sum(c.fired for c in crons) == 6
        assert crons[owner].fired == 3 and crons[(owner + 1) % 3].fired == 3
    finally:
        for cron in crons:
            await cron.stop()
        for engine in engines:
            await engine.stop()
