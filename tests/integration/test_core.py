"""Core behaviour through real gRPC: validation, chains with references and store, namespaces, secrets."""

from __future__ import annotations

import pytest

from exosphere import (
    GraphNotFoundError,
    GraphValidationError,
    InvalidArgumentError,
    RunStatus,
    StateManager,
    StoreConfigModel,
)
from exosphere.errors import RunNotFoundError
from tests.helpers.graphs import gnode
from tests.helpers.runtimes import RuntimeFactory
from tests.nodes import Concat, Echo, Needs, SeesSecrets, Upper


async def test_three_node_chain_with_references_and_store(
    state_manager: StateManager, start_runtime: RuntimeFactory, namespace: str
) -> None:
    await start_runtime([Echo, Upper, Concat])
    await state_manager.upsert_graph(
        "chain",
        [
            gnode(
                namespace, "Echo", "first", {"text": "${{ store.greeting }}, ${{ store.name }}"}, next_nodes=["second"]
            ),
            gnode(namespace, "Upper", "second", {"text": "${{ first.outputs.text }}!"}, next_nodes=["third"]),
            gnode(
                namespace,
                "Concat",
                "third",
                {"left": "${{first.outputs.text}} / ${{ second.outputs.text }}", "right": " (${{ store.name }})"},
            ),
        ],
        store_config=StoreConfigModel(required_keys=["name"], default_values={"greeting": "hello"}),
    )
    run = await state_manager.trigger("chain", store={"name": "ada"})
    result = await state_manager.wait(run.run_id, timeout=20)
    assert result.status is RunStatus.SUCCESS
    assert result.state("first").outputs == [{"text": "hello, ada"}]
    assert result.state("second").outputs == [{"text": "HELLO, ADA!"}]
    assert result.state("third").outputs == [{"text": "hello, ada / HELLO, ADA! (ada)"}]
    assert result.store == {"greeting": "hello", "name": "ada"}
    assert [s.identifier for s in result.states] == ["first", "second", "third"]
    assert all(s.created_at and s.updated_at and s.attempt == 1 for s in result.states)


async def test_trigger_inputs_override_root_template(
    state_manager: StateManager, start_runtime: RuntimeFactory, namespace: str
) -> None:
    await start_runtime([Echo])
    await state_manager.upsert_graph("g", [gnode(namespace, "Echo", "e", {"text": "template"})])
    result = await state_manager.wait((await state_manager.trigger("g", inputs={"text": "given"})).run_id, timeout=10)
    assert result.states[0].outputs == [{"text": "given"}]
    with pytest.raises(InvalidArgumentError, match="'nope'"):
        await state_manager.trigger("g", inputs={"nope": "x"})


async def test_validation_reports_every_problem_at_once(
    state_manager: StateManager, start_runtime: RuntimeFactory, namespace: str
) -> None:
    await start_runtime([Echo, Concat, Needs])
    nodes = [
        gnode(namespace, "Echo", "a", {"text": "${{ store.missing }}"}, next_nodes=["b", "ghost"]),
        gnode(namespace, "Echo", "b", {"text": "${{ c.outputs.text }}", "extra": "x"}, next_nodes=["c"]),
        gnode(namespace, "Concat", "c", {"right": "${{ a.outputs.nope }}"}, next_nodes=["b"]),
        gnode(namespace, "Echo", "lonely", {"text": "${{ a.outputs.text"}),
        gnode(namespace, "Unknown", "u", {}),
        gnode(namespace, "Needs", "n", {"text": "x"}),
        gnode(namespace, "Echo", "a", {"text": "dup"}),
    ]
    with pytest.raises(GraphValidationError) as info:
        await state_manager.upsert_graph("bad", nodes)
    errors = "\n".join(info.value.errors)
    expected = [
        "duplicate identifier 'a'",
        "next_nodes target 'ghost' does not exist",
        "exactly one root",
        "cycle",
        "input 'extra' is not declared",
        "required input 'left'",
        "output 'nope'",
        "unclosed",
        "'Unknown' is not registered",
        "store key 'missing'",
        "secrets ['token']",
    ]
    for fragment in expected:
        assert fragment in errors, f"{fragment!r} missing from:\n{errors}"


async def test_reserved_identifier_and_non_ancestor_reference(
    state_manager: StateManager, start_runtime: RuntimeFactory, namespace: str
) -> None:
    await start_runtime([Echo])
    with pytest.raises(ValueError, match="reserved"):
        gnode(namespace, "Echo", "store", {"text": "x"})
    nodes = [
        gnode(namespace, "Echo", "root", {"text": "x"}, next_nodes=["left", "right"]),
        gnode(namespace, "Echo", "left", {"text": "${{ right.outputs.text }}"}),
        gnode(namespace, "Echo", "right", {"text": "${{ root.outputs.text }}"}),
    ]
    with pytest.raises(GraphValidationError, match="'right', which is not an ancestor"):
        await state_manager.upsert_graph("g", nodes)
    with pytest.raises(GraphValidationError, match="root"):
        await state_manager.upsert_graph("g2", [gnode(namespace, "Echo", "r", {"text": "${{ r.outputs.text }}"})])


async def test_namespaces_are_isolated(server_address: str, start_runtime: RuntimeFactory) -> None:
    await start_runtime([Echo], namespace="dev-iso", name="dev")
    await start_runtime([Upper], namespace="prod-iso", name="prod")
    async with (
        StateManager("dev-iso", address=server_address) as dev,
        StateManager("prod-iso", address=server_address) as prod,
    ):
        # Upper is registered in prod only: a dev graph may not use it.
        with pytest.raises(GraphValidationError, match="not registered in namespace 'dev-iso'"):
            await dev.upsert_graph("g", [gnode("dev-iso", "Upper", "u", {"text": "x"})])
        await dev.upsert_graph("g", [gnode("dev-iso", "Echo", "e", {"text": "x"})])
        with pytest.raises(GraphNotFoundError):
            await prod.trigger("g")
        result = await dev.wait((await dev.trigger("g")).run_id, timeout=10)
        assert result.status is RunStatus.SUCCESS
        assert await prod.list_nodes() == ["Upper"]


async def test_secrets_reach_only_the_nodes_that_declare_them(
    state_manager: StateManager, start_runtime: RuntimeFactory, namespace: str
) -> None:
    await start_runtime([Needs, SeesSecrets])
    await state_manager.upsert_graph(
        "s",
        [
            gnode(namespace, "Needs", "needs", {"text": "x"}, next_nodes=["sees"]),
            gnode(namespace, "SeesSecrets", "sees", {"text": "${{ needs.outputs.text }}"}),
        ],
        secrets={"token": "s3cr3t-value", "unrelated": "other"},
    )
    result = await state_manager.wait((await state_manager.trigger("s")).run_id, timeout=10)
    assert result.state("needs").outputs == [{"text": "x", "secret_len": "12", "secret_fields": "token"}]
    assert result.state("sees").outputs == [{"secrets_seen": "{}"}]
    graph = await state_manager.get_graph("s")
    assert graph.secret_names == ["token", "unrelated"]
    assert "s3cr3t" not in graph.model_dump_json()
    assert "s3cr3t" not in result.model_dump_json()


async def test_unknown_run_is_a_clear_error(state_manager: StateManager) -> None:
    with pytest.raises(RunNotFoundError, match="nope"):
        await state_manager.get_run("nope")


async def test_list_graphs_and_get_graph(
    state_manager: StateManager, start_runtime: RuntimeFactory, namespace: str
) -> None:
    await start_runtime([Echo])
    await state_manager.upsert_graph("a", [gnode(namespace, "Echo", "e", {"text": "1"})])
    saved = await state_manager.upsert_graph("a", [gnode(namespace, "Echo", "e", {"text": "2"})])
    assert saved.version == 2
    assert [g.name for g in await state_manager.list_graphs()] == ["a"]
    assert (await state_manager.get_graph("a")).nodes[0].inputs == {"text": "2"}


async def test_trigger_and_wait_in_one_call(
    state_manager: StateManager, start_runtime: RuntimeFactory, namespace: str
) -> None:
    await start_runtime([Echo])
    await state_manager.upsert_graph("tw", [gnode(namespace, "Echo", "e", {"text": "once"})])
    quick = await state_manager.trigger_and_wait("tw", inputs={"text": "fast"}, states=False, timeout=10)
    assert quick.status is RunStatus.SUCCESS and quick.states == []
    full = await state_manager.trigger_and_wait("tw", timeout=10)
    assert full.states[0].outputs == [{"text": "once"}]
    with pytest.raises(GraphNotFoundError):
        await state_manager.trigger_and_wait("missing", timeout=10)
