"""Security through a real scheduler on 127.0.0.1: API keys and namespace scopes on every RPC, the bind guard,
TLS, and secrets encrypted at rest (never in the database, the logs or the API)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import ipaddress
import logging
import os
import stat
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pydantic import BaseModel, Field

from exosphere import BaseNode, GraphNodeModel, RetryPolicyModel, RunModel, RunStatus, Runtime, StateManager
from exosphere.errors import (
    AuthenticationError,
    ConflictError,
    ConnectionFailedError,
    InvalidArgumentError,
    PermissionDeniedError,
)
from exosphere.v1 import common_pb2, runtime_pb2, runtime_pb2_grpc, scheduler_pb2_grpc
from exosphere.v1 import scheduler_pb2 as pb
from server.app import App
from server.config import ServerConfig
from server.secrets import KEY_ENV
from tests.helpers.graphs import gnode
from tests.helpers.runtimes import running
from tests.helpers.servers import ServerProcess, serving
from tests.nodes import Echo, Needs

ADMIN_KEY = "k-admin-0123456789"
ALPHA_KEY = "k-alpha-0123456789"
WRONG_KEY = "k-wrong-0123456789"
SECRET = "SUPER-SECRET-VALUE"
NO_RETRY = RetryPolicyModel(max_retries=0)

Metadata = tuple[tuple[str, str], ...]
NO_KEY: Metadata = ()


def md(key: str) -> Metadata:
    return (("x-api-key", key),)


def echo(namespace: str, ident: str = "e", text: str = "hi") -> GraphNodeModel:
    return gnode(namespace, "Echo", ident, {"text": text})


def needs(namespace: str, text: str = "x") -> GraphNodeModel:
    return gnode(namespace, "Needs", "n", {"text": text})


async def run_to_end(sm: StateManager, graph: str, timeout: float = 20) -> RunModel:
    result = await sm.wait((await sm.trigger(graph)).run_id, timeout=timeout)
    assert result.status is not RunStatus.PENDING
    return result


# ====================================================================== API keys and namespace scopes


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    path = tmp_path / "keys.yaml"
    path.write_text(f'keys:\n  - key: "{ALPHA_KEY}"\n    namespaces: ["alpha"]\n')
    return path


@pytest.fixture
async def secure_app(tmp_path: Path, keys_file: Path) -> AsyncIterator[App]:
    config = ServerConfig(
        host="127.0.0.1", port=0, db=str(tmp_path / "secure.db"), api_key=ADMIN_KEY, api_keys_file=str(keys_file)
    )
    async with serving(config) as app:
        yield app


@pytest.fixture
def address(secure_app: App) -> str:
    return f"127.0.0.1:{secure_app.port}"


class Stubs:
    """Both services' stubs on one channel: ``stubs.GetRun`` and ``stubs.KeepAlive`` alike."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stubs = (scheduler_pb2_grpc.SchedulerServiceStub(channel), runtime_pb2_grpc.RuntimeServiceStub(channel))

    def __getattr__(self, name: str) -> Any:
        for stub in self._stubs:
            if hasattr(stub, name):
                return getattr(stub, name)
        raise AttributeError(name)


@pytest.fixture
async def stub(address: str) -> AsyncIterator[Stubs]:
    async with grpc.aio.insecure_channel(address) as channel:
        yield Stubs(channel)


@dataclass
class World:
    """What exists on the secure server: a finished run in alpha and one in beta, runtimes in both."""

    alpha_run: str
    alpha_state: str
    alpha_session: str
    beta_run: str
    beta_state: str
    beta_session: str

    def rpcs(self, ns: str) -> dict[str, Call]:
        if ns == "alpha":
            return every_rpc(ns, self.alpha_run, self.alpha_state, self.alpha_session)
        return every_rpc(ns, self.beta_run, self.beta_state, self.beta_session)


@pytest.fixture
async def world(secure_app: App, address: str) -> AsyncIterator[World]:
    async with contextlib.AsyncExitStack() as stack:
        ids: dict[str, tuple[str, str, str]] = {}
        for ns in ("alpha", "beta"):
            await stack.enter_async_context(running(Runtime(ns, f"rt-{ns}", [Echo], address=address, key=ADMIN_KEY)))
            sm = await stack.enter_async_context(StateManager(ns, address=address, key=ADMIN_KEY))
            await sm.upsert_graph("g", [echo(ns)])
            result = await run_to_end(sm, "g")
            assert result.status is RunStatus.SUCCESS
            [session] = secure_app.engine.runtimes.connected(ns)
            ids[ns] = (result.run_id, result.states[0].state_id, session.session_id)
        yield World(*ids["alpha"], *ids["beta"])


Call = Callable[[Stubs, Metadata], Awaitable[Any]]


async def _watch(stub: Stubs, request: pb.WatchRunRequest, metadata: Metadata) -> None:
    async for _ in stub.WatchRun(request, metadata=metadata, timeout=5):
        pass


async def _watches(stub: Stubs, request: pb.WatchRunRequest, metadata: Metadata) -> None:
    """One request on a Watches stream, read to its end; an error end raises as the call's own status would."""
    call = stub.Watches(metadata=metadata, timeout=5)
    await call.write(pb.WatchesRequest(id=7, watch=request))
    try:
        while (response := await call.read()) is not grpc.aio.EOF:
            assert response.id == 7
            if response.WhichOneof("kind") == "event" and response.event.last:  # over, without an end
                return
            if response.WhichOneof("kind") == "end":
                if response.end.code:
                    code = next(c for c in grpc.StatusCode if c.value[0] == response.end.code)
                    raise grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), response.end.message)
                return
    finally:
        call.cancel()


def every_rpc(ns: str, run_id: str, state_id: str, session_id: str) -> dict[str, Call]:
    """One call of each RPC but RuntimeService.Connect (see the Runtime tests), aimed at namespace ``ns`` and at a
    run, a state and a runtime session of it. Variants of an RPC are named ``Rpc(variant)``."""
    trigger = pb.TriggerGraphRequest(namespace=ns, graph_name="g")
    graph = pb.Graph(namespace=ns, name="g2", nodes=[pb.GraphNode(node_name="Echo", namespace=ns, identifier="e")])
    t = 5
    return {
        "UpsertGraph": lambda s, m: s.UpsertGraph(pb.UpsertGraphRequest(graph=graph), metadata=m, timeout=t),
        "GetGraph": lambda s, m: s.GetGraph(pb.GetGraphRequest(namespace=ns, name="g"), metadata=m, timeout=t),
        "ListGraphs": lambda s, m: s.ListGraphs(pb.ListGraphsRequest(namespace=ns), metadata=m, timeout=t),
        "DeleteGraph": lambda s, m: s.DeleteGraph(
            pb.DeleteGraphRequest(namespace=ns, name="g", force=True), metadata=m, timeout=t
        ),
        "TriggerGraph": lambda s, m: s.TriggerGraph(trigger, metadata=m, timeout=t),
        "TriggerGraphs": lambda s, m: s.TriggerGraphs(
            pb.TriggerGraphsRequest(triggers=[trigger]), metadata=m, timeout=t
        ),
        "GetRun": lambda s, m: s.GetRun(pb.GetRunRequest(run_id=run_id), metadata=m, timeout=t),
        "ListRuns": lambda s, m: s.ListRuns(pb.ListRunsRequest(namespace=ns), metadata=m, timeout=t),
        "WatchRun": lambda s, m: _watch(s, pb.WatchRunRequest(run_id=run_id), m),
        "WatchRun(trigger)": lambda s, m: _watch(s, pb.WatchRunRequest(trigger=trigger, run_only=True), m),
        "WatchRun(final_snapshot)": lambda s, m: _watch(s, pb.WatchRunRequest(run_id=run_id, final_snapshot=True), m),
        "WatchRun(trigger, final_snapshot)": lambda s, m: _watch(
            s, pb.WatchRunRequest(trigger=trigger, run_only=True, final_snapshot=True), m
        ),
        "Watches": lambda s, m: _watches(s, pb.WatchRunRequest(run_id=run_id, final_snapshot=True), m),
        "Watches(trigger)": lambda s, m: _watches(s, pb.WatchRunRequest(trigger=trigger, run_only=True), m),
        "Watches(trigger, announce)": lambda s, m: _watches(
            s, pb.WatchRunRequest(trigger=trigger, run_only=True, final_snapshot=True, announce=True), m
        ),
        "CancelRun": lambda s, m: s.CancelRun(pb.CancelRunRequest(run_id=run_id), metadata=m, timeout=t),
        "RetryState": lambda s, m: s.RetryState(
            pb.RetryStateRequest(state_id=state_id, request_id=str(uuid.uuid4())), metadata=m, timeout=t
        ),
        "ListNodes": lambda s, m: s.ListNodes(pb.ListNodesRequest(namespace=ns), metadata=m, timeout=t),
        "ListNamespaces": lambda s, m: s.ListNamespaces(pb.ListNamespacesRequest(), metadata=m, timeout=t),
        "ListRuntimes": lambda s, m: s.ListRuntimes(pb.ListRuntimesRequest(), metadata=m, timeout=t),
        "KeepAlive": lambda s, m: s.KeepAlive(
            runtime_pb2.KeepAliveRequest(session_id=session_id), metadata=m, timeout=t
        ),
    }


def test_every_rpc_is_covered() -> None:
    """If a service grows an RPC, the auth tests below must grow with it."""
    scheduler = pb.DESCRIPTOR.services_by_name["SchedulerService"]
    runtime = runtime_pb2.DESCRIPTOR.services_by_name["RuntimeService"]
    names = {*scheduler.methods_by_name, *runtime.methods_by_name} - {"Connect"}
    assert names == {name.partition("(")[0] for name in every_rpc("ns", "r", "r-0", "s")}


async def _code(call: Call, stub: Stubs, metadata: Metadata) -> grpc.StatusCode:
    try:
        await call(stub, metadata)
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def _codes(calls: dict[str, Call], stub: Stubs, metadata: Metadata) -> dict[str, grpc.StatusCode]:
    return {name: await _code(call, stub, metadata) for name, call in calls.items()}


@pytest.mark.parametrize("metadata", [NO_KEY, md(WRONG_KEY), md(ADMIN_KEY.upper()), md(ADMIN_KEY + "x")])
async def test_missing_or_wrong_key_is_unauthenticated_on_every_rpc(
    stub: Stubs, world: World, metadata: Metadata
) -> None:
    for ns in ("alpha", "beta"):
        codes = await _codes(world.rpcs(ns), stub, metadata)
        assert codes == dict.fromkeys(codes, grpc.StatusCode.UNAUTHENTICATED), ns
    # Nothing changed: the graphs and runs are where they were.
    for ns in ("alpha", "beta"):
        graphs = await stub.ListGraphs(pb.ListGraphsRequest(namespace=ns), metadata=md(ADMIN_KEY), timeout=5)
        assert [g.name for g in graphs.graphs] == ["g"]
        runs = await stub.ListRuns(pb.ListRunsRequest(namespace=ns), metadata=md(ADMIN_KEY), timeout=5)
        assert [r.status for r in runs.runs] == [common_pb2.RUN_STATUS_SUCCESS]


async def test_unauthenticated_before_anything_else(stub: Stubs) -> None:
    """On an empty scheduler, with ids that do not exist, a bad key still gets UNAUTHENTICATED (not NOT_FOUND,
    not OK with an empty list): whether something exists is not told to a caller without a key."""
    calls = every_rpc("nowhere", "no-such-run", "no-such-run-0", "no-such-session")
    calls["RetryState (id without '-')"] = lambda s, m: s.RetryState(
        pb.RetryStateRequest(state_id="nodash", request_id="r"), metadata=m, timeout=5
    )
    for metadata in (NO_KEY, md(WRONG_KEY)):
        codes = await _codes(calls, stub, metadata)
        wrong = {name: code.name for name, code in codes.items() if code != grpc.StatusCode.UNAUTHENTICATED}
        assert not wrong, f"not UNAUTHENTICATED with metadata {metadata}: {wrong}"


@pytest.mark.parametrize("key", [None, WRONG_KEY])
async def test_sdk_raises_authentication_error(address: str, world: World, key: str | None) -> None:
    async with StateManager("alpha", address=address, key=key) as sm:
        calls: list[Callable[[], Awaitable[Any]]] = [
            lambda: sm.upsert_graph("g", [echo("alpha")]),
            lambda: sm.get_graph("g"),
            sm.list_graphs,
            lambda: sm.delete_graph("g", force=True),
            lambda: sm.trigger("g"),
            lambda: sm.trigger_many("g", [{}]),
            lambda: sm.get_run(world.alpha_run),
            sm.list_runs,
            lambda: sm.wait(world.alpha_run, timeout=5),
            lambda: sm.trigger_and_wait("g", timeout=5),
            lambda: sm.cancel_run(world.alpha_run),
            lambda: sm.retry_state(world.alpha_state),
            sm.list_nodes,
        ]
        for call in calls:
            with pytest.raises(AuthenticationError, match="API key"):
                await call()
    async with StateManager("alpha", address=address, key=ADMIN_KEY) as sm:
        assert [g.name for g in await sm.list_graphs()] == ["g"]
        assert (await sm.get_run(world.alpha_run)).status is RunStatus.SUCCESS


@pytest.mark.parametrize("key", [None, WRONG_KEY])
async def test_runtime_with_bad_key_raises_instead_of_retrying(address: str, key: str | None) -> None:
    runtime = Runtime("alpha", "bad", [Echo], address=address, key=key)
    async with asyncio.timeout(10):
        with pytest.raises(AuthenticationError, match="API key"):
            await runtime.run()


async def test_runtime_outside_its_keys_namespaces_is_denied(address: str) -> None:
    runtime = Runtime("beta", "scoped", [Echo], address=address, key=ALPHA_KEY)
    async with asyncio.timeout(10):
        with pytest.raises(PermissionDeniedError, match="beta"):
            await runtime.run()


async def test_scoped_key_is_denied_outside_its_namespace(stub: Stubs, world: World, address: str) -> None:
    calls = world.rpcs("beta")
    # ListNamespaces and an unfiltered ListRuntimes are filtered rather than refused (see the next test).
    del calls["ListNamespaces"], calls["ListRuntimes"]
    calls["ListRuntimes(beta)"] = lambda s, m: s.ListRuntimes(
        pb.ListRuntimesRequest(namespace="beta"), metadata=m, timeout=5
    )
    calls["TriggerGraphs(alpha+beta)"] = lambda s, m: s.TriggerGraphs(
        pb.TriggerGraphsRequest(
            triggers=[
                pb.TriggerGraphRequest(namespace="alpha", graph_name="g"),
                pb.TriggerGraphRequest(namespace="beta", graph_name="g"),
            ]
        ),
        metadata=m,
        timeout=5,
    )
    codes = await _codes(calls, stub, md(ALPHA_KEY))
    assert codes == dict.fromkeys(codes, grpc.StatusCode.PERMISSION_DENIED)
    # The mixed TriggerGraphs started nothing, not even its alpha run; nothing was triggered in beta.
    runs = await stub.ListRuns(pb.ListRunsRequest(namespace="alpha"), metadata=md(ADMIN_KEY), timeout=5)
    assert [r.run_id for r in runs.runs] == [world.alpha_run]
    runs = await stub.ListRuns(pb.ListRunsRequest(namespace="beta"), metadata=md(ADMIN_KEY), timeout=5)
    assert [r.run_id for r in runs.runs] == [world.beta_run]
    # And beta is untouched: its graph and its finished run are still there.
    graphs = await stub.ListGraphs(pb.ListGraphsRequest(namespace="beta"), metadata=md(ADMIN_KEY), timeout=5)
    assert [g.name for g in graphs.graphs] == ["g"]

    async with StateManager("beta", address=address, key=ALPHA_KEY) as sm:
        with pytest.raises(PermissionDeniedError, match="'beta'"):
            await sm.list_graphs()
        with pytest.raises(PermissionDeniedError):
            await sm.get_run(world.beta_run)
        with pytest.raises(PermissionDeniedError):
            await sm.wait(world.beta_run, timeout=5)
        with pytest.raises(PermissionDeniedError):
            await sm.trigger_and_wait("g", timeout=5)


async def test_scoped_key_works_in_its_namespace(address: str) -> None:
    async with (
        running(Runtime("alpha", "rt-alpha", [Echo], address=address, key=ALPHA_KEY)),
        StateManager("alpha", address=address, key=ALPHA_KEY) as sm,
    ):
        await sm.upsert_graph("g", [echo("alpha", text="scoped")])
        assert await sm.list_nodes() == ["Echo"]
        result = await run_to_end(sm, "g")
        assert result.status is RunStatus.SUCCESS
        assert result.states[0].outputs == [{"text": "scoped"}]
        runs, _ = await sm.list_runs()
        assert [r.run_id for r in runs] == [result.run_id]
        [again] = await sm.trigger_many("g", [{}])
        assert (await sm.wait(again.run_id, timeout=20)).status is RunStatus.SUCCESS
        assert (await sm.trigger_and_wait("g", timeout=20)).status is RunStatus.SUCCESS
        await sm.delete_graph("g")


async def test_listings_show_only_the_keys_namespaces(stub: Stubs, world: World) -> None:
    admin = await stub.ListNamespaces(pb.ListNamespacesRequest(), metadata=md(ADMIN_KEY), timeout=5)
    scoped = await stub.ListNamespaces(pb.ListNamespacesRequest(), metadata=md(ALPHA_KEY), timeout=5)
    assert list(admin.namespaces) == ["alpha", "beta"]
    assert list(scoped.namespaces) == ["alpha"]
    admin_rt = await stub.ListRuntimes(pb.ListRuntimesRequest(), metadata=md(ADMIN_KEY), timeout=5)
    scoped_rt = await stub.ListRuntimes(pb.ListRuntimesRequest(), metadata=md(ALPHA_KEY), timeout=5)
    alpha_rt = await stub.ListRuntimes(pb.ListRuntimesRequest(namespace="alpha"), metadata=md(ALPHA_KEY), timeout=5)
    assert sorted(r.namespace for r in admin_rt.runtimes) == ["alpha", "beta"]
    assert [r.runtime_name for r in scoped_rt.runtimes] == ["rt-alpha"]
    assert [r.runtime_name for r in alpha_rt.runtimes] == ["rt-alpha"]


async def test_bad_keys_file_stops_the_scheduler_from_starting(tmp_path: Path) -> None:
    bad = tmp_path / "keys.yaml"
    bad.write_text("keys:\n  - key: k\n    namespaces: alpha\n")
    with pytest.raises(InvalidArgumentError, match="'namespaces' must be a list"):
        App(ServerConfig(host="127.0.0.1", port=0, db=str(tmp_path / "x.db"), api_keys_file=str(bad)))


# ====================================================================== the bind guard


async def test_non_loopback_without_keys_needs_insecure(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="--insecure"):
        App(ServerConfig(host="0.0.0.0", port=0, db=str(tmp_path / "a.db")))
    async with serving(ServerConfig(host="0.0.0.0", port=0, db=str(tmp_path / "b.db"), insecure=True), grace=0) as app:
        assert app.port > 0


async def test_non_loopback_with_a_key_needs_no_insecure(tmp_path: Path) -> None:
    async with serving(
        ServerConfig(host="0.0.0.0", port=0, db=str(tmp_path / "a.db"), api_key=ADMIN_KEY), grace=0
    ) as app:
        assert app.port > 0


def test_tls_cert_and_key_go_together(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="together"):
        App(ServerConfig(host="127.0.0.1", port=0, db=str(tmp_path / "a.db"), tls_cert=str(tmp_path / "c.pem")))


# ====================================================================== TLS


@dataclass
class Pki:
    ca: Path
    cert: Path
    key: Path
    other_ca: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _ca(cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A CA, a server certificate it signs for localhost and 127.0.0.1, and an unrelated CA."""
    root = tmp_path_factory.mktemp("pki")
    ca_key, ca_cert = _ca("exosphere test CA")
    _, other_cert = _ca("some other CA")
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pki = Pki(root / "ca.pem", root / "server.pem", root / "server.key", root / "other-ca.pem")
    pki.ca.write_bytes(_pem(ca_cert))
    pki.other_ca.write_bytes(_pem(other_cert))
    pki.cert.write_bytes(_pem(cert))
    pki.key.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    pki.key.chmod(0o600)
    return pki


@pytest.fixture
async def tls_app(tmp_path: Path, pki: Pki) -> AsyncIterator[App]:
    config = ServerConfig(
        host="127.0.0.1", port=0, db=str(tmp_path / "tls.db"), tls_cert=str(pki.cert), tls_key=str(pki.key)
    )
    async with serving(config) as app:
        yield app


async def _tls_round_trip(address: str, sm: StateManager, ca: Path, namespace: str) -> None:
    async with running(Runtime(namespace, "tls-rt", [Echo], address=address, tls_ca_file=str(ca))):
        await sm.upsert_graph("g", [echo(namespace, text="over tls")])
        result = await run_to_end(sm, "g")
        assert result.status is RunStatus.SUCCESS
        assert result.states[0].outputs == [{"text": "over tls"}]


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_tls_end_to_end(tls_app: App, pki: Pki, host: str) -> None:
    address = f"{host}:{tls_app.port}"
    async with StateManager("tls", address=address, tls_ca_file=str(pki.ca)) as sm:
        await _tls_round_trip(address, sm, pki.ca, "tls")


async def test_tls_ca_file_from_the_environment(tls_app: App, pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    address = f"127.0.0.1:{tls_app.port}"
    monkeypatch.setenv("EXOSPHERE_TLS_CA_FILE", str(pki.ca))
    async with StateManager("tls-env", address=address) as sm:
        await _tls_round_trip(address, sm, pki.ca, "tls-env")


async def test_tls_with_an_api_key(tmp_path: Path, pki: Pki) -> None:
    config = ServerConfig(
        host="127.0.0.1",
        port=0,
        db=str(tmp_path / "tls.db"),
        tls_cert=str(pki.cert),
        tls_key=str(pki.key),
        api_key=ADMIN_KEY,
    )
    async with App(config) as app:
        address = f"127.0.0.1:{app.port}"
        async with StateManager("k", address=address, tls_ca_file=str(pki.ca), key=WRONG_KEY) as sm:
            with pytest.raises(AuthenticationError):
                await sm.list_graphs()
        async with StateManager("k", address=address, tls_ca_file=str(pki.ca), key=ADMIN_KEY) as sm:
            assert await sm.list_graphs() == []


async def test_plaintext_client_against_tls_server_fails_fast(tls_app: App) -> None:
    async with StateManager("tls", address=f"127.0.0.1:{tls_app.port}") as sm, asyncio.timeout(10):
        with pytest.raises(ConnectionFailedError, match="unavailable"):
            await sm.list_graphs()


async def test_untrusted_server_certificate_fails_fast(tls_app: App, pki: Pki) -> None:
    async with (
        StateManager("tls", address=f"127.0.0.1:{tls_app.port}", tls_ca_file=str(pki.other_ca)) as sm,
        asyncio.timeout(10),
    ):
        with pytest.raises(ConnectionFailedError):
            await sm.list_graphs()


async def test_tls_client_against_plaintext_server_fails_fast(app: App, pki: Pki) -> None:
    async with (
        StateManager("tls", address=f"127.0.0.1:{app.port}", tls_ca_file=str(pki.ca)) as sm,
        asyncio.timeout(10),
    ):
        with pytest.raises(ConnectionFailedError):
            await sm.list_graphs()


async def test_unreadable_ca_file_is_a_clear_error(tls_app: App, tmp_path: Path) -> None:
    address = f"127.0.0.1:{tls_app.port}"
    async with StateManager("tls", address=address, tls_ca_file=str(tmp_path / "nope.pem")) as sm:
        with pytest.raises(InvalidArgumentError, match=r"cannot read TLS CA file .*nope\.pem"):
            await sm.list_graphs()
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    async with StateManager("tls", address=address, tls_ca_file=str(garbage)) as sm:
        with pytest.raises(InvalidArgumentError, match=r"garbage\.pem holds no PEM certificate"):
            await sm.list_graphs()
    runtime = Runtime("tls", "rt", [Echo], address=address, tls_ca_file=str(garbage))
    async with asyncio.timeout(10):
        with pytest.raises(InvalidArgumentError, match=r"garbage\.pem"):
            await runtime.run()


def test_bad_tls_files_stop_the_scheduler_clearly(tmp_path: Path, pki: Pki) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("garbage\n")
    other_key = tmp_path / "other.key"
    other_key.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    cases = [
        (tmp_path / "none.pem", pki.key, r"cannot read TLS certificate .*none\.pem"),
        (pki.cert, tmp_path / "none.key", r"cannot read TLS key .*none\.key"),
        (garbage, pki.key, r"garbage\.pem holds no PEM certificate"),
        (pki.cert, garbage, r"garbage\.pem is not an unencrypted PEM private key"),
        (pki.cert, other_key, r"other\.key does not match"),
    ]
    for cert, key, message in cases:
        config = ServerConfig(host="127.0.0.1", port=0, db=str(tmp_path / "a.db"), tls_cert=str(cert), tls_key=str(key))
        with pytest.raises(InvalidArgumentError, match=message):
            App(config)
    assert not (tmp_path / "a.db").exists()  # refused before the database was opened


# ====================================================================== secrets at rest


def _db_bytes(db: Path) -> bytes:
    data = b""
    for suffix in ("", "-wal", "-shm", "-journal"):
        path = Path(f"{db}{suffix}")
        if path.exists():
            data += path.read_bytes()
    return data


def _mode(path: Path) -> int | None:
    """The permission bits of a file, None when there is none."""
    return stat.S_IMODE(path.stat().st_mode) if path.exists() else None


def _key_mode(db: Path) -> int | None:
    """The permission bits of the database's secrets key file, None when there is none."""
    return _mode(Path(f"{db}.key"))


def _key_bytes(db: Path) -> bytes:
    return Path(f"{db}.key").read_bytes()


def _replace_key(db: Path) -> None:
    Path(f"{db}.key").write_bytes(base64.b64encode(os.urandom(32)) + b"\n")


def _config(db: Path, **kwargs: Any) -> ServerConfig:
    return ServerConfig(host="127.0.0.1", port=0, db=str(db), **kwargs)


async def _needs_run(address: str, namespace: str) -> RunModel:
    async with (
        running(Runtime(namespace, "rt", [Needs], address=address)),
        StateManager(namespace, address=address) as sm,
    ):
        return await run_to_end(sm, "secretive")


async def test_secrets_are_encrypted_at_rest_and_survive_a_restart(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    db = tmp_path / "s.db"
    ns = "sec"
    async with serving(_config(db)) as app:
        address = f"127.0.0.1:{app.port}"
        async with (
            running(Runtime(ns, "rt", [Needs], address=address)),
            StateManager(ns, address=address) as sm,
        ):
            saved = await sm.upsert_graph("secretive", [needs(ns)], secrets={"token": SECRET})
            assert saved.secret_names == ["token"]
            graph = await sm.get_graph("secretive")
            assert graph.secret_names == ["token"]
            assert SECRET not in graph.model_dump_json()
            assert SECRET not in str([g.model_dump() for g in await sm.list_graphs()])
            result = await run_to_end(sm, "secretive")
            assert result.status is RunStatus.SUCCESS
            assert result.states[0].outputs == [{"text": "x", "secret_len": str(len(SECRET)), "secret_fields": "token"}]
            assert SECRET not in result.model_dump_json()
            # While the scheduler runs (WAL not yet checkpointed) and after it stops.
            assert SECRET.encode() not in _db_bytes(db)
            # Re-saving without secrets keeps the stored ones.
            await sm.upsert_graph("secretive", [needs(ns, text="y")])
            assert (await sm.get_graph("secretive")).secret_names == ["token"]
    assert SECRET.encode() not in _db_bytes(db)
    assert _key_mode(db) == 0o600
    assert SECRET not in caplog.text
    assert "graph saved" in caplog.text  # the log was captured at all

    key_before = _key_bytes(db)
    async with serving(_config(db)) as app:  # a restart on the same database and key file
        result = await _needs_run(f"127.0.0.1:{app.port}", ns)
        assert result.status is RunStatus.SUCCESS, result.states[0].error
        assert result.states[0].outputs == [{"text": "y", "secret_len": str(len(SECRET)), "secret_fields": "token"}]
    assert _key_bytes(db) == key_before
    assert SECRET.encode() not in _db_bytes(db)
    assert SECRET not in caplog.text


async def test_secrets_key_from_the_environment_creates_no_key_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, base64.b64encode(os.urandom(32)).decode())
    db = tmp_path / "env.db"
    async with serving(_config(db)) as app:
        async with StateManager("sec", address=f"127.0.0.1:{app.port}") as sm:
            await _register(f"127.0.0.1:{app.port}", "sec", Needs)
            await sm.upsert_graph("secretive", [needs("sec")], secrets={"token": SECRET})
    assert _key_mode(db) is None
    assert SECRET.encode() not in _db_bytes(db)
    async with serving(_config(db)) as app:  # same key from the environment: the secret still decrypts
        result = await _needs_run(f"127.0.0.1:{app.port}", "sec")
        assert result.status is RunStatus.SUCCESS, result.states[0].error
        assert result.states[0].outputs[0]["secret_len"] == str(len(SECRET))
    assert _key_mode(db) is None


async def _register(address: str, namespace: str, *nodes: type[BaseNode]) -> None:
    """Register ``nodes`` in ``namespace`` (the scheduler remembers them after the runtime leaves)."""
    async with running(Runtime(namespace, "rt", list(nodes), address=address)):
        pass


@pytest.mark.parametrize("value", ["not base64 at all!", base64.b64encode(b"short").decode()])
def test_bad_secrets_key_in_the_environment_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv(KEY_ENV, value)
    with pytest.raises(InvalidArgumentError, match=KEY_ENV):
        App(_config(tmp_path / "x.db"))


def test_real_server_refuses_a_bad_secrets_key_clearly(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "x.db", env={KEY_ENV: "c2hvcnQ="})
    with pytest.raises(RuntimeError, match=f"exosphere-server: {KEY_ENV} must hold 32 base64-encoded bytes"):
        server.start()
    assert server.stop() == 1
    assert "Traceback" not in server.output


async def test_secrets_key_file_setting(tmp_path: Path) -> None:
    db, key_file = tmp_path / "k.db", tmp_path / "keys" / "secrets.key"
    key_file.parent.mkdir()
    async with serving(_config(db, secrets_key_file=str(key_file))) as app:
        await _register(f"127.0.0.1:{app.port}", "sec", Needs)
        async with StateManager("sec", address=f"127.0.0.1:{app.port}") as sm:
            await sm.upsert_graph("secretive", [needs("sec")], secrets={"token": SECRET})
    assert _key_mode(db) is None  # no <db>.key: the configured file holds the key
    assert _mode(key_file) == 0o600
    async with serving(_config(db, secrets_key_file=str(key_file))) as app:
        result = await _needs_run(f"127.0.0.1:{app.port}", "sec")
        assert result.status is RunStatus.SUCCESS, result.states[0].error


async def test_wrong_secrets_key_at_restart_refuses_the_graphs_triggers_not_the_scheduler(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "w.db"
    ns = "sec"
    async with serving(_config(db)) as app:
        address = f"127.0.0.1:{app.port}"
        await _register(address, ns, Needs, Echo)
        async with StateManager(ns, address=address) as sm:
            await sm.upsert_graph("secretive", [needs(ns)], secrets={"token": SECRET}, retry_policy=NO_RETRY)
            await sm.upsert_graph("plain", [echo(ns)])
    _replace_key(db)  # someone replaced the key file

    caplog.set_level(logging.INFO)
    async with serving(_config(db)) as app:  # starts: a wrong key does not crash the scheduler
        address = f"127.0.0.1:{app.port}"
        assert "cannot decrypt secrets of graph sec/secretive" in caplog.text
        assert "is not the one it was saved with" in caplog.text
        with pytest.raises(ConflictError, match="cannot be decrypted"):
            await _needs_run(address, ns)
        async with (
            running(Runtime(ns, "rt-echo", [Echo], address=address)),
            StateManager(ns, address=address) as sm,
        ):
            # Graphs without secrets are unaffected.
            assert (await run_to_end(sm, "plain")).status is RunStatus.SUCCESS
            # The graph is still listed, with its secret names.
            assert (await sm.get_graph("secretive")).secret_names == ["token"]
            # Re-saving without secrets cannot keep values it cannot read: a clear error, not a crash.
            with pytest.raises(ConflictError, match="secrets key") as info:
                await sm.upsert_graph("secretive", [needs(ns)], retry_policy=NO_RETRY)
            assert "sec/secretive/token" in str(info.value)
            # Giving the secrets again repairs the graph.
            await sm.upsert_graph("secretive", [needs(ns)], secrets={"token": SECRET}, retry_policy=NO_RETRY)
        result = await _needs_run(address, ns)
        assert result.status is RunStatus.SUCCESS, result.states[0].error
    assert SECRET not in caplog.text


async def test_secret_values_never_reach_the_real_servers_debug_log(tmp_path: Path) -> None:
    db = tmp_path / "p.db"
    ns = "sec"
    with ServerProcess(db, "--log-level", "DEBUG") as server:
        async with (
            running(Runtime(ns, "rt", [Needs], address=server.address)),
            StateManager(ns, address=server.address) as sm,
        ):
            await sm.upsert_graph("secretive", [needs(ns)], secrets={"token": SECRET})
            result = await run_to_end(sm, "secretive")
            assert result.status is RunStatus.SUCCESS
            # A graph that fails validation must not echo the secrets back either.
            with pytest.raises(InvalidArgumentError) as info:
                await sm.upsert_graph("broken", [needs(ns), needs(ns)], secrets={"token": SECRET})
            assert SECRET not in str(info.value)
        assert server.stop() == 0
    assert "DEBUG" in server.output
    assert SECRET not in server.output
    assert SECRET.encode() not in _db_bytes(db)
    assert _key_mode(db) == 0o600


class PickySecret(BaseNode):
    """A node whose Secrets model rejects the value it is given."""

    class Inputs(BaseModel):
        text: str

    class Outputs(BaseModel):
        text: str

    class Secrets(BaseModel):
        token: str = Field(min_length=100)

    async def execute(self) -> Outputs:
        return self.Outputs(text=self.inputs.text)


async def test_a_secret_the_node_rejects_is_not_echoed_in_the_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    db = tmp_path / "picky.db"
    async with serving(_config(db)) as app:
        address = f"127.0.0.1:{app.port}"
        async with (
            running(Runtime("sec", "rt", [PickySecret], address=address)),
            StateManager("sec", address=address) as sm,
        ):
            node = GraphNodeModel(node_name="PickySecret", namespace="sec", identifier="p", inputs={"text": "x"})
            await sm.upsert_graph("picky", [node], secrets={"token": SECRET}, retry_policy=NO_RETRY)
            result = await run_to_end(sm, "picky")
    assert result.status is RunStatus.FAILED
    error = result.states[0].error or {}
    assert "token" in error.get("message", "")
    leaks = {
        "state error": SECRET in str(error),
        "scheduler log": SECRET in caplog.text,
        "database": SECRET.encode() in _db_bytes(db),
    }
    assert not any(leaks.values()), leaks
