"""Programs written for the exospherehost SDK (its README and docs) run unchanged against our scheduler."""

from __future__ import annotations

import json

from pydantic import BaseModel

from exosphere import BaseNode, GraphNodeModel, RetryPolicyModel, RunStatus, StateManager, StateStatus
from tests.compat.conftest import ProgramFactory
from tests.helpers.runtimes import RuntimeFactory
from tests.helpers.waiting import assert_eventually


async def _registered(sm: StateManager, *names: str) -> None:
    async def check() -> bool:
        return set(names) <= set(await sm.list_nodes())

    await assert_eventually(check, timeout=20)


async def test_readme_quickstart_runtime_executes_its_node(spawn: ProgramFactory, my_project: StateManager) -> None:
    program = await spawn("readme_quickstart.py")
    await _registered(my_project, "SampleNode")
    await my_project.upsert_graph(
        "quickstart",
        [
            GraphNodeModel(
                node_name="SampleNode", namespace="MyProject", identifier="s", inputs={"name": "n", "data": "d"}
            )
        ],
    )
    run = await my_project.trigger("quickstart", inputs={"name": "Ada", "data": "42"})
    done = await my_project.wait(run.run_id, timeout=20)
    assert done.status is RunStatus.SUCCESS
    assert done.states[0].outputs == [{"message": "success", "processed_data": "completed:42"}]
    assert await program.terminate() == 0
    assert "Processing data for: Ada" in program.output


async def test_python_sdk_graph_page_waits_for_its_runtime_and_returns_the_graph(
    spawn: ProgramFactory, my_project: StateManager
) -> None:
    # The graph is saved while its runtime may still be starting: upsert_graph waits for the nodes.
    runtime = await spawn("graph_nodes_runtime.py")
    graph_page = await spawn("python_sdk_graph.py")
    assert await graph_page.finish() == 0, graph_page.output
    assert "Graph created/updated: VALID" in graph_page.output
    graph = await my_project.get_graph("my-workflow")
    assert [t.expression for t in graph.triggers] == ["0 9 * * 1-5", "0 */6 * * *"]
    assert graph.store_config is not None and graph.store_config.required_keys == ["cursor", "batch_id"]
    assert graph.secret_names == ["api_key"]
    run = await my_project.trigger("my-workflow", store={"cursor": "5", "batch_id": "b1"})
    done = await my_project.wait(run.run_id, timeout=20)
    assert done.status is RunStatus.SUCCESS, done
    assert json.loads(done.state("loader").outputs[0]["data"]) == {"source": "initial", "key_len": 8}
    assert done.state("processor").outputs == [{"result": "processed initial"}]
    assert await runtime.terminate() == 0


async def test_readme_advanced_usage_defaults_and_errors(spawn: ProgramFactory, my_project: StateManager) -> None:
    program = await spawn("readme_advanced_usage.py")
    program.tracebacks_expected = True  # RobustNode raises: its runtime logs the failure with the traceback
    await _registered(my_project, "ConfigurableNode", "RobustNode")
    no_retries = RetryPolicyModel(max_retries=0)
    await my_project.upsert_graph(
        "cut",
        [GraphNodeModel(node_name="ConfigurableNode", namespace="MyProject", identifier="c", inputs={"text": "t"})],
    )
    await my_project.upsert_graph(
        "robust",
        [GraphNodeModel(node_name="RobustNode", namespace="MyProject", identifier="r", inputs={"data": "d"})],
        retry_policy=no_retries,
    )
    cut = await my_project.wait((await my_project.trigger("cut", inputs={"text": "x" * 150})).run_id, timeout=20)
    assert cut.states[0].outputs == [{"result": "x" * 100, "length": "100"}]  # the Inputs default applies
    failed = await my_project.wait((await my_project.trigger("robust")).run_id, timeout=20)
    assert failed.status is RunStatus.FAILED
    assert failed.states[0].status is StateStatus.ERRORED
    assert failed.states[0].error is not None and failed.states[0].error["message"] == "This is a test error"
    assert await program.terminate() == 0


class UserNode(BaseNode):
    class Inputs(BaseModel):
        user_id: str

    class Outputs(BaseModel):
        user: str

    async def execute(self) -> Outputs:
        return self.Outputs(user=f"{self.inputs.user_id}@{self.store.get('cursor')}")


async def test_trigger_graph_page_prints_the_run_id(
    spawn: ProgramFactory, my_project: StateManager, start_runtime: RuntimeFactory
) -> None:
    await start_runtime([UserNode], namespace="MyProject")
    await my_project.upsert_graph(
        "my-graph",
        [GraphNodeModel(node_name="UserNode", namespace="MyProject", identifier="u", inputs={"user_id": "0"})],
    )
    program = await spawn("trigger_graph.py")
    assert await program.finish() == 0, program.output
    assert "Graph triggered successfully!" in program.output
    run_id = await program.wait_for_line("Run ID: ")
    done = await my_project.wait(run_id, timeout=20)
    assert done.status is RunStatus.SUCCESS
    assert done.states[0].outputs == [{"user": "123@0"}]  # trigger inputs override the template's; store kept


async def test_trigger_graph_page_reports_a_missing_graph(spawn: ProgramFactory) -> None:
    program = await spawn("trigger_graph.py")
    program.expected_code = 1  # the page re-raises after printing the error
    assert await program.finish() == 1
    assert "Error triggering graph: Failed to trigger state: 404" in program.output
    assert "GraphNotFoundError" in program.output


async def test_runtime_in_a_daemon_thread_as_the_docs_recommend(
    spawn: ProgramFactory, my_project: StateManager
) -> None:
    program = await spawn("notebook_thread.py", stdin=True)
    run_id = await program.wait_for_line("Run ID: ")
    assert "Graph status: VALID" in program.output
    done = await my_project.wait(run_id, timeout=20)
    assert done.status is RunStatus.SUCCESS
    assert done.states[0].outputs == [{"greeting": "Hello, Ada!"}]
    assert program.proc.stdin is not None
    program.proc.stdin.write(b"\n")  # the notebook is closed: the process exits, the daemon thread with it
    await program.proc.stdin.drain()
    assert await program.finish() == 0, program.output


async def test_advanced_runtime_settings_are_accepted(spawn: ProgramFactory, my_project: StateManager) -> None:
    program = await spawn("create_runtime_advanced.py")
    await _registered(my_project, "MyNode")
    await my_project.upsert_graph(
        "advanced", [GraphNodeModel(node_name="MyNode", namespace="MyProject", identifier="m", inputs={"data": "x"})]
    )
    runs = [await my_project.trigger("advanced", inputs={"data": str(i)}) for i in range(3)]
    for i, run in enumerate(runs):
        done = await my_project.wait(run.run_id, timeout=20)
        assert done.states[0].outputs == [{"result": f"Processed: {i}"}]
    assert await program.terminate() == 0


async def test_signals_prune_and_requeue(spawn: ProgramFactory, my_project: StateManager) -> None:
    program = await spawn("signals_runtime.py")
    await _registered(my_project, "FilterNode", "PollingNode")
    await my_project.upsert_graph(
        "filter", [GraphNodeModel(node_name="FilterNode", namespace="MyProject", identifier="f", inputs={"data": "ok"})]
    )
    await my_project.upsert_graph(
        "poll", [GraphNodeModel(node_name="PollingNode", namespace="MyProject", identifier="p", inputs={"job_id": "j"})]
    )
    pruned = await my_project.wait((await my_project.trigger("filter", inputs={"data": "invalid"})).run_id, timeout=20)
    assert pruned.status is RunStatus.SUCCESS
    assert pruned.states[0].status is StateStatus.PRUNED
    assert pruned.states[0].pruned_data == {"reason": "invalid_data", "error": "Data validation failed"}
    polled = await my_project.wait((await my_project.trigger("poll")).run_id, timeout=20)
    assert polled.status is RunStatus.SUCCESS
    assert polled.state("p").outputs == [{"result": "done after 3 polls"}]
    assert await program.terminate() == 0
