"""Errors keep their class, message and ids across the wire (server trailers → SDK), without sockets."""

from __future__ import annotations

import copy
import pickle

import grpc
import pytest

from exosphere._channel import to_exosphere_error
from exosphere.errors import (
    ConflictError,
    ExosphereError,
    GraphNotFoundError,
    GraphValidationError,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    RunNotFoundError,
    StateNotFoundError,
)
from server.errors import MAX_ENCODED_SUBJECT, error_trailers

ERRORS: list[ExosphereError] = [
    GraphNotFoundError("ns", "g"),
    GraphNotFoundError("ñs 100%", "  spaced\tname ✓ \U0001f600"),
    RunNotFoundError("run-1"),
    StateNotFoundError("run-1-7"),
    ConflictError("plain conflict"),
    ConflictError("cannot retry", run_id="r", state_id="r-1"),
    ConflictError("pending runs", namespace="ns", graph_name="g"),
    PermissionDeniedError("not here", namespace="ns"),
    InternalError("boom", incident_id="abc123"),
    InvalidArgumentError("bad"),
    GraphValidationError(["one problem", "another"]),
]


def _over_the_wire(error: ExosphereError) -> ExosphereError:
    trailers = grpc.aio.Metadata(*error_trailers(error))
    rpc_error = grpc.aio.AioRpcError(error.status, grpc.aio.Metadata(), trailers, details=str(error))
    return to_exosphere_error(rpc_error)


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: type(e).__name__)
def test_class_message_and_ids_survive_the_wire(error: ExosphereError) -> None:
    rebuilt = _over_the_wire(error)
    assert type(rebuilt) is type(error)
    assert str(rebuilt) == str(error)
    assert rebuilt.subject == error.subject
    assert vars(rebuilt) == vars(error)


def test_trailers_are_printable_ascii_one_per_id() -> None:
    trailers = error_trailers(GraphNotFoundError("ñs", "a b%"))
    assert trailers == (
        ("exosphere-error", "GraphNotFoundError"),
        ("exosphere-error-namespace", "%C3%B1s"),
        ("exosphere-error-graph-name", "a%20b%25"),
    )


def test_ids_not_sent_are_empty_or_none() -> None:
    # An older scheduler sends only the class name.
    rpc_error = grpc.aio.AioRpcError(
        grpc.StatusCode.NOT_FOUND,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(("exosphere-error", "RunNotFoundError")),
        details="run 'x' not found",
    )
    rebuilt = to_exosphere_error(rpc_error)
    assert isinstance(rebuilt, RunNotFoundError)
    assert rebuilt.run_id == ""
    conflict = ConflictError.from_wire("m", {})
    assert (conflict.run_id, conflict.state_id, conflict.namespace, conflict.graph_name) == (None, None, None, None)


def test_a_huge_id_is_left_out_rather_than_breaking_the_trailers() -> None:
    trailers = error_trailers(GraphNotFoundError("ns", "g" * (MAX_ENCODED_SUBJECT + 1)))
    assert trailers == (("exosphere-error", "GraphNotFoundError"), ("exosphere-error-namespace", "ns"))


def test_without_a_class_name_the_status_picks_the_class() -> None:
    rpc_error = grpc.aio.AioRpcError(grpc.StatusCode.NOT_FOUND, grpc.aio.Metadata(), grpc.aio.Metadata(), "gone")
    rebuilt = to_exosphere_error(rpc_error)
    assert type(rebuilt) is NotFoundError
    assert str(rebuilt) == "gone"


def test_with_message_keeps_the_ids() -> None:
    error = GraphNotFoundError("ns", "g").with_message("trigger #3: graph 'g' not found in namespace 'ns'")
    assert type(error) is GraphNotFoundError
    assert (error.namespace, error.graph_name) == ("ns", "g")
    assert str(error).startswith("trigger #3: ")


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: type(e).__name__)
def test_errors_pickle_and_copy(error: ExosphereError) -> None:
    for clone in (pickle.loads(pickle.dumps(error)), copy.copy(error)):
        assert type(clone) is type(error)
        assert str(clone) == str(error)
        assert vars(clone) == vars(error)
