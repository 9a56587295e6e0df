"""A runtime speaking the protocol by hand (docs/protocol.md), to send what the Python SDK never would and to see
exactly what the scheduler answers."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable

import grpc
from google.protobuf.descriptor_pb2 import DescriptorProto, FieldDescriptorProto

from exosphere.v1 import common_pb2, runtime_pb2, runtime_pb2_grpc

__all__ = ["RawRuntime", "descriptor", "done", "node_schema"]


def descriptor(name: str, *fields: str, optional: Iterable[str] = ()) -> DescriptorProto:
    """``fields`` LABEL_REQUIRED; ``optional`` fields LABEL_OPTIONAL, with a default when written ``name=default``."""
    d = DescriptorProto(name=name)
    for field in fields:
        d.field.add(
            name=field, number=len(d.field) + 1, type=FieldDescriptorProto.TYPE_STRING,
            label=FieldDescriptorProto.LABEL_REQUIRED,
        )  # fmt: skip
    for spec in optional:
        field, has_default, default = spec.partition("=")
        fd = d.field.add(
            name=field, number=len(d.field) + 1, type=FieldDescriptorProto.TYPE_STRING,
            label=FieldDescriptorProto.LABEL_OPTIONAL,
        )  # fmt: skip
        if has_default:
            fd.default_value = default
    return d


def node_schema(name: str, inputs: DescriptorProto | None = None) -> common_pb2.NodeSchema:
    """A node with Inputs ``x`` (or ``inputs``) and Outputs ``y``."""
    return common_pb2.NodeSchema(
        name=name,
        inputs=inputs if inputs is not None else descriptor("Inputs", "x"),
        outputs=descriptor("Outputs", "y"),
        secrets=descriptor("Secrets"),
    )


def done(item: runtime_pb2.Execute, y: str, state_id: str | None = None) -> runtime_pb2.Result:
    """An executed result for ``item`` with output ``y``, echoing its ids (``state_id`` forges another)."""
    result = runtime_pb2.Result(state_id=state_id or item.state_id, attempt=item.attempt, dispatch_id=item.dispatch_id)
    result.executed.outputs.add().fields["y"] = y
    return result


class RawRuntime:
    """``async with RawRuntime(address, namespace, [node_schema("Echo")]) as raw:`` registered on one stream."""

    def __init__(
        self, address: str, namespace: str, nodes: list[common_pb2.NodeSchema], credit: int = 8, name: str = "raw"
    ) -> None:
        self._channel = grpc.aio.insecure_channel(address)
        self._call = runtime_pb2_grpc.RuntimeServiceStub(self._channel).Connect()
        self._register = runtime_pb2.Register(
            namespace=namespace, runtime_name=name, runtime_id=uuid.uuid4().hex, sdk_version="raw/0",
            nodes=nodes, max_concurrency=credit,
        )  # fmt: skip
        self.registered: runtime_pb2.Registered | None = None
        # Every message received, in order (what ``next`` skipped included).
        self.received: list[runtime_pb2.SchedulerMessage] = []

    async def __aenter__(self) -> RawRuntime:
        try:
            await self.register()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        self._call.cancel()
        await self._channel.close()

    async def register(self) -> runtime_pb2.Registered:
        """Send Register and read the answer; a refusal raises ``grpc.aio.AioRpcError`` with the status."""
        await self._call.write(runtime_pb2.RuntimeMessage(register=self._register))
        message = await self._read()
        assert message.HasField("registered"), message
        self.registered = message.registered
        return message.registered

    async def next(self, kind: str, timeout: float = 10) -> runtime_pb2.SchedulerMessage:
        """The next message of ``kind`` (``execute``, ``drain``, ``results_rejected``, ...), skipping others."""
        async with asyncio.timeout(timeout):
            while True:
                message = await self._read()
                if message.WhichOneof("kind") == kind:
                    return message

    async def executes(self) -> list[runtime_pb2.Execute]:
        return list((await self.next("execute")).execute.items)

    async def send(self, message: runtime_pb2.RuntimeMessage) -> None:
        await self._call.write(message)

    async def answer(self, *results: runtime_pb2.Result) -> None:
        await self.send(runtime_pb2.RuntimeMessage(results=runtime_pb2.ResultBatch(results=results)))

    async def half_close(self) -> None:
        await self._call.done_writing()

    async def ended(self, timeout: float = 10) -> tuple[grpc.StatusCode, str]:
        """Read until the scheduler ends the stream; its status code and details."""
        async with asyncio.timeout(timeout):
            try:
                while await self._call.read() is not grpc.aio.EOF:
                    pass
            except grpc.aio.AioRpcError as exc:
                return exc.code(), exc.details() or ""
            return await self._call.code(), await self._call.details()

    async def _read(self) -> runtime_pb2.SchedulerMessage:
        message = await self._call.read()
        assert isinstance(message, runtime_pb2.SchedulerMessage), f"the stream ended: {message!r}"  # grpc.aio.EOF
        self.received.append(message)
        return message
