"""The ``exosphere`` command line against a real scheduler: in a thread through ``main`` and as a real process.

The in-process scheduler runs in the test's event loop, so ``main`` (which calls ``asyncio.run``) runs in a thread.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from pathlib import Path

import yaml

from exosphere import RunStatus, StateManager
from tests.helpers.cli import Result, cli, one_error_line, run_cli
from tests.helpers.runtimes import RuntimeFactory
from tests.nodes import Echo


def echo_graph(namespace: str | None, name: str = "echo-graph") -> dict[str, object]:
    graph: dict[str, object] = {
        "name": name,
        "nodes": [
            {
                "node_name": "Echo",
                "identifier": "first",
                "inputs": {"text": "${{ store.text }}"},
                "next_nodes": ["second"],
            },
            {"node_name": "Echo", "identifier": "second", "inputs": {"text": "${{ first.outputs.text }}"}},
        ],
        "store_config": {"required_keys": ["text"]},
    }
    if namespace is not None:
        graph["namespace"] = namespace
    return graph


async def test_apply_yaml_trigger_wait_and_inspect(
    tmp_path: Path, server_address: str, namespace: str, start_runtime: RuntimeFactory
) -> None:
    await start_runtime([Echo])
    path = tmp_path / "graph.yaml"
    path.write_text(yaml.safe_dump(echo_graph(namespace)))  # nodes without a namespace get the graph's

    applied = await cli("graph", "apply", str(path), "--address", server_address)
    assert applied.code == 0, applied.err
    assert "echo-graph" in applied.out and "version 1" in applied.out

    # The connection option may also come before the command.
    waited = await cli(
        "--address", server_address, "trigger", namespace, "echo-graph", "--store", "text=hello cli", "--wait"
    )
    assert waited.code == 0, waited.err
    assert "SUCCESS" in waited.out
    assert "text=hello cli" in waited.out
    assert "first" in waited.out and "second" in waited.out

    listed = await cli("runs", "list", namespace, "--address", server_address)
    assert listed.code == 0, listed.err
    run_lines = [line for line in listed.out.splitlines() if "echo-graph" in line]
    assert len(run_lines) == 1 and "SUCCESS" in run_lines[0]
    run_id = run_lines[0].split()[1]

    shown = await cli("runs", "show", run_id, "--json", "--address", server_address)
    assert shown.code == 0, shown.err
    run = json.loads(shown.out)
    assert run["run_id"] == run_id
    assert run["status"] == "SUCCESS"
    assert [s["identifier"] for s in run["states"]] == ["first", "second"]
    assert run["states"][1]["outputs"] == [{"text": "hello cli"}]

    table = await cli("runs", "show", run_id, "--address", server_address)
    assert table.code == 0 and run_id in table.out and "hello cli" in table.out

    watched = await cli("runs", "watch", run_id, "--address", server_address)
    assert watched.code == 0, watched.err
    assert f"run {run_id} SUCCESS" in watched.out

    got = await cli("graph", "get", namespace, "echo-graph", "--json", "--address", server_address)
    assert got.code == 0 and json.loads(got.out)["version"] == 1
    graphs = await cli("graph", "list", namespace, "--address", server_address)
    assert graphs.code == 0 and "echo-graph" in graphs.out
    nodes = await cli("nodes", "list", namespace, "--address", server_address)
    assert nodes.code == 0 and nodes.out.split() == ["Echo", "online"]


async def test_apply_json_with_overrides_and_round_trip(
    tmp_path: Path, server_address: str, namespace: str, start_runtime: RuntimeFactory, state_manager: StateManager
) -> None:
    await start_runtime([Echo])
    path = tmp_path / "graph.json"
    path.write_text(json.dumps(echo_graph("some-other-namespace", name="ignored")))
    applied = await cli(
        "graph", "apply", str(path), "--namespace", namespace, "--name", "from-json", "--address", server_address
    )
    assert applied.code == 0, applied.err
    assert "from-json" in applied.out and "version 1" in applied.out
    graph = await state_manager.get_graph("from-json")
    assert {n.namespace for n in graph.nodes} == {namespace}

    # What `graph get --json` prints can be applied again: it makes the next version.
    got = await cli("graph", "get", namespace, "from-json", "--json", "--address", server_address)
    again = tmp_path / "again.json"
    again.write_text(got.out)
    reapplied = await cli("graph", "apply", str(again), "--address", server_address)
    assert reapplied.code == 0, reapplied.err
    assert "version 2" in reapplied.out

    triggered = await cli("trigger", namespace, "from-json", "--store", "text=x", "--address", server_address)
    assert triggered.code == 0, triggered.err
    run_id = triggered.out.strip()
    finished = await state_manager.wait(run_id, timeout=10)
    assert finished.status is RunStatus.SUCCESS

    deleted = await cli("graph", "delete", namespace, "from-json", "--address", server_address)
    assert deleted.code == 0, deleted.err
    missing = await cli("graph", "get", namespace, "from-json", "--address", server_address)
    assert missing.code == 1
    assert one_error_line(missing) == f"error: graph 'from-json' not found in namespace '{namespace}'"


async def test_failed_run_with_wait_exits_1(
    server_address: str, namespace: str, start_runtime: RuntimeFactory, state_manager: StateManager
) -> None:
    await start_runtime([Echo])
    await state_manager.upsert_graph(
        "delayed", [{"node_name": "Echo", "namespace": namespace, "identifier": "echo", "inputs": {"text": "x"}}]
    )
    triggered = await cli(
        "trigger", namespace, "delayed", "--start-delay", "60000", "--json", "--address", server_address
    )
    assert triggered.code == 0, triggered.err
    run_id = json.loads(triggered.out)["run_id"]
    cancelled = await cli("runs", "cancel", run_id, "--address", server_address)
    assert cancelled.code == 0 and "CANCELLED" in cancelled.out
    watched = await cli("runs", "watch", run_id, "--address", server_address)
    assert watched.code == 1 and "CANCELLED" in watched.out


async def test_graph_validation_error_prints_every_problem(
    tmp_path: Path, server_address: str, namespace: str, start_runtime: RuntimeFactory
) -> None:
    await start_runtime([Echo])
    path = tmp_path / "bad.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "namespace": namespace,
                "name": "bad",
                "nodes": [
                    {"node_name": "Echo", "identifier": "a", "inputs": {"text": "x"}, "next_nodes": ["nowhere"]},
                    {"node_name": "NotRegistered", "identifier": "b"},
                ],
            }
        )
    )
    result = await cli("graph", "apply", str(path), "--address", server_address)
    assert result.code == 2
    assert "Traceback" not in result.out + result.err
    lines = result.err.strip().splitlines()
    assert lines[0].startswith("error: graph template has")
    problems = lines[1:]
    assert len(problems) >= 2 and all(p.startswith("  - ") for p in problems)
    assert any("nowhere" in p for p in problems)
    assert any("NotRegistered" in p for p in problems)


async def test_invalid_graph_files_are_input_errors(tmp_path: Path, server_address: str, namespace: str) -> None:
    missing_identifier = tmp_path / "missing.yaml"
    missing_identifier.write_text(yaml.safe_dump({"namespace": namespace, "name": "g", "nodes": [{"node_name": "E"}]}))
    result = await cli("graph", "apply", str(missing_identifier), "--address", server_address)
    assert result.code == 2
    assert "Traceback" not in result.err
    assert result.err.splitlines()[0].startswith(f"error: {missing_identifier} is not a valid graph")
    assert "  - nodes.0.identifier: Field required" in result.err.splitlines()

    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    assert one_error_line(await cli("graph", "apply", str(broken), "--address", server_address)).startswith(
        f"error: {broken} is not valid JSON"
    )
    no_file = await cli("graph", "apply", str(tmp_path / "nope.yaml"), "--address", server_address)
    assert no_file.code == 2 and "No such file" in one_error_line(no_file)
    bad_pair = await cli("trigger", namespace, "g", "--input", "novalue", "--address", server_address)
    assert bad_pair.code == 2
    assert one_error_line(bad_pair) == "error: --input expects KEY=VALUE, got 'novalue'"


async def test_unknown_run_is_one_line_exit_1(server_address: str) -> None:
    for argv in (["runs", "show", "no-such-run"], ["runs", "watch", "no-such-run"], ["runs", "cancel", "no-such-run"]):
        result = await cli(*argv, "--address", server_address)
        assert result.code == 1, argv
        assert one_error_line(result) == "error: run 'no-such-run' not found"


def test_unreachable_scheduler_is_one_line() -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = run_cli("runs", "list", "ns", "--address", f"127.0.0.1:{port}")
    assert result.code == 1
    assert one_error_line(result).startswith(f"error: cannot reach the scheduler at 127.0.0.1:{port}: ")


def test_usage_errors_exit_2() -> None:
    assert run_cli().code == 2
    result = run_cli("runs", "list", "ns", "--limit", "0")
    assert result.code == 2
    assert result.err.startswith("error: argument --limit: expected a positive integer, got '0'")
    assert "Traceback" not in result.err
    assert run_cli("trigger", "ns", "g", "--timeout", "5").code == 2


async def test_real_process(tmp_path: Path, server_address: str, namespace: str, start_runtime: RuntimeFactory) -> None:
    await start_runtime([Echo])
    path = tmp_path / "graph.json"
    path.write_text(json.dumps(echo_graph(namespace)))
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "TTY_COMPATIBLE")}
    env["EXOSPHERE_SCHEDULER_ADDRESS"] = server_address

    async def exosphere(*argv: str) -> Result:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "exosphere.cli",
            *argv,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate()
        assert proc.returncode is not None
        return Result(proc.returncode, out.decode(), err.decode())

    applied = await exosphere("graph", "apply", str(path))
    assert applied.code == 0, applied.err
    assert "echo-graph" in applied.out and "version 1" in applied.out

    waited = await exosphere("trigger", namespace, "echo-graph", "--store", "text=from a process", "--wait", "--json")
    assert waited.code == 0, waited.err
    run = json.loads(waited.out)
    assert run["status"] == "SUCCESS"
    assert run["states"][-1]["outputs"] == [{"text": "from a process"}]

    missing = await exosphere("runs", "show", "no-such-run")
    assert missing.code == 1
    assert one_error_line(missing) == "error: run 'no-such-run' not found"
