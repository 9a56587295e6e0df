"""Cron triggers end to end: a real App over SQLite, a real runtime, a fake clock driving the CronScheduler."""

from __future__ import annotations

import asyncio
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime

import pytest

from exosphere import CronTrigger, GraphNodeModel, RunStatus, Runtime, StateManager
from server.app import App
from server.config import ServerConfig
from server.cron import CronScheduler
from tests.helpers.runtimes import RuntimeFactory, running
from tests.nodes import Echo

T0 = datetime(2025, 1, 6, 10, 0, 30, tzinfo=UTC).timestamp()  # half a minute past a due time


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def _never(_: float) -> None:
    await asyncio.Event().wait()  # the test moves the clock and calls tick()


async def _start_app(config: ServerConfig, clock: FakeClock) -> tuple[App, CronScheduler]:
    """A new App over the same SQLite file, its cron triggers driven by the test's clock."""
    app = App(config)
    cron = _install(app, clock)
    await app.start()
    if getattr(app, "cron", None) is not cron:
        await cron.start()
    return app, cron


def _install(app: App, clock: FakeClock) -> CronScheduler:
    """Give ``app`` a CronScheduler on the fake clock: in place of its own once App owns one (then App.start/stop
    drive it), else wired by hand the way App will wire it."""
    cron = CronScheduler(app.engine, clock=clock, sleep=_never)
    app.engine.on_graph_saved = cron.reload
    if hasattr(app, "cron"):
        app.cron = cron
    return cron


async def _stop_app(app: App, cron: CronScheduler) -> None:
    await cron.stop()  # before the engine stops; idempotent, so App.stop stopping it again is fine
    await app.stop(grace=0.5)


def _runtime(namespace: str, address: str) -> AbstractAsyncContextManager[Runtime]:
    return running(Runtime(namespace=namespace, name="cron-runtime", nodes=[Echo], address=address))


async def _all_succeeded(sm: StateManager, expected: int) -> list[str]:
    """Wait until the graph has ``expected`` runs, all SUCCESS with the trigger's input; their ids, oldest first."""
    runs, _ = await sm.list_runs("ticker", page_size=100)
    assert len(runs) == expected, [r.run_id for r in runs]
    for run in runs:
        done = await sm.wait(run.run_id, timeout=10)
        assert done.status is RunStatus.SUCCESS
        assert done.states[0].outputs == [{"text": "from-cron"}]
    return [r.run_id for r in reversed(runs)]


@pytest.mark.timeout(120)
async def test_cron_runs_once_per_minute_across_a_restart(
    app: App,
    server_config: ServerConfig,
    state_manager: StateManager,
    start_runtime: RuntimeFactory,
    namespace: str,
) -> None:
    clock = FakeClock(T0)
    own = getattr(app, "cron", None)
    if own is not None:  # the fixture's App already started its scheduler on the real clock: replace it
        await own.stop()
    cron = _install(app, clock)
    await cron.start()
    await start_runtime([Echo])
    await state_manager.upsert_graph(
        "ticker",
        [GraphNodeModel(node_name="Echo", namespace=namespace, identifier="echo")],
        triggers=[CronTrigger(expression="* * * * *", inputs={"text": "from-cron"})],
    )
    assert [t.expression for _, _, t in cron.triggers()] == ["* * * * *"]
    assert await cron.tick() == []  # 10:00 was before the graph existed

    clock.now += 60  # 10:01:30
    assert len(await cron.tick()) == 1
    assert await cron.tick() == []
    first = await _all_succeeded(state_manager, 1)

    # Restart mid-minute: nothing new fires.
    await _stop_app(app, cron)
    second_app, cron = await _start_app(server_config, clock)
    try:
        async with (
            StateManager(namespace, address=second_app.address) as sm,
            _runtime(namespace, second_app.address),
        ):
            assert await _all_succeeded(sm, 1) == first

            clock.now += 60  # 10:02:30
            assert len(await cron.tick()) == 1
            before_restart = await _all_succeeded(sm, 2)

            # Down across 10:03 and 10:04: one catch-up run when it comes back, then one per minute again.
            await _stop_app(second_app, cron)
            clock.now += 125  # 10:04:35
            second_app, cron = await _start_app(server_config, clock)  # fires the catch-up run (for 10:04)
            assert cron.fired == 1
            assert await cron.tick() == []
        async with (
            StateManager(namespace, address=second_app.address) as sm,
            _runtime(namespace, second_app.address),
        ):
            after_restart = await _all_succeeded(sm, 3)
            assert after_restart[:2] == before_restart
            clock.now += 30  # 10:05:05
            assert len(await cron.tick()) == 1
            await _all_succeeded(sm, 4)
    finally:
        await _stop_app(second_app, cron)
