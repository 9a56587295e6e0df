"""Reference resolution: the inputs of a new state, spliced from its ancestors' outputs and the run's store.

References were parsed once at upsert (server/templating.py); here they are looked up in the lineage of the state
that creates the new one. ``${{ id.outputs.f }}`` reads the nearest ancestor ``id`` (its output on this branch);
below a fan-out that is not re-united it is that branch's value, and in a merge state it is a JSON array of every
branch's value, ordered by branch.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from typing import NamedTuple

from . import fanin
from .graph import CompiledNode
from .packed import field_values_json
from .runstate import State
from .sizes import MAX_OUTPUTS_BYTES
from .templating import OutputRef, StoreRef

__all__ = ["Child", "ResolutionError", "children_of", "merge_inputs", "render_inputs", "root_inputs"]

# A state's inputs travel in its Execute item (with the run's store, at most 16 MiB) and in every read of its run
# (with its outputs): bounded so both fit one gRPC message. A merge reading every branch can pass it.
MAX_INPUTS_BYTES = 32 * 1024 * 1024


class ResolutionError(Exception):
    """An input reference has no value in this branch (a state's next states cannot be created)."""


class Child(NamedTuple):
    """A next state to create: which node, below which output of the parent, with what inputs."""

    node: CompiledNode
    parent_output: int
    path: tuple[int, ...]
    inputs: dict[str, str]


def render_inputs(
    node: CompiledNode,
    store: Mapping[str, str],
    output: Callable[[OutputRef, str], str],
    skip: Collection[str] = (),
) -> dict[str, str]:
    """Splice store values and outputs (read through ``output``) into ``node``'s input templates."""
    resolved = {k: v for k, v in node.literal_inputs.items() if k not in skip} if skip else dict(node.literal_inputs)
    for name, template in node.inputs.items():
        if name in resolved or name in skip:
            continue
        parts = []
        for seg in template.segments:
            if isinstance(seg, str):
                parts.append(seg)
            elif isinstance(seg, StoreRef):
                value = store.get(seg.key)
                if value is None:
                    raise ResolutionError(f"{node.identifier}: input {name!r}: store key {seg.key!r} is not set")
                parts.append(value)
            else:
                parts.append(output(seg, name))
        resolved[name] = "".join(parts)
    # O(1) per ASCII value: CPython knows a string is ASCII without scanning it.
    size = sum(len(v) if v.isascii() else len(v.encode()) for v in resolved.values())
    if size > MAX_INPUTS_BYTES:
        raise ResolutionError(
            f"{node.identifier}: its inputs would be {size} bytes; a state's inputs may be at most {MAX_INPUTS_BYTES}"
        )
    return resolved


def root_inputs(root: CompiledNode, store: Mapping[str, str], given: Mapping[str, str]) -> dict[str, str]:
    """The root's inputs: the template's (which may read only the store), overridden by the trigger's."""
    resolved = render_inputs(root, store, _no_outputs, skip=given.keys())
    resolved.update(given)
    return resolved


def children_of(parent: State) -> list[Child]:
    """The next states of a succeeded state: one per output (one when none) per next node.

    Resolves every input before anything is created, so a reference without a value creates nothing.
    """
    nexts = parent.node.next
    if not nexts:
        return []
    outputs = parent.outputs or ()
    count = max(1, len(outputs))
    multi = count > 1
    store = parent.run.store
    children = []
    directs = [_direct_fields(node, parent.identifier) for node in nexts]
    for k in range(count):
        path = (*parent.path, k) if multi else parent.path
        for node, direct in zip(nexts, directs, strict=True):
            inputs = None
            if direct is not None and outputs:
                inputs = _direct_inputs(node, direct, outputs[k])
            if inputs is None:

                def output(ref: OutputRef, name: str, k: int = k, node: CompiledNode = node) -> str:
                    return _lookup(ref, parent, k, node, name)

                inputs = render_inputs(node, store, output)
            if k < len(outputs) and inputs == outputs[k]:
                # The child's inputs are its parent's output (a fan-out passing items on): one dict serves both.
                # Neither is changed once made, and a live run holds both for each of its states.
                inputs = outputs[k]
            children.append(Child(node, k, path, inputs))
    return children


def _direct_fields(node: CompiledNode, parent_identifier: str) -> list[tuple[str, str]] | None:
    """``(input, output field)`` when every templated input of ``node`` is exactly one output field of the parent,
    and no child's inputs can pass MAX_INPUTS_BYTES (each value is at most a result's MAX_OUTPUTS_BYTES); else None,
    and the general path resolves them."""
    fields = []
    for name, template in node.inputs.items():
        if name in node.literal_inputs:
            continue
        segments = template.segments
        if len(segments) != 1:
            return None
        ref = segments[0]
        if not isinstance(ref, OutputRef) or ref.identifier != parent_identifier:
            return None
        fields.append((name, ref.field))
    literal_bytes = sum(len(k.encode()) + len(v.encode()) for k, v in node.literal_inputs.items())
    if literal_bytes + len(fields) * MAX_OUTPUTS_BYTES > MAX_INPUTS_BYTES:
        return None
    return fields


def _direct_inputs(node: CompiledNode, direct: list[tuple[str, str]], output: dict[str, str]) -> dict[str, str] | None:
    """A child's inputs read straight from its parent's output; None when a field is missing (the general path
    then reports it)."""
    inputs = dict(node.literal_inputs)
    for name, field in direct:
        value = output.get(field)
        if value is None:
            return None
        inputs[name] = value
    return inputs


def merge_inputs(merge: CompiledNode, united: State) -> dict[str, str]:
    """Inputs of a merge state: references below the united state read every branch, as a JSON array."""

    def output(ref: OutputRef, name: str) -> str:
        if ref.identifier == united.identifier:
            return _json_array(ref.field, [united])
        if ref.identifier in merge.aggregated:
            states = fanin.collected(united, ref.identifier)
            states.sort(key=_path_key)
            return _json_array(ref.field, states)
        return _lookup(ref, united, -1, merge, name)

    return render_inputs(merge, united.run.store, output)


def _no_outputs(ref: OutputRef, name: str) -> str:
    raise ResolutionError(f"input {name!r}: the root node may reference only the store")


def _lookup(ref: OutputRef, state: State | None, k: int, node: CompiledNode, name: str) -> str:
    """The value of ``${{ ref }}`` in the lineage of ``state`` (its output ``k``)."""
    cur, index = state, k
    while cur is not None:
        if cur.identifier == ref.identifier:
            outputs = cur.outputs
            if not outputs:
                raise ResolutionError(
                    f"{node.identifier}: input {name!r}: {ref.identifier} returned no outputs, so "
                    f"${{{{ {ref.identifier}.outputs.{ref.field} }}}} has no value"
                )
            if index < 0:
                if len(outputs) > 1:
                    return _json_array(ref.field, [cur])
                index = 0
            value = outputs[index].get(ref.field)
            if value is None:
                raise ResolutionError(
                    f"{node.identifier}: input {name!r}: {ref.identifier} has no output {ref.field!r}"
                )
            return value
        index = cur.parent_output
        cur = cur.parent
    raise ResolutionError(f"{node.identifier}: input {name!r}: no ancestor {ref.identifier!r} in this branch")


def _json_array(field_name: str, states: Sequence[State]) -> str:
    return field_values_json(field_name, [s.outputs for s in states])


def _path_key(state: State) -> tuple[int, ...]:
    return state.path
