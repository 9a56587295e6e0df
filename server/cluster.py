"""Cluster mode: several schedulers on one PostgreSQL database share the shards, and take over each other's.

Each replica heartbeats a row in ``members`` and holds the leases of the shards it owns in ``shard_leases`` (owner,
epoch, expiry), renewing them every heartbeat. Shards are spread over the live replicas by rendezvous hashing, so a
replica joining or leaving moves only the shards it gains or loses. A replica takes a shard whose lease is free or
expired by bumping its epoch (so a former owner's late commit is fenced: server/store.py ``Fence``), loads the
shard's pending runs and continues them as recovery does; it lets a shard it should no longer own go, commits what
the shard changed, then gives the lease back. SIGTERM gives every lease back at once; a replica that dies keeps its
leases until they expire (``lease``), and a replica that cannot renew its leases for that long drops its shards
itself, since another one may own them by then.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections import Counter
from collections.abc import Collection, Sequence
from datetime import timedelta

import asyncpg

from .engine import Engine
from .replicas import ReplicaReport, ReplicaView, report_of

__all__ = ["ClusterMember", "rendezvous_owner"]

logger = logging.getLogger(__name__)


def rendezvous_owner(shard: int, replicas: Sequence[str]) -> str | None:
    """The replica that should own ``shard`` among ``replicas`` (highest random weight; stable across processes)."""

    def weight(replica: str) -> bytes:
        return hashlib.blake2b(f"{replica}/{shard}".encode(), digest_size=8).digest()

    return max(replicas, key=weight, default=None)


class ClusterMember:
    """This replica's membership and shard leases; ``start()`` after the engine's start, ``stop()`` before its stop."""

    def __init__(
        self,
        dsn: str,
        engine: Engine,
        *,
        replica_id: str,
        address: str,
        lease: timedelta = timedelta(seconds=5),
        heartbeat: timedelta = timedelta(seconds=1),
    ) -> None:
        self.replica_id = replica_id
        self.address = address
        self._dsn = dsn
        self._engine = engine
        self._lease_s = lease.total_seconds()
        self._heartbeat_s = heartbeat.total_seconds()
        self._conn: asyncpg.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._renewed_at = time.monotonic()
        self._seen_catalog: object = None
        self._ticking = asyncio.Lock()  # one heartbeat at a time on the one connection
        self.live: list[str] = []
        # The live replicas as the last heartbeat read them (the dashboard's cluster view, server/replicas.py).
        self.view: list[ReplicaView] = []
        self.desired: frozenset[int] = frozenset()

    async def start(self) -> None:
        self._conn = await asyncpg.connect(self._dsn, timeout=10)
        await self._conn.execute(
            "INSERT INTO shard_leases (shard) SELECT generate_series(0, $1::int - 1) ON CONFLICT DO NOTHING",
            self._engine.shards.count,
        )
        self._engine.shards.owner_id = self.replica_id
        self._engine.catalog.shared = True
        await self.tick()
        # Ready means balanced: the replicas that hold our share give it back on their next heartbeat.
        deadline = time.monotonic() + 3 * self._heartbeat_s
        while self._engine.shards.owned != self.desired and time.monotonic() < deadline:
            await asyncio.sleep(self._heartbeat_s / 4)
            await self.tick()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="cluster-member")
        logger.info(
            "cluster member started replica=%s address=%s shards=%d owned=%d",
            self.replica_id, self.address, self._engine.shards.count, len(self._engine.shards.owned),
        )  # fmt: skip

    async def stop(self) -> None:
        """Give every shard back at once (a SIGTERM hand-over) and leave the membership. Idempotent."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            async with self._ticking:
                await self._give_back(conn, self._engine.shards.owned)
                await conn.execute("DELETE FROM members WHERE replica_id = $1", self.replica_id)
        except (OSError, asyncpg.PostgresError) as exc:
            logger.warning("could not hand shards over on stop (their leases expire instead): %s", exc)
        finally:
            await conn.close()
        logger.info("cluster member stopped replica=%s", self.replica_id)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._heartbeat_s)
            try:
                await self.tick()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                logger.warning("cluster heartbeat failed replica=%s: %s", self.replica_id, exc)
                if time.monotonic() - self._renewed_at > self._lease_s:
                    self._engine.shards.drop(self._engine.shards.owned)  # our leases have expired by now
                await self._reconnect()

    async def _reconnect(self) -> None:
        conn = self._conn
        if conn is not None and not conn.is_closed():
            return
        with contextlib.suppress(OSError, asyncpg.PostgresError, TimeoutError):
            self._conn = await asyncpg.connect(self._dsn, timeout=5)

    async def tick(self) -> None:
        """One heartbeat: renew our leases (dropping the ones lost), then move shards toward the balance."""
        async with self._ticking:
            await self._tick()

    async def _tick(self) -> None:
        conn = self._conn
        assert conn is not None
        shards = self._engine.shards
        lease = timedelta(seconds=self._lease_s)
        await conn.execute(
            "INSERT INTO members (replica_id, address, heartbeat_at, report) VALUES ($1, $2, now(), $3) "
            "ON CONFLICT (replica_id) DO UPDATE SET address = $2, heartbeat_at = now(), report = $3",
            self.replica_id, self.address, report_of(self._engine).to_json(),
        )  # fmt: skip
        owned = sorted(shards.owned)
        renewed = await conn.fetch(
            "UPDATE shard_leases SET expires_at = now() + $3::interval "
            "WHERE owner = $1 AND shard = ANY($2::int[]) RETURNING shard, epoch",
            self.replica_id, owned, lease,
        )  # fmt: skip
        kept = {r["shard"] for r in renewed if r["epoch"] == shards.epoch(r["shard"])}
        self._renewed_at = time.monotonic()
        if lost := set(owned) - kept:
            shards.drop(lost)
        members = await conn.fetch(
            "SELECT replica_id, address, report, extract(epoch FROM now() - heartbeat_at)::float8 AS age_s "
            "FROM members WHERE heartbeat_at > now() - $1::interval ORDER BY replica_id",
            lease,
        )
        self.live = [r["replica_id"] for r in members]
        if self.replica_id not in self.live:
            self.live.append(self.replica_id)
        self._engine.runtimes.set_replicas({r["address"] for r in members} | {self.address}, self.address)
        owners = await conn.fetch(
            "SELECT l.shard, l.owner, m.address FROM shard_leases l JOIN members m ON m.replica_id = l.owner "
            "WHERE l.expires_at > now()"
        )
        shards.owners = {r["shard"]: r["address"] for r in owners}
        held = Counter(r["owner"] for r in owners)
        now = time.monotonic()
        self.view = [
            ReplicaView(
                r["replica_id"], r["address"], held[r["replica_id"]], now - r["age_s"],
                ReplicaReport.from_json(r["report"], r["replica_id"]), is_self=r["replica_id"] == self.replica_id,
            )
            for r in members
        ]  # fmt: skip
        desired = {s for s in range(shards.count) if rendezvous_owner(s, self.live) == self.replica_id}
        self.desired = frozenset(desired)
        for shard in sorted(desired - shards.owned):
            epoch = await conn.fetchval(
                "UPDATE shard_leases SET owner = $1, epoch = epoch + 1, expires_at = now() + $3::interval "
                "WHERE shard = $2 AND (owner IS NULL OR owner = $1 OR expires_at < now()) RETURNING epoch",
                self.replica_id, shard, lease,
            )  # fmt: skip
            if epoch is not None:
                shards.acquire([shard], {shard: epoch})
        if extra := shards.owned - desired:
            await self._give_back(conn, extra)
        await self._refresh_catalog(conn)

    async def _refresh_catalog(self, conn: asyncpg.Connection) -> None:
        """Graphs and node registrations are saved by whichever replica a client or runtime reached: take them
        here too, when a cheap fingerprint of both tables says something changed."""
        seen = await conn.fetchrow(
            "SELECT (SELECT count(*) FROM graphs) AS graphs, "
            "(SELECT coalesce(sum(version), 0) FROM graphs) AS versions, "
            "(SELECT count(*) FROM nodes) AS nodes, "
            "(SELECT coalesce(max(updated_at_ms), 0) FROM nodes) AS updated"
        )
        fingerprint = tuple(seen) if seen is not None else None
        if fingerprint != self._seen_catalog:
            self._engine.refresh_from_store()
            self._seen_catalog = fingerprint

    async def _give_back(self, conn: asyncpg.Connection, shards: Collection[int]) -> None:
        if not shards:
            return
        await self._engine.shards.release(shards)
        await conn.execute(
            "UPDATE shard_leases SET owner = NULL, expires_at = NULL WHERE owner = $1 AND shard = ANY($2::int[])",
            self.replica_id, sorted(shards),
        )  # fmt: skip
        self._engine.shards.given_back(shards)
