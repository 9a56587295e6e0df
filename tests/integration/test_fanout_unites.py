"""Fan-out and unites (fan-in) through the real scheduler and real runtimes."""

from __future__ import annotations

import json
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import pytest

from exosphere import GraphNodeModel, RunStatus, StateManager, StateStatus
from server import sqlite_rows
from server.packed import PackedOutputs
from server.store import WriteBatch
from tests.engine_nodes import Act, Collect, Count, Gate, Nothing, Split, Tag
from tests.helpers.graphs import gnode, states_of
from tests.helpers.runtimes import RuntimeFactory


def merge_graph(namespace: str, csv: str, strategy: str, **act_extra: Any) -> list[GraphNodeModel]:
    """split(csv) -> act(item) per branch -> merge(values = every act.text), uniting split."""
    return [
        gnode(namespace, "Split", "split", {"csv": csv}, next_nodes=["act"]),
        gnode(namespace, "Act", "act", {"item": "${{ split.outputs.item }}"}, next_nodes=["merge"], **act_extra),
        gnode(
            namespace,
            "Collect",
            "merge",
            {"values": "${{ act.outputs.text }}"},
            unites={"identifier": "split", "strategy": strategy},
        ),
    ]


# ---------------------------------------------------------------------------------------------------- fan-out


async def test_fan_out_runs_each_downstream_node_once_per_branch_with_its_own_outputs(
    state_manager: StateManager, start_runtime: RuntimeFactory, namespace: str
) -> None:
    await start_runtime([Split, Tag])
    await state_manager.upsert_graph(
        "fan",
        [
            gnode(namespace, "Split", "split", {"csv": "a,b,c"}, next_nodes=["upper"]),
            gnode(
                namespace, "Tag", "upper", {"text": "${{ split.outputs.item }}", "suffix": "-1"}, next_nodes=["final"]
            ),
            # Reads the fan-out node two levels up and its parent: both must come from the same branch.
            gnode(namespace, "Tag", "final", {"text": "${{ split.outputs.item }}|${{ upper.outputs.text }}"}),
        ],
    )
    run = await state_manager.trigger("fan")
    result = await state_manager.wait(run.run_id, timeout=10)

    assert result.status is RunStatus.SUCCESS
    (split,) = states_of(result, "split")
    assert split.outputs == [{"item": "a"}, {"item": "b"}, {"item": "c"}]
    uppers = states_of(result, "upper")
    finals = states_of(result, "final")
    assert len(uppers) == 3 and len(finals) == 3
    assert all(s.status is StateStatus.SUCCESS for s in uppers + finals)
    assert all(s.parent_id == split.state_id for s in uppers)
    assert sorted(s.inputs["text"] for s in uppers) == ["a", "b", "c"]
    upper_by_id = {s.state_id: s for s in uppers}
    for final in finals:
        parent = upper_by_id[final.parent_id or ""]
        item = parent.inputs["text"]
        assert final.inputs["text"] == f"{item}|{item}-1"
        assert final.outputs == [{"text": f"{item}|{item}-1"}]
    assert sorted(s.outputs[0]["text"] for s in finals) == ["a|a-1", "b|b-1", "c|c-1"]


@pytest.mark.parametrize("mode", ["none", "empty"])
async def test_fan_out_of_nothing_finishes_without_outputs_and_the_next_node_runs_once(
    state_manager: StateManager, start_runtime: RuntimeFactory, namespace: str, mode: str
) -> None:
    await start_runtime([Nothing, Tag])
    await state_manager.upsert_graph(
        "empty",
        [
            gnode(namespace, "Nothing", "nothing", {"mode": mode}, next_nodes=["after"]),
            gnode(namespace, "Tag", "after", {"text": "ran"}),
        ],
    )
    run = await state_manager.trigger("empty")
    result = await state_manager.wait(run.run_id, timeout=10)

    assert result.status is RunStatus.SUCCESS
    (nothing,) = states_of(result, "nothing")
    assert nothing.status is StateStatus.SUCCESS
    assert nothing.outputs == []
    (after,) = states_of(result, "after")
    assert after.status is StateStatus.SUCCESS
    assert after.parent_id == nothing.state_id
    assert after.outputs == [{"text": "ran"}]


@pytest.mark.timeout(180)
async def test_ten_thousand_way_fan_out_with_an_aggregating_merge(
    state_manager: StateManager, start_runtime: RuntimeFactory, namespace: str
) -> None:
    n = 10_000
    await start_runtime([Count, Tag, Collect], max_concurrency=256)
    await state_manager.upsert_graph(
        "big",
        [
            gnode(namespace, "Count", "count", {"n": str(n)}, next_nodes=["ident"]),
            gnode(
                namespace, "Tag", "ident", {"text": "${{ count.outputs.item }}", "suffix": "!"}, next_nodes=["merge"]
            ),
            gnode(
                namespace,
                "Collect",
                "merge",
                # A node below the united one, and the united node itself: both aggregate in fan-out order.
                {"values": "${{ ident.outputs.text }}", "extra": "${{ count.outputs.item }}"},
                unites={"identifier": "count", "strategy": "ALL_SUCCESS"},
            ),
        ],
    )
    run = await state_manager.trigger("big")
    result = await state_manager.wait(run.run_id, timeout=120)

    assert result.status is RunStatus.SUCCESS
    assert len(states_of(result, "ident")) == n
    assert result.state_counts == {"SUCCESS": n + 2}
    (merge,) = states_of(result, "merge")
    assert merge.status is StateStatus.SUCCESS
    assert merge.inputs["values"] == json.dumps([f"{i}!" for i in range(n)])
    assert merge.inputs["extra"] == json.dumps([str(i) for i in range(n)])
    assert merge.outputs == [{"count": str(n)}]


async def test_branch_outputs_kept_as_json_text_read_back_whole_from_the_run_and_the_database(
    state_manager: StateManager,
    start_runtime: RuntimeFactory,
    namespace: str,
    db_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    packed: dict[tuple[str, int], PackedOutputs] = {}  # each finished leaf's outputs as the engine keeps them
    written: dict[tuple[str, int], object] = {}  # the outputs value each narrow update bound, by (run_id, seq)
    prepare, write = sqlite_rows.prepare, sqlite_rows.write

    def prepare_seen(batch: WriteBatch) -> sqlite_rows.PreparedRows:
        packed.update(((s.run_id, s.seq), s.outputs) for s in batch.updated_states if type(s.outputs) is PackedOutputs)
        return prepare(batch)

    def write_seen(db: sqlite3.Connection, rows: sqlite_rows.PreparedRows) -> None:
        for row in (*rows.done_updates, *rows.done_rows.rows()):
            written[str(row[6]), int(row[7])] = row[1]  # type: ignore[call-overload]
        write(db, rows)

    monkeypatch.setattr(sqlite_rows, "prepare", prepare_seen)
    monkeypatch.setattr(sqlite_rows, "write", write_seen)
    await start_runtime([Split, Act, Collect])
    await state_manager.upsert_graph("packed", merge_graph(namespace, 'a,é,"q"', "ALL_SUCCESS"))
    run = await state_manager.trigger("packed")
    result = await state_manager.wait(run.run_id, timeout=10)

    assert result.status is RunStatus.SUCCESS
    acts = sorted(states_of(result, "act"), key=lambda s: s.inputs["item"])
    assert [s.outputs for s in acts] == [[{"text": '"q"'}], [{"text": "a"}], [{"text": "é"}]]
    (merge,) = states_of(result, "merge")
    assert json.loads(merge.inputs["values"]) == ["a", "é", '"q"'] and merge.outputs == [{"count": "3"}]
    again = await state_manager.get_run(run.run_id)
    assert sorted(str(s.outputs) for s in states_of(again, "act")) == sorted(str(s.outputs) for s in acts)
    with sqlite3.connect(db_path) as db:
        stored = db.execute("SELECT outputs FROM states WHERE identifier = 'act' ORDER BY seq").fetchall()
    assert sorted((json.loads(text) for (text,) in stored), key=str) == sorted((s.outputs for s in acts), key=str)
    assert ('[{"text":"é"}]',) in stored  # the text written as made: compact, not ASCII-escaped
    # Through a real commit, each leaf's row (the branches', the merge's) bound the very text the engine keeps as its
    # outputs, and stores it.
    leaves = {key: p for key, p in packed.items() if key[0] == run.run_id}
    assert sorted((p.decoded() for p in leaves.values()), key=str) == sorted(
        (s.outputs for s in [*acts, merge]), key=str
    )
    with sqlite3.connect(db_path) as db:
        for (run_id, seq), outputs in leaves.items():
            assert written[run_id, seq] is outputs.json
            [(text,)] = db.execute("SELECT outputs FROM states WHERE run_id = ? AND seq = ?", (run_id, seq))
            assert text == outputs.json


# ---------------------------------------------------------------------------------------------------- unites


async def test_all_success_merge_with_a_failed_branch_fails_the_run_without_a_merge(
    state_manager: StateManager, start_runtime: RuntimeFactory, namespace: str
) -> None:
    await start_runtime([Split, Act, Collect])
    await state_manager.upsert_graph(
        "all-success-fail", merge_graph(namespace, "a,fail,b", "ALL_SUCCESS"), retry_policy={"max_retries": 0}
    )
    run = await state_manager.trigger("all-success-fail")
    result = await state_manager.wait(run.run_id, timeout=10)

    assert result.status is RunStatus.FAILED
    acts = states_of(result, "act")
    assert sorted(s.status.value for s in acts) == ["ERRORED", "SUCCESS", "SUCCESS"]
    assert states_of(result, "merge") == []


async def test_all_done_merge_fires_once_after_an_errored_last_branch_and_a_pruned_branch(
    state_manager: StateManager, start_runtime: RuntimeFactory, namespace: str
) -> None:
    await start_runtime([Split, Act, Collect])
    # The failing branch is last in fan-out order, and one retry after 150 ms makes it also the last to finish.
    graph = merge_graph(
        namespace,
        "ok,prune,fail",
        "ALL_DONE",
        retry_policy={"max_retries": 1, "strategy": "FIXED", "backoff_factor": 150},
    )
    await state_manager.upsert_graph("all-done", graph, retry_policy={"max_retries": 0})
    run = await state_manager.trigger("all-done")
    result = await state_manager.wait(run.run_id, timeout=10)

    assert result.status is RunStatus.FAILED  # a state errored
    acts = {s.inputs["item"] + f"#{s.attempt}": s for s in states_of(result, "act")}
    assert {k: s.status.value for k, s in acts.items()} == {
        "ok#1": "SUCCESS",
        "prune#1": "PRUNED",
        "fail#1": "RETRY_CREATED",
        "fail#2": "ERRORED",
    }
    assert acts["prune#1"].pruned_data == {"item": "prune"}
    errored = acts["fail#2"]
    assert errored.updated_at is not None
    assert all(s.updated_at is not None and s.updated_at <= errored.updated_at for s in acts.values())

    merges = states_of(result, "merge")
    assert len(merges) == 1
    (merge,) = merges
    assert merge.status is StateStatus.SUCCESS
    assert merge.created_at is not None and merge.created_at >= errored.updated_at
    assert merge.inputs["values"] == json.dumps(["ok"])  # only succeeded branches are aggregated


async def test_pruned_branch_counts_as_done_under_all_success(
    state_manager: StateManager, start_runtime: RuntimeFactory, namespace: str
) -> None:
    await start_runtime([Split, Act, Collect])
    await state_manager.upsert_graph(
        "all-success-prune", merge_graph(namespace, "a,prune,b", "ALL_SUCCESS"), retry_policy={"max_retries": 0}
    )
    run = await state_manager.trigger("all-success-prune")
    result = await state_manager.wait(run.run_id, timeout=10)

    assert result.status is RunStatus.SUCCESS
    acts = {s.inputs["item"]: s for s in states_of(result, "act")}
    assert acts["prune"].status is StateStatus.PRUNED
    (merge,) = states_of(result, "merge")
    assert merge.status is StateStatus.SUCCESS
    assert merge.inputs["values"] == json.dumps(["a", "b"])
    assert merge.outputs == [{"count": "2"}]


async def test_branches_finishing_in_the_same_batch_create_exactly_one_merge(
    state_manager: StateManager, start_runtime: RuntimeFactory, namespace: str
) -> None:
    n = 150
    runs_count = 3
    # Two runtimes share the branches; the Gate holds every branch of a run until all have started, so they
    # return together and their results reach the scheduler in one or two batches.
    await start_runtime([Count, Gate, Collect], name="rt-a", max_concurrency=256)
    await start_runtime([Count, Gate, Collect], name="rt-b", max_concurrency=256)
    await state_manager.upsert_graph(
        "burst",
        [
            gnode(namespace, "Count", "count", {"n": str(n)}, next_nodes=["gate"]),
            gnode(
                namespace,
                "Gate",
                "gate",
                {"key": "${{ store.key }}", "total": str(n), "item": "${{ count.outputs.item }}"},
                next_nodes=["merge"],
            ),
            gnode(
                namespace,
                "Collect",
                "merge",
                {"values": "${{ gate.outputs.text }}"},
                unites={"identifier": "count", "strategy": "ALL_SUCCESS"},
            ),
        ],
        store_config={"required_keys": ["key"]},
    )
    triggered = await state_manager.trigger_many(
        "burst", [{"store": {"key": uuid.uuid4().hex}} for _ in range(runs_count)]
    )
    for run in triggered:
        result = await state_manager.wait(run.run_id, timeout=30)
        assert result.status is RunStatus.SUCCESS
        merges = states_of(result, "merge")
        assert len(merges) == 1, [m.state_id for m in merges]
        assert merges[0].inputs["values"] == json.dumps([str(i) for i in range(n)])
        assert result.state_counts == {"SUCCESS": n + 2}
        finished = [g.updated_at.timestamp() for g in states_of(result, "gate") if g.updated_at is not None]
        assert len(finished) == n and max(finished) - min(finished) < 0.5  # the branches did finish together
