"""Requests that do not parse get INVALID_ARGUMENT naming the field, not UNKNOWN with a traceback in our log.

gRPC parses a request before the handler runs, and a parse error (a string field holding invalid UTF-8, a truncated
message) escapes as UNKNOWN. ``DecodeInterceptor`` swaps each Exosphere method's parser for one that returns a
``BadRequest`` instead of raising; unary handlers are wrapped to refuse it, and the runtime stream checks every
message it reads (``RuntimeApi``). Finding the field walks the wire format against the method's descriptor, which
only happens for a request that failed to parse.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError

import exosphere.v1.runtime_pb2
import exosphere.v1.scheduler_pb2  # noqa: F401  (registers the services in the default pool)

from .errors import bounded

__all__ = ["BadRequest", "DecodeInterceptor", "find_bad_utf8"]

Ctx = grpc.aio.ServicerContext[Any, Any]


class BadRequest:
    """What the parser returns for a request that does not parse; ``message`` says why."""

    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message


async def refuse(context: Ctx, bad: BadRequest) -> None:
    await context.abort(
        grpc.StatusCode.INVALID_ARGUMENT,
        bounded(bad.message),
        trailing_metadata=(("exosphere-error", "InvalidArgumentError"),),
    )


def _parser(descriptor: Descriptor, parse: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def parse_or_explain(data: bytes) -> Any:
        try:
            return parse(data)
        except DecodeError as exc:
            field = find_bad_utf8(descriptor, data)
            if field is not None:
                return BadRequest(f"invalid {descriptor.name}: field {field} is not valid UTF-8")
            return BadRequest(f"invalid {descriptor.name}: {exc}")

    return parse_or_explain


class DecodeInterceptor(grpc.aio.ServerInterceptor):
    """Turns parse errors of Exosphere requests into INVALID_ARGUMENT (see the module docstring)."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not method.startswith("/exosphere.") or handler.request_deserializer is None:
            return handler
        service, _, name = method[1:].partition("/")
        try:
            descriptor = descriptor_pool.Default().FindServiceByName(service).methods_by_name[name].input_type
        except KeyError:
            return handler
        parse = _parser(descriptor, handler.request_deserializer)
        serialize = handler.response_serializer
        if handler.unary_unary is not None:
            unary: Any = handler.unary_unary

            async def unary_unary(request: Any, context: Ctx) -> Any:
                if isinstance(request, BadRequest):
                    await refuse(context, request)
                return await unary(request, context)

            return grpc.unary_unary_rpc_method_handler(unary_unary, parse, serialize)
        if handler.unary_stream is not None:
            stream: Any = handler.unary_stream

            async def unary_stream(request: Any, context: Ctx) -> AsyncIterator[Any]:
                if isinstance(request, BadRequest):
                    await refuse(context, request)
                async for response in stream(request, context):
                    yield response

            return grpc.unary_stream_rpc_method_handler(unary_stream, parse, serialize)
        if handler.stream_stream is not None:  # the runtime stream checks each message it reads
            return grpc.stream_stream_rpc_method_handler(handler.stream_stream, parse, serialize)
        return handler


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise IndexError("varint too long")


def find_bad_utf8(descriptor: Descriptor, data: bytes, path: str = "") -> str | None:
    """The path (``graph.nodes[2].inputs['x']``) of the first string field in ``data`` that is not UTF-8."""
    seen: dict[int, int] = {}
    pos = 0
    try:
        while pos < len(data):
            key, pos = _varint(data, pos)
            number, wire_type = key >> 3, key & 7
            if wire_type == 0:
                _, pos = _varint(data, pos)
                continue
            if wire_type in (1, 5):
                pos += 8 if wire_type == 1 else 4
                continue
            if wire_type != 2:
                return None
            length, pos = _varint(data, pos)
            chunk, pos = data[pos : pos + length], pos + length
            field = descriptor.fields_by_number.get(number)
            if field is None:
                continue
            index = seen[number] = seen.get(number, -1) + 1
            name = f"{path}{field.name}"
            if field.type == FieldDescriptor.TYPE_STRING:
                try:
                    chunk.decode()
                except UnicodeDecodeError:
                    return f"{name}[{index}]" if field.is_repeated else name
            elif field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type is not None:
                message = field.message_type
                if message.GetOptions().map_entry:
                    found = _bad_map_entry(message, chunk, name)
                else:
                    prefix = f"{name}[{index}]." if field.is_repeated else f"{name}."
                    found = find_bad_utf8(message, chunk, prefix)
                if found is not None:
                    return found
    except IndexError:  # truncated: the parser's own error says enough
        return None
    return None


def _bad_map_entry(entry: Descriptor, data: bytes, name: str) -> str | None:
    found = find_bad_utf8(entry, data, "")
    if found is None:
        return None
    if found == "key":
        return f"{name} (a key)"
    pos = 0
    while pos < len(data):  # the key is valid UTF-8 (checked above): read it to name the value
        tag, pos = _varint(data, pos)
        if tag & 7 != 2:
            _, pos = _varint(data, pos)
            continue
        length, pos = _varint(data, pos)
        if tag >> 3 == 1:
            return f"{name}[{data[pos : pos + length].decode()!r}]"
        pos += length
    return f"{name} (a value)"
