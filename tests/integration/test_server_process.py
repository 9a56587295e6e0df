"""The exosphere-server binary: options, health, reflection, clean stop, and state that survives a restart."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from exosphere import RunStatus, Runtime, StateManager
from tests.helpers.graphs import gnode
from tests.helpers.runtimes import running
from tests.helpers.servers import ServerProcess
from tests.nodes import Echo


async def test_serves_health_and_reflection_and_stops_on_sigterm(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "x.db").start()
    try:
        assert "listening on 127.0.0.1:" in server.output
        async with grpc.aio.insecure_channel(server.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            reply = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            reflect = reflection_pb2_grpc.ServerReflectionStub(channel)

            async def ask() -> reflection_pb2.ServerReflectionRequest:
                yield reflection_pb2.ServerReflectionRequest(list_services="")

            services = set()
            async for response in reflect.ServerReflectionInfo(ask(), timeout=5):
                services = {s.name for s in response.list_services_response.service}
            assert {"exosphere.v1.SchedulerService", "exosphere.v1.RuntimeService"} <= services
    finally:
        code = server.stop(signal.SIGTERM)
    assert code == 0, server.output
    assert "Traceback" not in server.output
    assert "stopped" in server.output


async def test_refuses_non_loopback_without_key(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "x.db", "--host", "0.0.0.0")
    try:
        server.start(timeout=10)
        raise AssertionError("server started on 0.0.0.0 without a key")
    except RuntimeError:
        pass
    assert server.proc is not None
    assert server.proc.wait(10) != 0
    assert "refusing to listen on 0.0.0.0 without an API key" in server.output


async def test_graphs_and_runs_survive_a_restart_and_runtimes_reconnect(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    server = await asyncio.to_thread(ServerProcess(db).start)
    port = server.port
    try:
        runtime = Runtime(namespace="restart", name="rt", nodes=[Echo], address=server.address)
        async with running(runtime, strict_stop=True):
            async with StateManager("restart", address=server.address) as sm:
                await sm.upsert_graph("g", [gnode("restart", "Echo", "e", {"text": "1"})])
                first = await sm.wait((await sm.trigger("g")).run_id, timeout=10)
                assert first.status is RunStatus.SUCCESS
            assert await asyncio.to_thread(server.stop) == 0
            # Same port and database: the runtime reconnects by itself and the old run is still there.
            server = await asyncio.to_thread(ServerProcess(db, port=port).start)
            async with StateManager("restart", address=server.address) as sm:
                again = await sm.get_run(first.run_id)
                assert again.status is RunStatus.SUCCESS
                assert again.states[0].outputs == [{"text": "1"}]
                assert (await sm.get_graph("g")).version == 1
                await runtime.wait_registered(timeout=30)
                second = await sm.wait((await sm.trigger("g", inputs={"text": "2"})).run_id, timeout=20)
                assert second.states[0].outputs == [{"text": "2"}]
    finally:
        await asyncio.to_thread(server.stop)
