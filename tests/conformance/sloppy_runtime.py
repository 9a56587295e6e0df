"""A hand-written runtime that gets the basics right and the rest wrong, for the conformance kit to catch.

Right: registration, outputs, fan-out, store writes, errors, heartbeats. Wrong: every result is sent twice (credit),
cancels are ignored while a Sleep keeps its slot (cancel), Drain is ignored (drain), and it exits when its stream
ends instead of reconnecting (reconnect).
"""

from __future__ import annotations

import asyncio
import os
import uuid

import grpc
from google.protobuf.descriptor_pb2 import DescriptorProto, FieldDescriptorProto

from exosphere.conformance.spec import ERROR_TYPE, NODES
from exosphere.v1 import common_pb2, runtime_pb2_grpc
from exosphere.v1 import runtime_pb2 as pb

CREDIT = 2


def _descriptor(name: str, fields: tuple[str, ...]) -> DescriptorProto:
    d = DescriptorProto(name=name)
    for number, field in enumerate(fields, start=1):
        d.field.add(
            name=field, number=number, type=FieldDescriptorProto.TYPE_STRING, label=FieldDescriptorProto.LABEL_REQUIRED
        )
    return d


async def _run(item: pb.Execute, slots: asyncio.Semaphore) -> pb.Result:
    result = pb.Result(state_id=item.state_id, attempt=item.attempt, dispatch_id=item.dispatch_id)
    inputs = dict(item.inputs)
    async with slots:  # its own view of its credit, which cancels never free
        if item.node_name == "Fail":
            result.errored.message, result.errored.type = inputs["message"], ERROR_TYPE
            return result
        if item.node_name == "Sleep":
            await asyncio.sleep(int(inputs["ms"]) / 1000)
        if item.node_name == "FanOut":
            outputs = [{"item": str(i)} for i in range(int(inputs["count"]))]
        elif item.node_name == "StoreWrite":
            result.store_writes[inputs["key"]] = inputs["value"]
            outputs = [{"key": inputs["key"]}]
        else:  # Echo and Sleep return their one input
            outputs = [inputs]
        for fields in outputs:
            result.executed.outputs.add().fields.update(fields)
    return result


async def main() -> None:
    namespace = os.environ["EXOSPHERE_NAMESPACE"]
    metadata = (("x-api-key", os.environ["EXOSPHERE_API_KEY"]),)
    nodes = [
        common_pb2.NodeSchema(
            name=spec.name,
            inputs=_descriptor("Inputs", spec.inputs),
            outputs=_descriptor("Outputs", spec.outputs),
            secrets=_descriptor("Secrets", ()),
        )
        for spec in NODES
    ]
    register = pb.Register(
        namespace=namespace, runtime_name="sloppy", runtime_id=uuid.uuid4().hex, sdk_version="sloppy/0",
        nodes=nodes, max_concurrency=CREDIT,
    )  # fmt: skip
    slots = asyncio.Semaphore(CREDIT)
    async with grpc.aio.insecure_channel(os.environ["EXOSPHERE_SCHEDULER_ADDRESS"]) as channel:
        call = runtime_pb2_grpc.RuntimeServiceStub(channel).Connect(metadata=metadata)
        await call.write(pb.RuntimeMessage(register=register))
        first = await call.read()
        assert isinstance(first, pb.SchedulerMessage), "the scheduler ended the stream before Registered"
        registered = first.registered

        writing = asyncio.Lock()  # one write at a time on a grpc.aio stream

        async def write(message: pb.RuntimeMessage) -> None:
            async with writing:
                await call.write(message)

        async def heartbeat() -> None:
            while True:
                await asyncio.sleep(registered.heartbeat_interval_ms / 1000)
                await write(pb.RuntimeMessage(heartbeat=pb.Heartbeat()))

        async def answer(item: pb.Execute) -> None:
            result = await _run(item, slots)
            for _ in range(2):  # twice: the second is a duplicate
                await write(pb.RuntimeMessage(results=pb.ResultBatch(results=[result])))

        tasks = {asyncio.create_task(heartbeat())}
        try:
            while isinstance(message := await call.read(), pb.SchedulerMessage):
                if message.WhichOneof("kind") == "execute":
                    for item in message.execute.items:
                        task = asyncio.create_task(answer(item))
                        tasks.add(task)
                        task.add_done_callback(tasks.discard)
        except grpc.aio.AioRpcError:
            pass  # the stream ended: exit instead of reconnecting
        finally:
            for task in tasks:
                task.cancel()


if __name__ == "__main__":
    asyncio.run(main())
