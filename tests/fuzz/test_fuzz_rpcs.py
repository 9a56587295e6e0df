"""Every RPC, fuzzed: thousands of generated messages against one in-process scheduler.

Each answer must be OK, or a gRPC status among ``ALLOWED`` whose details name the problem; INTERNAL, UNKNOWN, an
empty message or a call that hangs past its deadline is a failure, reported with the request that caused it.

The scheduler runs in this process on 127.0.0.1:0 over a real SQLite file, on an event loop in a helper thread, so
that it keeps serving (heartbeats, timers, group commits) while hypothesis generates the next example; the sync
hypothesis tests hand each call to that loop and wait for its answer.

Two namespaces are set up before fuzzing:

* the *protected* one, with a real runtime (``tests.nodes.Echo``), a graph and a finished run; the fuzzer never
  names it. After every test: the scheduler still answers its health check, the earlier runs read back byte for
  byte the same, and the graph still triggers and succeeds.
* the *playground*, whose names (nodes, graphs, runs, states) the fuzzer knows, so requests get past "not found".

Besides the generated messages, ``EDGE_REQUESTS`` and ``EDGE_SCENARIOS`` replay, on every run, inputs that broke
the contract once, and a 5,000-node chain checks that saving a big graph does not stall the scheduler.

Run ``pytest tests/fuzz -s`` to see how many messages each RPC was sent and how they were answered. Environment:

* ``EXOSPHERE_FUZZ_COLLECT=1``: record every distinct failing answer and report them all at the end of each test,
  instead of stopping at the first one;
* ``EXOSPHERE_FUZZ_DUMP=<dir>``: pickle the exact messages of each distinct failure there, to replay them;
* ``EXOSPHERE_FUZZ_SHRINK=1``: let hypothesis shrink a failing example (slow: every replay changes the scheduler).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
import yaml
from google.protobuf import text_format
from google.protobuf.descriptor_pb2 import DescriptorProto, FieldDescriptorProto
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from exosphere import Runtime
from exosphere.v1 import common_pb2, runtime_pb2, runtime_pb2_grpc, scheduler_pb2, scheduler_pb2_grpc
from server.app import App
from server.config import ServerConfig
from tests.fuzz import strategies as fz
from tests.helpers.runtimes import RuntimeGroup
from tests.nodes import Echo

T = TypeVar("T")
Code = grpc.StatusCode

ADMIN_KEY = "fuzz-admin-key"
SCOPED_KEY = "fuzz-playground-key"  # allowed in the playground only
PLAY = "fuzz-play"
PROTECTED = "fuzz-protected-7d1c"
CALL_TIMEOUT = 5.0
MAX_MESSAGE_BYTES = 64 * 1024 * 1024

ALLOWED = frozenset(
    {
        Code.INVALID_ARGUMENT,
        Code.NOT_FOUND,
        Code.FAILED_PRECONDITION,
        Code.PERMISSION_DENIED,
        Code.UNAUTHENTICATED,
        Code.RESOURCE_EXHAUSTED,
        Code.OUT_OF_RANGE,
    }
)
# A runtime stream that was accepted ends with UNAVAILABLE once the runtime hangs up ("the runtime reconnects when
# its stream ends this way", server/runtime_api.py); that is its normal end, not an error.
STREAM_ALLOWED = ALLOWED | {Code.UNAVAILABLE}

# Details written by gRPC itself rather than by the scheduler: they do not name the problem of the request. The
# first two mean the scheduler's status message was too big for the HTTP/2 trailers (8 KiB soft, 16 KiB hard limit
# by default), so the client never saw it.
TRANSPORT_DETAILS = ("Stream removed", "metadata size exceeds", "Internal error from Core", "Unexpected <class")

COLLECT = os.environ.get("EXOSPHERE_FUZZ_COLLECT") == "1"
DUMP = os.environ.get("EXOSPHERE_FUZZ_DUMP", "")  # a directory: failing requests are pickled there
COUNTS: Counter[str] = Counter()  # messages sent, by RPC
STREAMS: Counter[str] = Counter()  # Connect streams opened, by test
CODES: dict[str, Counter[str]] = {}  # answers, by RPC and status code
SECONDS: defaultdict[str, float] = defaultdict(float)  # time spent waiting for the scheduler, by RPC

# Deterministic for CI: the same examples on every run. No example database, no deadline (calls take what they take).
# No shrinking unless asked (EXOSPHERE_FUZZ_SHRINK=1): every replay of an example changes the scheduler's state, so
# shrinking takes minutes and gigabytes; the failing example is reported as generated.
SHRINK = os.environ.get("EXOSPHERE_FUZZ_SHRINK") == "1"
FUZZ = settings(
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=False,
    phases=[Phase.explicit, Phase.generate, *([Phase.shrink] if SHRINK else [])],
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
        HealthCheck.filter_too_much,
    ],
)

# Examples per RPC. Roughly 60 s for the whole module on two cores.
EXAMPLES = {
    "UpsertGraph": 500,
    "GetGraph": 100,
    "ListGraphs": 60,
    "DeleteGraph": 120,
    "TriggerGraph": 350,
    "TriggerGraphs": 150,
    "GetRun": 300,
    "ListRuns": 300,
    "WatchRun": 200,
    "CancelRun": 150,
    "RetryState": 250,
    "ListNodes": 60,
    "ListNamespaces": 20,
    "ListRuntimes": 60,
}
CONNECT_EXAMPLES = 300
KEEPALIVE_EXAMPLES = 60
REAL_WORK_EXAMPLES = 120
REAL_WORK_OUTPUTS = 2500  # outputs one example may return (fan-outs multiply down a chain)
REAL_WORK_BYTES = 4_000_000  # and their size
FOREIGN_KEY_EXAMPLES = 150


def keys() -> st.SearchStrategy[str | None]:
    """The x-api-key sent: mostly the admin key, sometimes a key scoped to the playground, a wrong key, none."""
    return st.sampled_from([ADMIN_KEY] * 12 + [SCOPED_KEY, "wrong-key", "", None])


def names_problem(details: str) -> bool:
    """A status message written by the scheduler (not by gRPC), and not empty."""
    return bool(details.strip()) and not any(marker in details for marker in TRANSPORT_DETAILS)


def metadata(key: str | None) -> tuple[tuple[str, str], ...]:
    return () if key is None else (("x-api-key", key),)


def describe(message: Message | Sequence[Message], limit: int = 4000) -> str:
    """A request as text, cut in the middle when huge."""
    if isinstance(message, Message):
        text = f"{type(message).__name__} {{{text_format.MessageToString(message, as_utf8=True, as_one_line=True)}}}"
    else:
        text = "[" + ", ".join(describe(m, limit) for m in message) + "]"
    if len(text) > limit:
        text = f"{text[: limit // 2]} ...<{len(text) - limit} chars cut>... {text[-limit // 2 :]}"
    return text


# ---------------------------------------------------------------------------------------------- server in a thread


class ErrorLog(logging.Handler):
    """Keeps the ERROR records of the scheduler (with tracebacks) to show beside a failing answer."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = f"{record.name}: {record.getMessage()}"
        if record.exc_info:
            text += "\n" + logging.Formatter().formatException(record.exc_info)
        self.records.append(text[:6000])


@dataclass
class Answer:
    code: Code
    details: str
    response: Any = None


@dataclass
class Harness:
    root: Path
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    errors: ErrorLog = field(default_factory=ErrorLog)
    failures: dict[str, str] = field(default_factory=dict)
    errors_seen: int = 0
    pools: fz.Pools = field(default_factory=fz.Pools)
    protected_runs: dict[str, bytes] = field(default_factory=dict)
    play_runs: list[str] = field(default_factory=list)
    broken_runs: set[str] = field(default_factory=set)
    call_mark: int = 0  # ERROR records before the last call
    collecting: bool = False  # record failures instead of raising the first (while checking the whole scheduler)
    session_ids: list[str] = field(default_factory=list)
    app: App | None = None
    runtimes: RuntimeGroup = field(default_factory=RuntimeGroup)
    thread: threading.Thread | None = None

    # ------------------------------------------------------------------ thread and loop

    def start(self) -> None:
        logging.getLogger().addHandler(self.errors)
        self.thread = threading.Thread(target=self.loop.run_forever, name="fuzz-scheduler-loop", daemon=True)
        self.thread.start()
        self.run(self._start(), timeout=60)

    def stop(self) -> None:
        try:
            self.run(self._stop(), timeout=60)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            assert self.thread is not None
            self.thread.join(10)
            self.loop.close()
            logging.getLogger().removeHandler(self.errors)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 4 * CALL_TIMEOUT, label: str = "other") -> T:
        """Run ``coro`` on the scheduler's loop and wait for it; a hang fails the example."""
        self.call_mark = len(self.errors.records)
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        started = time.monotonic()
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise AssertionError(f"no answer within {timeout}s: the call hangs") from None
        finally:
            SECONDS[label] += time.monotonic() - started

    # ------------------------------------------------------------------ set-up and tear-down (in the loop)

    async def _start(self) -> None:
        keys_file = self.root / "keys.yaml"
        keys_file.write_text(
            yaml.safe_dump(
                {"keys": [{"key": ADMIN_KEY, "namespaces": ["*"]}, {"key": SCOPED_KEY, "namespaces": [PLAY]}]}
            )
        )
        config = ServerConfig(host="127.0.0.1", port=0, db=str(self.root / "fuzz.db"), api_keys_file=str(keys_file))
        self.app = App(config)
        await self.app.start()
        options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]
        self.channel = grpc.aio.insecure_channel(self.app.address, options=options)
        self.scheduler = scheduler_pb2_grpc.SchedulerServiceStub(self.channel)
        self.runtime = runtime_pb2_grpc.RuntimeServiceStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)
        self.sync_channel = grpc.insecure_channel(self.app.address, options=options)
        self.sync_runtime = runtime_pb2_grpc.RuntimeServiceStub(self.sync_channel)
        await self._set_up_protected()
        await self._set_up_playground()

    async def _stop(self) -> None:
        try:
            await self.runtimes.close()  # a crashed runtime fails the module's last test at teardown
        finally:
            await self.channel.close()
            self.sync_channel.close()
            assert self.app is not None
            await self.app.stop(grace=0.5)

    async def _set_up_protected(self) -> None:
        assert self.app is not None
        await self.runtimes.start(Runtime(PROTECTED, "good-runtime", [Echo], address=self.app.address, key=ADMIN_KEY))
        graph = scheduler_pb2.Graph(
            namespace=PROTECTED,
            name="good",
            nodes=[
                scheduler_pb2.GraphNode(
                    node_name="Echo",
                    identifier="first",
                    inputs={"text": "${{ store.greeting }}"},
                    next_nodes=["second"],
                ),
                scheduler_pb2.GraphNode(
                    node_name="Echo", identifier="second", inputs={"text": "${{ first.outputs.text }}!"}
                ),
            ],
            store_config=scheduler_pb2.StoreConfig(default_values={"greeting": "hello"}),
        )
        await self.scheduler.UpsertGraph(scheduler_pb2.UpsertGraphRequest(graph=graph), metadata=metadata(ADMIN_KEY))
        await self._protected_run()

    async def _protected_run(self) -> None:
        """Trigger the protected graph, wait for SUCCESS, remember the run as it reads back."""
        md = metadata(ADMIN_KEY)
        reply = await self.scheduler.TriggerGraph(
            scheduler_pb2.TriggerGraphRequest(namespace=PROTECTED, graph_name="good", store={"greeting": "hi"}),
            metadata=md,
            timeout=CALL_TIMEOUT,
        )
        request = scheduler_pb2.GetRunRequest(run_id=reply.run_id)
        async with asyncio.timeout(15):
            while True:
                run = await self.scheduler.GetRun(request, metadata=md, timeout=CALL_TIMEOUT)
                if run.run.status != common_pb2.RUN_STATUS_PENDING:
                    break
                await asyncio.sleep(0.01)
        assert run.run.status == common_pb2.RUN_STATUS_SUCCESS, run
        assert [s.outputs[0].fields["text"] for s in run.states] == ["hi", "hi!"], run
        await asyncio.sleep(0.1)  # let the completion commit and the run leave memory
        run = await self.scheduler.GetRun(request, metadata=md, timeout=CALL_TIMEOUT)
        self.protected_runs[reply.run_id] = run.SerializeToString(deterministic=True)

    async def _set_up_playground(self) -> None:
        """Register the playground nodes, save graphs, and leave runs in every kind of state."""
        pools = self.pools
        pools.namespaces = [PLAY, PLAY, PLAY, "fuzz-other", "default"]
        pools.node_names = list(fz.PLAYGROUND_SCHEMAS)
        md = metadata(ADMIN_KEY)

        def node(name: str, ident: str, inputs: dict[str, str], nxt: Sequence[str] = ()) -> scheduler_pb2.GraphNode:
            return scheduler_pb2.GraphNode(node_name=name, identifier=ident, inputs=inputs, next_nodes=list(nxt))

        no_retry = scheduler_pb2.RetryPolicy(max_retries=0)
        seeds = {
            "chain": [
                node("A", "a", {"text": "${{ store.k }}"}, ["b"]),
                node("A", "b", {"text": "${{ a.outputs.text }}"}),
            ],
            "fan": [
                node("A", "a", {"text": "x"}, ["b"]),
                node("B", "b", {"left": "${{ a.outputs.text }}"}, ["m"]),
                node("Free", "m", {}),
            ],
            "merge": [
                node("A", "a", {"text": "x"}, ["b"]),
                node("A", "b", {"text": "${{ a.outputs.text }}"}, ["m"]),
                scheduler_pb2.GraphNode(
                    node_name="A",
                    identifier="m",
                    inputs={"text": "${{ b.outputs.text }}"},
                    unites=scheduler_pb2.Unites(identifier="a"),
                ),
            ],
            "free": [node("Free", "f", {})],
            "secret": [node("Sec", "s", {"text": "x"})],
        }
        # The nodes must be registered first: a session that stays open while the graphs are saved and run.
        session = Session(self, ADMIN_KEY)
        ended = await session.open([runtime_pb2.RuntimeMessage(register=self.play_register(8))])
        assert ended is None and session.registered is not None, ended
        for name, nodes in seeds.items():
            graph = scheduler_pb2.Graph(namespace=PLAY, name=name, nodes=nodes, retry_policy=no_retry)
            if name == "chain":
                graph.store_config.required_keys.append("k")
            secrets = {"token": "s3cr3t"} if name == "secret" else {}
            await self.scheduler.UpsertGraph(
                scheduler_pb2.UpsertGraphRequest(graph=graph, secrets=secrets), metadata=md, timeout=CALL_TIMEOUT
            )
            pools.graph_names.append(name)
            pools.real_graphs.append(name)
        pools.graph_names += ["ghost", "good"]
        triggers = [
            ("chain", {"k": "v"}, 0),
            ("chain", {"k": "v"}, 0),
            ("chain", {"k": "v"}, 0),
            ("fan", {}, 0),
            ("merge", {}, 0),
            ("free", {}, 0),
            ("secret", {}, 0),
            ("free", {}, 3_600_000),
            ("chain", {"k": "later"}, 3_600_000),
        ]
        run_ids = []
        for name, store, delay in triggers:
            reply = await self.scheduler.TriggerGraph(
                scheduler_pb2.TriggerGraphRequest(namespace=PLAY, graph_name=name, store=store, start_delay_ms=delay),
                metadata=md,
                timeout=CALL_TIMEOUT,
            )
            run_ids.append(reply.run_id)
        # Answer the work: the first two chain runs fail at their root, everything else succeeds; "fan" fans out 3.
        failing = set(run_ids[:2])
        for _ in range(20):
            items = await session.next_items(0.3)
            if not items:
                break
            answers = []
            for item in items:
                result = runtime_pb2.Result(state_id=item.state_id, attempt=item.attempt, dispatch_id=item.dispatch_id)
                if item.run_id in failing:
                    result.errored.message = "boom"
                    result.errored.type = "ValueError"
                else:
                    fields = list(fz.PLAYGROUND_SCHEMAS[item.node_name][1]) or []
                    count = 3 if item.node_name == "A" and item.graph_name == "fan" else 1
                    for n in range(count):
                        result.executed.outputs.add().fields.update({f: f"{f}{n}" for f in fields})
                    result.executed.SetInParent()
                answers.append(result)
            await session.send([runtime_pb2.RuntimeMessage(results=runtime_pb2.ResultBatch(results=answers))])
        await session.close()
        # A cancelled run too.
        reply = await self.scheduler.TriggerGraph(
            scheduler_pb2.TriggerGraphRequest(namespace=PLAY, graph_name="free"), metadata=md, timeout=CALL_TIMEOUT
        )
        await self.scheduler.CancelRun(scheduler_pb2.CancelRunRequest(run_id=reply.run_id), metadata=md)
        run_ids.append(reply.run_id)
        for run_id in run_ids:
            run = await self.scheduler.GetRun(scheduler_pb2.GetRunRequest(run_id=run_id), metadata=md)
            pools.state_ids += [s.state_id for s in run.states]
            pools.failed_state_ids += [s.state_id for s in run.states if s.status == common_pb2.STATE_STATUS_ERRORED]
        pools.run_ids += run_ids
        self.play_runs += run_ids

    def play_register(self, max_concurrency: int, namespace: str = PLAY) -> runtime_pb2.Register:
        """A valid registration of the playground nodes (in the playground, or in ``namespace``)."""
        nodes = []
        for name, (inputs, outputs, secrets) in fz.PLAYGROUND_SCHEMAS.items():
            schema = common_pb2.NodeSchema(name=name)
            for label, spec, target in (
                ("Inputs", inputs, schema.inputs),
                ("Outputs", outputs, schema.outputs),
                ("Secrets", secrets, schema.secrets),
            ):
                target.CopyFrom(_descriptor(label, spec))
            nodes.append(schema)
        return runtime_pb2.Register(
            namespace=namespace,
            runtime_name="fuzz-runtime",
            runtime_id="fuzz-runtime-1",
            sdk_version="fuzz/0",
            nodes=nodes,
            max_concurrency=max_concurrency,
        )

    # ------------------------------------------------------------------ calls

    async def unary(self, rpc: str, request: Message, key: str | None, timeout: float = CALL_TIMEOUT) -> Answer:
        method: Callable[..., Awaitable[Any]] = getattr(self.scheduler, rpc)
        try:
            response = await method(request, metadata=metadata(key), timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            return Answer(exc.code(), exc.details() or "")
        return Answer(Code.OK, "", response)

    async def keep_alive(self, request: runtime_pb2.KeepAliveRequest, key: str | None) -> Answer:
        try:
            response = await self.runtime.KeepAlive(request, metadata=metadata(key), timeout=CALL_TIMEOUT)
        except grpc.aio.AioRpcError as exc:
            return Answer(exc.code(), exc.details() or "")
        return Answer(Code.OK, "", response)

    async def watch(self, request: scheduler_pb2.WatchRunRequest, key: str | None) -> Answer:
        """The first event of a watch (a pending run is watched for as long as it runs; one event is enough)."""
        call = self.scheduler.WatchRun(request, metadata=metadata(key), timeout=CALL_TIMEOUT)
        try:
            first = await call.read()
            if first is grpc.aio.EOF:
                return Answer(await call.code(), await call.details() or "")
            return Answer(Code.OK, "", first)
        except grpc.aio.AioRpcError as exc:
            return Answer(exc.code(), exc.details() or "")
        finally:
            call.cancel()

    def connect(self, messages: Sequence[runtime_pb2.RuntimeMessage], key: str | None) -> Answer:
        """One whole Connect stream: send ``messages``, hang up, read everything, return the final status.

        This uses the synchronous gRPC client: when the scheduler ends a stream while the client is still writing,
        grpc.aio's client may replace the scheduler's status with INTERNAL "Internal error from Core"
        (grpc/grpc#36066); the synchronous client reports the scheduler's status.
        """
        started = time.monotonic()
        call = self.sync_runtime.Connect(iter(messages), metadata=metadata(key), timeout=4 * CALL_TIMEOUT)
        try:
            for _ in call:
                pass
            return Answer(call.code(), call.details() or "")
        except grpc.RpcError as exc:
            return Answer(exc.code(), exc.details() or "")
        finally:
            SECONDS["Connect"] += time.monotonic() - started

    def scenario(
        self,
        name: str,
        nodes: Sequence[scheduler_pb2.GraphNode],
        answer: Callable[[runtime_pb2.Execute], runtime_pb2.Result | None],
        *,
        retry: scheduler_pb2.RetryPolicy | None = None,
        rounds: int = 4,
    ) -> None:
        """In a namespace of its own (so that what it leaves behind reaches no other test): register the playground
        nodes, save a graph, trigger it, and answer its states with ``answer``. Every answer must be acceptable, and
        the scheduler must log no crash and no failed commit meanwhile."""
        seen = len(self.errors.records)
        namespace = f"edge-{name}"
        session = Session(self, ADMIN_KEY)
        sent = [runtime_pb2.RuntimeMessage(register=self.play_register(8, namespace))]
        assert self.run(session.open(sent)) is None, name
        graph = scheduler_pb2.Graph(namespace=namespace, name=name, nodes=nodes, retry_policy=retry)
        upsert = scheduler_pb2.UpsertGraphRequest(graph=graph)
        answered = self.run(self.unary("UpsertGraph", upsert, ADMIN_KEY))
        if answered.code == Code.INVALID_ARGUMENT:
            # Refusing the values that once broke a run, when the graph is saved, is the best outcome.
            self.check(f"UpsertGraph({name})", upsert, answered)
            self.check(f"Connect({name})", sent, self.run(session.close()), allowed=STREAM_ALLOWED)
            return
        assert answered.code == Code.OK, (name, answered)
        trigger = scheduler_pb2.TriggerGraphRequest(namespace=namespace, graph_name=graph.name)
        answered = self.run(self.unary("TriggerGraph", trigger, ADMIN_KEY))
        assert answered.code == Code.OK, (name, answered)
        self.play_runs.append(answered.response.run_id)
        for _ in range(rounds):
            items = self.run(session.next_items(0.3))
            if not items:
                break
            batch = [r for r in (answer(item) for item in items) if r is not None]
            sent.append(runtime_pb2.RuntimeMessage(results=runtime_pb2.ResultBatch(results=batch)))
            self.run(session.send(sent[-1:]))
        self.run(asyncio.sleep(0.3))  # let the results be applied and committed
        self.check(f"Connect({name})", sent, self.run(session.close()), allowed=STREAM_ALLOWED)
        crashes = [r for r in self.errors.records[seen:] if "raised by servicer" in r or "commit failed" in r]
        if crashes:
            self.fail(f"{name}: the scheduler logged {len(crashes)} crash(es) or failed commit(s); the first:\n"
                      f"{crashes[0]}\nmessages sent: {describe(sent)}", kind=f"scenario {name}")  # fmt: skip

    async def health_status(self) -> int:
        reply = await self.health.Check(health_pb2.HealthCheckRequest(service=""), timeout=CALL_TIMEOUT)
        return int(reply.status)

    # ------------------------------------------------------------------ verdicts

    def check(
        self,
        rpc: str,
        request: Message | Sequence[Message],
        answer: Answer,
        *,
        allowed: frozenset[Code] = ALLOWED,
        key: str | None = ADMIN_KEY,
    ) -> None:
        COUNTS[rpc] += 1 if isinstance(request, Message) else len(request)
        CODES.setdefault(rpc, Counter())[answer.code.name] += 1
        if answer.code == Code.OK or (answer.code in allowed and names_problem(answer.details)):
            return
        kind = f"{rpc} {answer.code.name} {answer.details[:40]!r}"
        if DUMP and kind not in self.failures:  # the exact messages, to replay the failure outside the suite
            messages = [request] if isinstance(request, Message) else list(request)
            (Path(DUMP) / f"failure-{len(self.failures)}.bin").write_bytes(
                pickle.dumps((rpc, key, [(type(m).__name__, m.SerializeToString()) for m in messages]))
            )
        self.fail(
            f"{rpc} answered {answer.code.name} {answer.details!r} (x-api-key {key!r})\nrequest: {describe(request)}",
            kind=kind,
        )

    def fail(self, message: str, kind: str = "") -> None:
        """Fail the example, or (EXOSPHERE_FUZZ_COLLECT=1) record the failure, one per ``kind``, and go on."""
        recent = "\n".join(self.errors.records[self.call_mark :][:3])
        message = f"{message}\nscheduler errors logged during the last call:\n{recent or '(none)'}"
        if COLLECT or self.collecting:
            self.failures.setdefault(kind or message.split("\n", 1)[0][:100], message)
            return
        raise AssertionError(message)

    @contextlib.contextmanager
    def intact(self) -> Iterator[None]:
        """Run the body, then :meth:`assert_intact`, also when the body failed (so that what it broke is reported
        by its own test, not by the next one)."""
        try:
            yield
        finally:
            self.assert_intact()

    def assert_intact(self) -> None:
        """The scheduler still serves; the protected runs are unchanged and the protected graph still runs; every
        playground run reads back, consistently; no commit failed and no handler crashed meanwhile. Every problem
        found is reported at once."""
        self.collecting = True
        try:
            self.run(self._assert_intact(), timeout=60)
            new_errors = self.errors.records[self.errors_seen :]
            self.errors_seen = len(self.errors.records)
            for marker, what in (
                ("commit failed", "the scheduler failed to commit (state changes were lost)"),
                ("raised by servicer method", "a servicer method raised (its call ended with UNKNOWN)"),
            ):
                found = [r for r in new_errors if marker in r]
                if found:
                    self.fail(f"{what}, {len(found)} time(s); the first:\n{found[0]}", kind=marker)
        finally:
            self.collecting = False
        self.raise_failures()

    def raise_failures(self) -> None:
        """Fail the test with every distinct failure recorded (and not reported yet)."""
        if self.failures:
            failures = list(self.failures.values())
            self.failures.clear()
            raise AssertionError(f"{len(failures)} distinct failure(s):\n\n" + "\n\n".join(failures))

    async def _assert_intact(self) -> None:
        assert await self.health_status() == health_pb2.HealthCheckResponse.SERVING
        md = metadata(ADMIN_KEY)
        for run_id, before in self.protected_runs.items():
            after = await self.scheduler.GetRun(
                scheduler_pb2.GetRunRequest(run_id=run_id), metadata=md, timeout=CALL_TIMEOUT
            )
            assert after.SerializeToString(deterministic=True) == before, f"protected run {run_id} changed: {after}"
        listed = await self.scheduler.ListRuns(
            scheduler_pb2.ListRunsRequest(namespace=PROTECTED, page_size=1000), metadata=md, timeout=CALL_TIMEOUT
        )
        assert {r.run_id for r in listed.runs} == set(self.protected_runs), listed
        await self._protected_run()
        # Every playground run still reads back, consistently.
        for run_id in self.play_runs[-100:]:
            if run_id in self.broken_runs:
                continue  # reported once already
            try:
                reply = await self.scheduler.GetRun(
                    scheduler_pb2.GetRunRequest(run_id=run_id, page_size=500), metadata=md, timeout=CALL_TIMEOUT
                )
            except grpc.aio.AioRpcError as exc:
                self.broken_runs.add(run_id)
                self.fail(
                    f"run {run_id} no longer reads back: {exc.code().name} {exc.details()!r}",
                    kind=f"unreadable run {exc.code().name} {(exc.details() or '')[:30]}",
                )
                continue
            counted = sum(reply.run.state_counts.values())
            if not reply.next_page_token and counted != len(reply.states):
                self.fail(f"run {run_id}: state_counts {dict(reply.run.state_counts)} but {len(reply.states)} states")
            # No runtime of these namespaces is connected now, so no state may be held by one (QUEUED): a state left
            # QUEUED with no runtime never runs again, and its run never ends.
            stuck = [s.state_id for s in reply.states if s.status == common_pb2.STATE_STATUS_QUEUED]
            if stuck:
                self.broken_runs.add(run_id)
                self.fail(f"run {run_id}: states {stuck} are QUEUED while no runtime holds them", kind="stuck states")
            live_statuses = (common_pb2.STATE_STATUS_CREATED, common_pb2.STATE_STATUS_QUEUED)
            live = [s.state_id for s in reply.states if s.status in live_statuses]
            status = common_pb2.RunStatus.Name(reply.run.status)
            if reply.run.status != common_pb2.RUN_STATUS_PENDING and live:
                self.fail(f"run {run_id} is {status} with live states {live}", kind="finished run with live states")
            elif reply.run.status == common_pb2.RUN_STATUS_PENDING and not live and not reply.next_page_token:
                # A pending run with nothing left to run never ends (unless its end is being committed right now).
                await asyncio.sleep(0.3)
                again = await self.scheduler.GetRun(scheduler_pb2.GetRunRequest(run_id=run_id), metadata=md)
                if again.run.status == common_pb2.RUN_STATUS_PENDING:
                    self.broken_runs.add(run_id)
                    statuses = [(s.identifier, s.attempt, common_pb2.StateStatus.Name(s.status)) for s in again.states]
                    self.fail(f"run {run_id} is PENDING with no state left to run: {statuses}", kind="stuck run")


def _descriptor(label: str, spec: dict[str, str | None]) -> DescriptorProto:
    descriptor = DescriptorProto(name=label)
    for number, (name, default) in enumerate(spec.items(), start=1):
        fd = descriptor.field.add(name=name, number=number, type=FieldDescriptorProto.TYPE_STRING)
        if default is None:
            fd.label = FieldDescriptorProto.LABEL_REQUIRED
        else:
            fd.label = FieldDescriptorProto.LABEL_OPTIONAL
            fd.default_value = default
    return descriptor


class Session:
    """One RuntimeService.Connect stream driven message by message (its coroutines run on the harness loop)."""

    def __init__(self, harness: Harness, key: str | None) -> None:
        self.harness = harness
        self.key = key
        self.call: Any = None
        self.inbox: asyncio.Queue[runtime_pb2.SchedulerMessage | None] = asyncio.Queue()
        self.reader: asyncio.Task[None] | None = None
        self.ended: Answer | None = None
        self.registered: runtime_pb2.Registered | None = None

    async def open(self, messages: Sequence[runtime_pb2.RuntimeMessage]) -> Answer | None:
        """Send ``messages``; return the final status if the scheduler ended the stream, else None."""
        self.call = self.harness.runtime.Connect(metadata=metadata(self.key), timeout=4 * CALL_TIMEOUT)
        self.reader = asyncio.get_running_loop().create_task(self._read())
        if messages:
            await self.send(messages[:1])
            first = await self._get(CALL_TIMEOUT)
            if first is not None and first.HasField("registered"):
                self.registered = first.registered
                self.harness.session_ids.append(first.registered.session_id)
            elif first is None:  # the scheduler ended the stream (or said nothing): wait for its status
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(CALL_TIMEOUT):
                        await asyncio.shield(self.reader)
            await self.send(messages[1:])
        return self.ended

    async def _read(self) -> None:
        try:
            while True:
                message = await self.call.read()
                if message is grpc.aio.EOF:
                    break
                self.inbox.put_nowait(message)
        except grpc.aio.AioRpcError:
            pass
        finally:
            self.inbox.put_nowait(None)
            with contextlib.suppress(grpc.aio.AioRpcError):
                code = await self.call.code()
                self.ended = Answer(code, await self.call.details() or "")

    async def _get(self, timeout: float) -> runtime_pb2.SchedulerMessage | None:
        try:
            async with asyncio.timeout(timeout):
                return await self.inbox.get()
        except TimeoutError:
            return None

    async def send(self, messages: Sequence[runtime_pb2.RuntimeMessage]) -> None:
        for message in messages:
            if self.reader is not None and self.reader.done():
                return
            try:
                await self.call.write(message)
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
                return

    async def next_items(self, idle: float) -> list[runtime_pb2.Execute]:
        """The states the scheduler sends within ``idle`` seconds of quiet."""
        items: list[runtime_pb2.Execute] = []
        while (message := await self._get(idle if items else max(idle, 0.05))) is not None:
            if message.HasField("execute"):
                items.extend(message.execute.items)
            if not self.inbox.empty():
                continue
            break
        return items

    async def close(self) -> Answer:
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
            await self.call.done_writing()
        assert self.reader is not None
        try:
            async with asyncio.timeout(2 * CALL_TIMEOUT):
                await asyncio.shield(self.reader)
        except TimeoutError:
            self.call.cancel()
            return Answer(Code.DEADLINE_EXCEEDED, "the scheduler did not end the stream after the runtime hung up")
        assert self.ended is not None
        return self.ended


# ---------------------------------------------------------------------------------------------- fixture

pytestmark = [
    pytest.mark.slow,
    # The scheduler, in this process, draws retry jitter from the global `random` module while hypothesis generates
    # the next example in another thread; hypothesis would take that for a strategy using `random`.
    pytest.mark.filterwarnings(
        "ignore:Do not use the `random` module inside strategies:hypothesis.errors.HypothesisDeprecationWarning"
    ),
    # Failing examples hold megabytes of text; the failure message shows them cut (and EXOSPHERE_FUZZ_DUMP saves
    # them whole).
    pytest.mark.filterwarnings("ignore:Generating overly large repr:hypothesis.errors.HypothesisWarning"),
]


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    h = Harness(tmp_path_factory.mktemp("fuzz"))
    started = time.monotonic()
    h.start()
    try:
        yield h
    finally:
        h.stop()
        total = sum(COUNTS.values())
        lines = []
        for rpc, n in sorted(COUNTS.items()):
            codes = " ".join(f"{c}={k}" for c, k in CODES.get(rpc, Counter()).most_common())
            lines.append(f"  {rpc:<44} {n:>6} {SECONDS.get(rpc, 0.0):5.1f}s  {codes}")
        distinct = Counter(r.split("\n", 1)[0][:150] for r in h.errors.records)
        if distinct:
            lines.append("scheduler ERROR log records (first line, count):")
            lines += [f"  {n:>5}  {first}" for first, n in distinct.most_common(15)]
        streams = ", ".join(f"{k}={v}" for k, v in STREAMS.items())
        print(
            f"\nfuzzed messages: {total} in {time.monotonic() - started:.1f}s (streams: {streams})\n" + "\n".join(lines)
        )


# ---------------------------------------------------------------------------------------------- the tests


@pytest.mark.parametrize("rpc", list(EXAMPLES))
def test_scheduler_rpc(harness: Harness, rpc: str) -> None:
    """Every SchedulerService RPC: generated requests, with the admin key, a scoped key, a wrong key or none."""
    strategy = fz.scheduler_requests(harness.pools)[rpc]

    @settings(FUZZ, max_examples=EXAMPLES[rpc])
    @given(request=strategy, key=keys())
    def fuzz(request: Message, key: str | None) -> None:
        if rpc == "WatchRun":
            assert isinstance(request, scheduler_pb2.WatchRunRequest)
            answer = harness.run(harness.watch(request, key), label=rpc)
        else:
            answer = harness.run(harness.unary(rpc, request, key), label=rpc)
        harness.check(rpc, request, answer, key=key)
        if answer.code == Code.OK and isinstance(answer.response, scheduler_pb2.TriggerGraphResponse):
            harness.play_runs.append(answer.response.run_id)
        elif answer.code == Code.OK and isinstance(answer.response, scheduler_pb2.TriggerGraphsResponse):
            harness.play_runs.extend(answer.response.run_ids[:5])

    with harness.intact():
        fuzz()


def test_runtime_connect(harness: Harness) -> None:
    """RuntimeService.Connect: first message not Register, random registrations, results for unknown states,
    messages with no oneof member set, a second Register; each stream ends with a status that names the problem."""
    valid = harness.play_register(4)

    @settings(FUZZ, max_examples=CONNECT_EXAMPLES)
    @given(messages=fz.runtime_message_streams(harness.pools, valid), key=keys())
    def fuzz(messages: list[runtime_pb2.RuntimeMessage], key: str | None) -> None:
        STREAMS["Connect"] += 1
        harness.check("Connect", messages, harness.connect(messages, key), allowed=STREAM_ALLOWED, key=key)

    with harness.intact():
        fuzz()


def test_runtime_answers_real_work(harness: Harness) -> None:
    """A runtime that is given real states and answers them with any outcome: huge fan-outs, undeclared or missing
    outputs, oversized values, odd prune data, huge requeue delays, wrong ids, no outcome; graphs with wild retry
    policies and timeouts. The stream and every run must stay answerable."""

    @settings(FUZZ, max_examples=REAL_WORK_EXAMPLES)
    @given(data=st.data())
    def fuzz(data: st.DataObject) -> None:
        # Everything is drawn before the first call: hypothesis needs draws that do not depend on the outside world
        # (what the scheduler answers, which states it hands out). The n-th state given is answered with plan n.
        graph = data.draw(playground_graphs(), label="graph")
        store_value = data.draw(st.one_of(fz.texts(), fz.long_texts(70_000)), label="store k")
        delay = data.draw(st.one_of(st.just(0), st.just(0), fz.delays()), label="start delay")
        concurrency = data.draw(st.integers(1, 64), label="max_concurrency")
        rounds = data.draw(st.integers(1, 6), label="rounds")
        plans = data.draw(st.lists(fz.answer_plans(harness.pools), min_size=1, max_size=12), label="answers")

        upsert = scheduler_pb2.UpsertGraphRequest(graph=graph)
        answer = harness.run(harness.unary("UpsertGraph", upsert, ADMIN_KEY))
        harness.check("UpsertGraph(real work)", upsert, answer)
        if answer.code == Code.OK:
            trigger = scheduler_pb2.TriggerGraphRequest(
                namespace=PLAY, graph_name=graph.name, store={"k": store_value}, start_delay_ms=delay
            )
            answer = harness.run(harness.unary("TriggerGraph", trigger, ADMIN_KEY))
            harness.check("TriggerGraph(real work)", trigger, answer)
            if answer.code == Code.OK:
                harness.play_runs.append(answer.response.run_id)
        session = Session(harness, ADMIN_KEY)
        STREAMS["Connect(real work)"] += 1
        sent = [runtime_pb2.RuntimeMessage(register=harness.play_register(concurrency))]
        ended = harness.run(session.open(sent))
        if ended is not None:
            harness.check("Connect(real work)", sent, ended, allowed=STREAM_ALLOWED)
            return
        given_states = 0
        budget, bytes_left = REAL_WORK_OUTPUTS, REAL_WORK_BYTES
        for _ in range(rounds):
            items = harness.run(session.next_items(0.03))
            if not items:
                break
            batch = []
            for item in items:
                result = plans[given_states % len(plans)].apply(item)
                given_states += 1
                if result is None:
                    continue
                if result.HasField("executed"):
                    del result.executed.outputs[max(1, budget) :]
                    if result.ByteSize() > bytes_left:  # over budget: one set of short values
                        del result.executed.outputs[1:]
                        for name, value in list(result.executed.outputs[0].fields.items()):
                            result.executed.outputs[0].fields[name] = value[:16]
                    budget -= len(result.executed.outputs)
                    bytes_left -= result.ByteSize()
                batch.append(result)
            message = runtime_pb2.RuntimeMessage(results=runtime_pb2.ResultBatch(results=batch))
            sent.append(message)
            harness.run(session.send([message]))
        answer = harness.run(session.close())
        harness.check("Connect(real work)", sent, answer, allowed=STREAM_ALLOWED)
        for run_id in harness.play_runs[-1:]:
            request = scheduler_pb2.GetRunRequest(run_id=run_id, page_size=100)
            answer = harness.run(harness.unary("GetRun", request, ADMIN_KEY))
            if answer.code != Code.OK:
                harness.fail(
                    f"run {run_id} cannot be read after its states were answered: {answer.code.name} "
                    f"{answer.details!r}\nmessages sent: {describe(sent)}"
                )

    with harness.intact():
        fuzz()


@st.composite
def playground_graphs(draw: st.DrawFn) -> scheduler_pb2.Graph:
    """Mostly valid graphs of the playground nodes, with wild retry policies and timeouts."""
    size = draw(st.integers(1, 6))
    kinds = [draw(st.sampled_from(["A", "A", "B", "Free"])) for _ in range(size)]
    out = {"A": "text", "B": "out", "Free": ""}
    nodes: list[scheduler_pb2.GraphNode] = []
    for i, kind in enumerate(kinds):
        parent = draw(st.integers(0, i - 1)) if i else -1
        if parent >= 0:
            nodes[parent].next_nodes.append(f"n{i}")
        source = (
            f"${{{{ n{parent}.outputs.{out[kinds[parent]]} }}}}"
            if parent >= 0 and out[kinds[parent]]
            else "${{ store.k }}"
        )
        value = draw(st.sampled_from([source, f"<{source}>", "literal", "${{ store.k }}"]))
        inputs = {"A": {"text": value}, "B": {"left": value}, "Free": {}}[kind]
        node = scheduler_pb2.GraphNode(
            node_name=kind,
            identifier=f"n{i}",
            inputs=inputs,
            timeout_ms=draw(st.one_of(st.just(0), st.just(0), fz.small_or_huge_ms())),
        )
        if draw(st.integers(0, 3)) == 0:
            node.retry_policy.CopyFrom(draw(fz.retry_policies()))
        nodes.append(node)
    if size > 1 and draw(st.booleans()):
        united = draw(st.integers(0, size - 2))
        merge = scheduler_pb2.GraphNode(node_name="Free", identifier="merge")
        merge.unites.identifier = f"n{united}"
        below = [i for i in range(united + 1, size) if f"n{i}" in nodes[united].next_nodes]
        if len(below) > 0 and draw(st.booleans()):
            nodes[below[0]].next_nodes.append("merge")
        merge.unites.strategy = scheduler_pb2.UnitesStrategy.ValueType(draw(st.sampled_from([0, 1, 2])))
        nodes.append(merge)
    graph = scheduler_pb2.Graph(namespace=PLAY, name=f"real-{draw(st.integers(0, 9))}", nodes=nodes)
    graph.store_config.required_keys.append("k")
    if draw(st.booleans()):
        graph.retry_policy.CopyFrom(draw(fz.retry_policies()))
    return graph


def test_keep_alive(harness: Harness) -> None:
    """RuntimeService.KeepAlive with known (ended) session ids and random ones."""
    if not hasattr(runtime_pb2, "KeepAliveRequest"):
        pytest.skip("RuntimeService.KeepAlive is not in this version of the contract")
    sessions = st.sampled_from(harness.session_ids or ["none"])

    @settings(FUZZ, max_examples=KEEPALIVE_EXAMPLES)
    @given(session_id=st.one_of(sessions, fz.names()), key=keys())
    def fuzz(session_id: str, key: str | None) -> None:
        request = runtime_pb2.KeepAliveRequest(session_id=session_id)
        harness.check("KeepAlive", request, harness.run(harness.keep_alive(request, key), label="KeepAlive"), key=key)

    with harness.intact():
        fuzz()


def test_foreign_key_cannot_touch_protected_namespace(harness: Harness) -> None:
    """With a key scoped to the playground, requests naming the protected namespace's graph, runs and states are
    refused (never OK), and the protected runs stay unchanged."""
    run_ids = list(harness.protected_runs)
    state_ids = [f"{r}-{i}" for r in run_ids for i in range(3)]
    ids = st.sampled_from(run_ids + state_ids)
    requests: dict[str, st.SearchStrategy[Message]] = {
        "GetGraph": st.just(scheduler_pb2.GetGraphRequest(namespace=PROTECTED, name="good")),
        "ListGraphs": st.just(scheduler_pb2.ListGraphsRequest(namespace=PROTECTED)),
        "DeleteGraph": st.builds(
            scheduler_pb2.DeleteGraphRequest, namespace=st.just(PROTECTED), name=st.just("good"), force=st.booleans()
        ),
        "TriggerGraph": st.just(scheduler_pb2.TriggerGraphRequest(namespace=PROTECTED, graph_name="good")),
        # One allowed trigger and one not: none may start.
        "TriggerGraphs": st.just(
            scheduler_pb2.TriggerGraphsRequest(
                triggers=[
                    scheduler_pb2.TriggerGraphRequest(namespace=PLAY, graph_name="free"),
                    scheduler_pb2.TriggerGraphRequest(namespace=PROTECTED, graph_name="good"),
                ]
            )
        ),
        "GetRun": st.builds(scheduler_pb2.GetRunRequest, run_id=ids),
        "ListRuns": st.just(scheduler_pb2.ListRunsRequest(namespace=PROTECTED)),
        "WatchRun": st.builds(scheduler_pb2.WatchRunRequest, run_id=ids),
        "CancelRun": st.builds(scheduler_pb2.CancelRunRequest, run_id=ids),
        "RetryState": st.builds(scheduler_pb2.RetryStateRequest, state_id=ids, request_id=fz.texts()),
        "ListNodes": st.just(scheduler_pb2.ListNodesRequest(namespace=PROTECTED)),
        "ListRuntimes": st.just(scheduler_pb2.ListRuntimesRequest(namespace=PROTECTED)),
    }
    refused = frozenset({Code.PERMISSION_DENIED, Code.NOT_FOUND, Code.UNAUTHENTICATED})

    @settings(FUZZ, max_examples=FOREIGN_KEY_EXAMPLES)
    @given(
        pick=st.sampled_from(sorted(requests)).flatmap(lambda rpc: st.tuples(st.just(rpc), requests[rpc])),
        key=st.sampled_from([SCOPED_KEY, "wrong-key", None]),
    )
    def fuzz(pick: tuple[str, Message], key: str | None) -> None:
        rpc, request = pick
        if rpc == "WatchRun":
            assert isinstance(request, scheduler_pb2.WatchRunRequest)
            answer = harness.run(harness.watch(request, key), label=rpc)
        else:
            answer = harness.run(harness.unary(rpc, request, key), label=rpc)
        COUNTS[f"{rpc}(foreign key)"] += 1
        CODES.setdefault(f"{rpc}(foreign key)", Counter())[answer.code.name] += 1
        if answer.code not in refused or not names_problem(answer.details):
            harness.fail(
                f"{rpc} with key {key!r} on the protected namespace answered {answer.code.name} "
                f"{answer.details!r}\nrequest: {describe(request)}"
            )

    with harness.intact():
        fuzz()
        # Namespace-wide listings filter what the key may not see.
        answer = harness.run(harness.unary("ListNamespaces", scheduler_pb2.ListNamespacesRequest(), SCOPED_KEY))
        assert answer.code == Code.OK and PROTECTED not in answer.response.namespaces, answer
        answer = harness.run(harness.unary("ListRuntimes", scheduler_pb2.ListRuntimesRequest(), SCOPED_KEY))
        assert answer.code == Code.OK and all(r.namespace != PROTECTED for r in answer.response.runtimes), answer


def test_oversized_messages(harness: Harness) -> None:
    """Requests over the 64 MiB message limit are refused with RESOURCE_EXHAUSTED, on every RPC and the stream."""
    huge = "x" * (MAX_MESSAGE_BYTES + 1024)
    requests: dict[str, Message] = {
        "UpsertGraph": scheduler_pb2.UpsertGraphRequest(graph=scheduler_pb2.Graph(namespace=PLAY, name=huge)),
        "TriggerGraph": scheduler_pb2.TriggerGraphRequest(namespace=PLAY, graph_name="free", inputs={"x": huge}),
        "GetRun": scheduler_pb2.GetRunRequest(run_id=huge),
        "ListRuns": scheduler_pb2.ListRunsRequest(namespace=PLAY, page_token=huge),
        "RetryState": scheduler_pb2.RetryStateRequest(state_id=huge),
    }
    with harness.intact():
        for rpc, request in requests.items():
            answer = harness.run(harness.unary(rpc, request, ADMIN_KEY), timeout=60)
            harness.check(f"{rpc}(oversized)", request, answer)
            assert answer.code == Code.RESOURCE_EXHAUSTED, (rpc, answer)
        register = harness.play_register(1)
        register.runtime_name = huge
        answer = harness.connect([runtime_pb2.RuntimeMessage(register=register)], ADMIN_KEY)
        harness.check("Connect(oversized)", runtime_pb2.RuntimeMessage(), answer, allowed=STREAM_ALLOWED)
        assert answer.code == Code.RESOURCE_EXHAUSTED, answer


# ---------------------------------------------------------------------------------------------- directed cases

LONG = "x" * 70_000


def _free(ident: str = "f", **kwargs: Any) -> scheduler_pb2.GraphNode:
    return scheduler_pb2.GraphNode(node_name="Free", identifier=ident, **kwargs)


def _cron(timezone: str) -> scheduler_pb2.Graph:
    trigger = scheduler_pb2.CronTrigger(expression="* * * * *", timezone=timezone)
    return scheduler_pb2.Graph(namespace=PLAY, name="edge-cron", nodes=[_free()], triggers=[trigger])


# Inputs that once broke a rule of the contract, kept as explicit cases so that every run tries them whatever
# hypothesis generates. Each must be answered OK or with an allowed status whose message reaches the client.
EDGE_REQUESTS: dict[str, tuple[str, Callable[[Harness], Message]]] = {
    "timezone-name-too-long": ("UpsertGraph", lambda h: scheduler_pb2.UpsertGraphRequest(graph=_cron("a" * 300))),
    "timezone-is-a-directory": ("UpsertGraph", lambda h: scheduler_pb2.UpsertGraphRequest(graph=_cron("Europe"))),
    "get-run-page-token-past-int64": (
        "GetRun",
        lambda h: scheduler_pb2.GetRunRequest(run_id=h.pools.run_ids[2], page_token="99999999999999999999"),
    ),
    "list-runs-page-token-past-int64": (
        "ListRuns",
        lambda h: scheduler_pb2.ListRunsRequest(namespace=PLAY, page_token="99999999999999999999"),
    ),
    "start-delay-past-int64": (
        "TriggerGraph",
        lambda h: scheduler_pb2.TriggerGraphRequest(namespace=PLAY, graph_name="free", start_delay_ms=2**63),
    ),
    "start-delay-uint64-max-in-a-batch": (
        "TriggerGraphs",
        lambda h: scheduler_pb2.TriggerGraphsRequest(
            triggers=[
                scheduler_pb2.TriggerGraphRequest(namespace=PLAY, graph_name="free"),
                scheduler_pb2.TriggerGraphRequest(namespace=PLAY, graph_name="free", start_delay_ms=2**64 - 1),
            ]
        ),
    ),
    "long-graph-name-echoed-in-not-found": (
        "GetGraph",
        lambda h: scheduler_pb2.GetGraphRequest(namespace=PLAY, name=LONG),
    ),
    "long-graph-name-echoed-in-trigger": (
        "TriggerGraph",
        lambda h: scheduler_pb2.TriggerGraphRequest(namespace=PLAY, graph_name=LONG),
    ),
    "long-identifier-echoed-in-validation": (
        "UpsertGraph",
        lambda h: scheduler_pb2.UpsertGraphRequest(
            graph=scheduler_pb2.Graph(namespace=PLAY, name="edge-ids", nodes=[_free(LONG), _free(LONG)])
        ),
    ),
    "long-run-id-echoed-in-not-found": ("GetRun", lambda h: scheduler_pb2.GetRunRequest(run_id=LONG)),
}


@pytest.mark.parametrize("case", list(EDGE_REQUESTS))
def test_edge_request(harness: Harness, case: str) -> None:
    """An input that once broke the contract: an acceptable answer, and nothing broken behind it."""
    rpc, build = EDGE_REQUESTS[case]
    request = build(harness)
    with harness.intact():
        harness.check(rpc, request, harness.run(harness.unary(rpc, request, ADMIN_KEY), label=rpc))


def _errored(item: runtime_pb2.Execute) -> runtime_pb2.Result:
    result = runtime_pb2.Result(state_id=item.state_id, attempt=item.attempt, dispatch_id=item.dispatch_id)
    result.errored.message = "boom"
    return result


def _pruned_deep_json(item: runtime_pb2.Execute) -> runtime_pb2.Result:
    result = runtime_pb2.Result(state_id=item.state_id, attempt=item.attempt, dispatch_id=item.dispatch_id)
    result.pruned.data_json = "[" * 100_000 + "]" * 100_000
    return result


def _requeue_forever(item: runtime_pb2.Execute) -> runtime_pb2.Result:
    result = runtime_pb2.Result(state_id=item.state_id, attempt=item.attempt, dispatch_id=item.dispatch_id)
    result.requeue_after.delay_ms = 2**64 - 1
    return result


def _executed(item: runtime_pb2.Execute) -> runtime_pb2.Result:
    result = runtime_pb2.Result(state_id=item.state_id, attempt=item.attempt, dispatch_id=item.dispatch_id)
    result.executed.SetInParent()
    return result


Answerer = Callable[[runtime_pb2.Execute], runtime_pb2.Result | None]
EDGE_SCENARIOS: dict[str, tuple[list[scheduler_pb2.GraphNode], Answerer, scheduler_pb2.RetryPolicy | None]] = {
    "prune-data-nested-100000-deep": ([_free()], _pruned_deep_json, None),
    "requeue-after-uint64-max": ([_free()], _requeue_forever, None),
    "node-timeout-uint64-max": ([_free(timeout_ms=2**64 - 1)], _executed, None),
    "retry-exponent-1e308": (
        [_free()], _errored, scheduler_pb2.RetryPolicy(max_retries=5, backoff_factor_ms=1, exponent=1e308)
    ),
    "retry-exponent-nan": (
        [_free()], _errored, scheduler_pb2.RetryPolicy(max_retries=2, backoff_factor_ms=1, exponent=float("nan"))
    ),
    "retry-backoff-uint64-max": (
        [_free()], _errored,
        scheduler_pb2.RetryPolicy(max_retries=2, strategy=scheduler_pb2.RETRY_STRATEGY_FIXED,
                                  backoff_factor_ms=2**64 - 1),
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(EDGE_SCENARIOS))
def test_edge_scenario(harness: Harness, case: str) -> None:
    """A runtime answers real states in a way that once crashed its stream or lost a commit."""
    nodes, answer, retry = EDGE_SCENARIOS[case]
    with harness.intact():
        harness.scenario(case, nodes, answer, retry=retry)


def test_huge_graph_does_not_stall_the_scheduler(harness: Harness) -> None:
    """Saving a 5,000-node chain (half the 10,000-node limit) must not block the scheduler's loop: the health
    check answers within a second meanwhile (a stall past the 5 s lease costs every runtime its states)."""
    nodes = [_free(f"n{i}", next_nodes=[f"n{i + 1}"]) for i in range(4999)] + [_free("n4999")]
    request = scheduler_pb2.UpsertGraphRequest(
        graph=scheduler_pb2.Graph(namespace=PLAY, name="edge-chain", nodes=nodes)
    )
    future = asyncio.run_coroutine_threadsafe(
        harness.unary("UpsertGraph", request, ADMIN_KEY, timeout=120), harness.loop
    )
    health = health_pb2_grpc.HealthStub(harness.sync_channel)
    with harness.intact():
        time.sleep(0.3)
        started = time.monotonic()
        try:
            health.Check(health_pb2.HealthCheckRequest(service=""), timeout=30)
        finally:
            stalled = time.monotonic() - started
            answer = future.result(120)
        harness.check("UpsertGraph(5000-node chain)", request, answer)
        assert answer.code == Code.OK, answer
        assert stalled < 1.0, f"the scheduler did not answer its health check for {stalled:.1f}s while saving it"
