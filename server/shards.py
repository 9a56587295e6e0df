"""Shards: every run belongs to one, and a scheduler replica holds in memory only the runs of the shards it owns.

The shard is part of the run id: its first three hex digits, modulo the number of shards the database was created
with (so run ids made before shards existed, random hex, fall into a shard as well). A single scheduler on SQLite
is a cluster of one: it owns every shard. In cluster mode (several replicas on PostgreSQL) each shard has at most
one owner at a time; the owner loads the shard's pending runs when it takes the shard and drops them from memory
when it lets the shard go, and every state of a run lives where its run lives.
"""

from __future__ import annotations

import os
import uuid

__all__ = ["MAX_SHARDS", "new_run_id", "shard_of"]

# Three hex digits of the run id.
MAX_SHARDS = 16**3


def new_run_id(shard: int) -> str:
    """A random (version 4) run id in ``shard``."""
    raw = uuid.UUID(bytes=os.urandom(16), version=4).hex
    return f"{shard:03x}{raw[3:]}"


def shard_of(run_id: str, count: int) -> int:
    """The shard of a run among ``count`` shards (0 for an id that does not start with three hex digits)."""
    try:
        return int(run_id[:3], 16) % count
    except ValueError:
        return 0
