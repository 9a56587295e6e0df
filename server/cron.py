"""Cron triggers: start a graph's runs on its schedules (``GraphSpec.triggers``).

Every due time of a trigger fires exactly once, across restarts and crashes: each trigger has a watermark in the
engine's kv table (``cron:{namespace}/{graph}/{id}``) meaning "every due time up to here is handled", and firing a
due time writes the new watermark in the same group commit as the run it starts, so after any crash either both are
in the database or neither is. A due time missed while the scheduler was down fires once when it comes back (the
most recent one: a schedule that missed five slots runs once, not five times). A trigger seen for the first time
starts at "now": it never fires for due times before it was created.

One task sleeps until the next due time of all triggers (recomputed when a graph is saved or deleted); the clock
and the sleep are injectable, and ``tick()`` fires everything due, so tests drive time by hand.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import zoneinfo
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from croniter import CroniterError, croniter

from exosphere.errors import ExosphereError

from .models import CronSpec
from .triggers import TriggerRequest

if TYPE_CHECKING:
    from .engine import Engine

__all__ = ["KV_PREFIX", "CronScheduler", "latest_due_ms", "next_due_ms"]

logger = logging.getLogger(__name__)

KV_PREFIX = "cron:"
# The longest single sleep. Due times are wall-clock instants but asyncio sleeps on the monotonic clock, so a
# stepped wall clock or a suspended machine would otherwise shift a long sleep; waking now and then re-aims it.
DEFAULT_MAX_SLEEP_S = 300.0


@dataclass(slots=True, eq=False)
class _Trigger:
    key: str
    namespace: str
    graph: str
    index: int
    spec: CronSpec
    tz: zoneinfo.ZoneInfo
    watermark_ms: int  # every due time <= this has been handled (fired, or was before the trigger existed)

    def describe(self) -> str:
        return f"{self.namespace}/{self.graph} trigger #{self.index} {self.spec.expression!r} ({self.tz.key})"


def _dt(ms: int, tz: zoneinfo.ZoneInfo) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz)


def _ms(dt: datetime) -> int:
    return round(dt.timestamp() * 1000)


def latest_due_ms(expression: str, tz: zoneinfo.ZoneInfo, now_ms: int) -> int | None:
    """The most recent due time ``<= now_ms`` (epoch ms), or None when the expression has none."""
    # croniter's bounds are exclusive; due times are whole minutes, so starting 1 ms later includes ``now_ms``.
    it = croniter(expression, _dt(now_ms + 1, tz))
    for _ in range(4):  # guard against non-monotonic answers around DST changes
        due = _ms(it.get_prev(datetime))
        if due <= now_ms:
            return due
    return None


def next_due_ms(expression: str, tz: zoneinfo.ZoneInfo, after_ms: int) -> int | None:
    """The first due time ``> after_ms`` (epoch ms), or None when the expression has none."""
    it = croniter(expression, _dt(after_ms, tz))
    for _ in range(4):
        due = _ms(it.get_next(datetime))
        if due > after_ms:
            return due
    return None


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, zoneinfo.ZoneInfo("UTC")).isoformat()


def _trigger_id(spec: CronSpec, occurrence: int) -> str:
    """Stable across graph versions: the schedule (not the inputs) names a trigger; duplicates get a suffix."""
    expression = " ".join(spec.expression.split())
    digest = hashlib.sha256(f"{expression}\n{spec.timezone or 'UTC'}".encode()).hexdigest()[:16]
    return digest if occurrence == 0 else f"{digest}-{occurrence}"


class CronScheduler:
    """Fires the cron triggers of the engine's graphs. Owned by the App: ``start()`` after the engine's start,
    ``stop()`` before the engine's stop, ``reload()`` whenever a graph is saved or deleted."""

    def __init__(
        self,
        engine: Engine,
        *,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        max_sleep_s: float = DEFAULT_MAX_SLEEP_S,
    ) -> None:
        self._engine = engine
        self._clock: Callable[[], float] = clock if clock is not None else (lambda: engine.now_ms() / 1000)
        self._sleep: Callable[[float], Awaitable[None]] = sleep if sleep is not None else asyncio.sleep
        self._max_sleep_s = max_sleep_s
        self._triggers: dict[str, _Trigger] = {}
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._last_tick_ms = 0
        self.fired = 0
        self.failed = 0

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Load the triggers, fire once for each one that missed due times while down, then run the timer task."""
        if self._task is not None:
            return
        self.reload()
        await self.tick()
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="cron-scheduler")
        logger.info("cron scheduler started triggers=%d", len(self._triggers))

    async def stop(self) -> None:
        """Stop the timer task. A run being started is committed by the engine's stop, with its watermark."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        logger.info("cron scheduler stopped")

    def now_ms(self) -> int:
        return int(self._clock() * 1000)

    def reload(self, *_: object) -> None:
        """Re-read the triggers of every graph; drop the ones that are gone. Call it when a graph is saved or deleted
        (its signature accepts ``Engine.on_graph_saved``'s arguments)."""
        now = self.now_ms()
        old = self._triggers
        new: dict[str, _Trigger] = {}
        persist: dict[str, str] = {}
        for graph in self._engine.graphs():
            spec = graph.spec
            seen: dict[str, int] = {}
            for index, cron in enumerate(spec.triggers):
                base = _trigger_id(cron, 0)
                occurrence = seen.get(base, 0)
                seen[base] = occurrence + 1
                key = f"{KV_PREFIX}{spec.namespace}/{spec.name}/{_trigger_id(cron, occurrence)}"
                try:
                    tz = zoneinfo.ZoneInfo(cron.timezone or "UTC")
                except (
                    zoneinfo.ZoneInfoNotFoundError,
                    ValueError,
                    OSError,
                ) as exc:  # the engine validates; be safe anyway
                    logger.error(
                        "cron trigger skipped graph=%s/%s timezone=%r: %s",
                        spec.namespace,
                        spec.name,
                        cron.timezone,
                        exc,
                    )
                    continue
                previous = old.get(key)
                if previous is not None:
                    watermark = previous.watermark_ms
                else:
                    stored = self._read_watermark(key)
                    if stored is None:
                        # New trigger: it starts now, and never fires for due times before it existed. Saved at
                        # once, so a due time that passes while the scheduler is down still fires on restart.
                        watermark = now
                        persist[key] = str(now)
                    else:
                        watermark = stored
                trigger = _Trigger(key, spec.namespace, spec.name, index, cron, tz, watermark)
                if previous is None and self._next_due(trigger, watermark) is None:
                    logger.error("cron trigger %s has no future due time; it will never fire", trigger.describe())
                new[key] = trigger
        for key in old.keys() - new.keys():
            # Forget the watermark: if the same schedule comes back later, it starts anew instead of catching up.
            persist[key] = ""
            logger.info("cron trigger removed %s", old[key].describe())
        for key in new.keys() - old.keys():
            logger.info("cron trigger loaded %s watermark=%s", new[key].describe(), _iso(new[key].watermark_ms))
        self._triggers = new
        if persist:
            for key, value in persist.items():
                self._engine.put_kv(key, value)
        self._wake.set()

    def _read_watermark(self, key: str) -> int | None:
        value = self._engine.get_kv(key)
        if not value:
            return None
        try:
            return int(value)
        except ValueError:
            logger.error("cron watermark %s=%r unreadable; the trigger starts anew", key, value)
            return None

    # ------------------------------------------------------------------ firing

    async def tick(self) -> list[str]:
        """Fire every trigger with a due time in (its watermark, now]: once, for the most recent such due time.
        Returns the ids of the runs started."""
        async with self._lock:
            now = self.now_ms()
            self._last_tick_ms = now
            run_ids: list[str] = []
            for trigger in list(self._triggers.values()):
                if self._triggers.get(trigger.key) is not trigger:
                    continue  # removed by a reload while an earlier trigger was firing
                due = self._latest_due(trigger, now)
                if due is None or due <= trigger.watermark_ms:
                    continue
                # A schedule belongs to a shard: only the shard's owner fires it (each fires once in a cluster), and
                # it reads the watermark again, since a previous owner may have moved it.
                shard = self._engine.shards.shard_for_key(trigger.key)
                if not self._engine.shards.owns_shard(shard):
                    continue
                trigger.watermark_ms = max(trigger.watermark_ms, self._read_watermark(trigger.key) or 0)
                if due <= trigger.watermark_ms:
                    continue
                run_id = await self._fire(trigger, due, shard)
                if run_id is not None:
                    run_ids.append(run_id)
            return run_ids

    async def _fire(self, trigger: _Trigger, due: int, shard: int) -> str | None:
        engine = self._engine
        skipped = self._latest_due(trigger, due - 1)
        if skipped is not None and skipped > trigger.watermark_ms:
            logger.warning(
                "cron trigger %s missed due times after %s; firing once for %s",
                trigger.describe(),
                _iso(trigger.watermark_ms),
                _iso(due),
            )
        trigger.watermark_ms = due
        # The watermark goes into the engine's pending kv writes in the same event-loop tick as the run is created
        # (Engine.trigger creates it synchronously, before its first await), so the group commit that saves the run
        # saves the watermark too: in one transaction. A crash leaves both or neither, hence exactly once.
        engine.put_kv(trigger.key, str(due))
        try:
            run_id = await engine.trigger(
                TriggerRequest(trigger.namespace, trigger.graph, trigger.spec.inputs, trigger.spec.store, shard=shard)
            )
        except Exception as exc:
            self.failed += 1
            if isinstance(exc, ExosphereError):
                logger.error(
                    "cron trigger could not start a run graph=%s/%s trigger=#%d due=%s: %s",
                    trigger.namespace,
                    trigger.graph,
                    trigger.index,
                    _iso(due),
                    exc,
                )
            else:
                logger.exception(
                    "cron trigger failed graph=%s/%s trigger=#%d due=%s",
                    trigger.namespace,
                    trigger.graph,
                    trigger.index,
                    _iso(due),
                )
            # The due time counts as handled, so a broken trigger does not retry in a loop; commit its watermark.
            engine.put_kv(trigger.key, str(due))
            try:
                await engine.commit()
            except Exception:
                logger.exception("cron watermark not saved key=%s", trigger.key)
            return None
        self.fired += 1
        logger.info(
            "cron fired graph=%s/%s trigger=#%d due=%s run_id=%s",
            trigger.namespace,
            trigger.graph,
            trigger.index,
            _iso(due),
            run_id,
        )
        return run_id

    # ------------------------------------------------------------------ timing

    def _latest_due(self, trigger: _Trigger, now_ms: int) -> int | None:
        try:
            return latest_due_ms(trigger.spec.expression, trigger.tz, now_ms)
        except (CroniterError, ValueError, OverflowError):
            return None

    def _next_due(self, trigger: _Trigger, after_ms: int) -> int | None:
        try:
            return next_due_ms(trigger.spec.expression, trigger.tz, after_ms)
        except (CroniterError, ValueError, OverflowError):
            return None

    def next_wakeup(self) -> float | None:
        """The next due time of all triggers (epoch seconds), or None when there is none."""
        after = self._last_tick_ms
        dues = [self._next_due(t, max(t.watermark_ms, after)) for t in self._triggers.values()]
        known = [d for d in dues if d is not None]
        return min(known) / 1000 if known else None

    def triggers(self) -> list[tuple[str, str, CronSpec]]:
        """(namespace, graph, trigger) of every loaded trigger."""
        return [(t.namespace, t.graph, t.spec) for t in self._triggers.values()]

    async def _loop(self) -> None:
        overdue: float | None = None
        while True:
            self._wake.clear()
            try:
                await self.tick()
            except Exception:
                logger.exception("cron tick failed")
                await self._sleep_or_wake(1.0)
                continue
            wakeup = self.next_wakeup()
            if wakeup is None:
                await self._wake.wait()
                continue
            delay = wakeup - self._clock()
            if delay > 0:
                overdue = None
                await self._sleep_or_wake(min(delay, self._max_sleep_s))
            elif wakeup == overdue:
                # The tick did not handle a due time it should have (croniter disagreeing with itself): no hot loop.
                logger.error("cron due time %s not handled by tick; retrying in 1 s", _iso(round(wakeup * 1000)))
                await self._sleep_or_wake(1.0)
            else:
                overdue = wakeup  # became due between the tick and now: tick again at once

    async def _sleep_or_wake(self, delay: float) -> None:
        """Sleep ``delay`` seconds, or less if ``reload()`` changes the triggers meanwhile."""
        if self._wake.is_set():
            return
        sleeper = asyncio.ensure_future(self._sleep(delay))
        waker = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait((sleeper, waker), return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            waker.cancel()
