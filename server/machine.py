"""The state machine: what happens to a run when a runtime answers, a deadline passes, or a user steps in.

    CREATED ──dispatch──▶ QUEUED ──executed──▶ SUCCESS (next states created)  │ NEXT_CREATED_ERROR
       ▲                    │ ──errored/timed out──▶ RETRY_CREATED (new attempt) │ ERRORED │ TIMEDOUT
       └──requeue / lost────┘ ──pruned──▶ PRUNED                     any live ──cancel──▶ CANCELLED

A state that reaches a final status closes: its run counts one open state fewer, the united states above it learn
of it (server/fanin.py) and may fire their merges, and a run with nothing open ends. Status changes go through the
run table (server/runtable.py), which stamps and marks them for the group commit.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

from . import fanin
from .dispatch import Dispatcher
from .graph import MAX_DELAY_MS, CompiledNode
from .packed import pack
from .resolve import ResolutionError, children_of, merge_inputs
from .retry import retry_delay_ms
from .runstate import Run, State
from .runtable import RunTable
from .sessions import withdraw
from .status import LIVE_STATE_STATUSES, RunStatus, StateStatus
from .triggers import CheckedTrigger

__all__ = ["StateMachine"]

logger = logging.getLogger(__name__)

# Enum members bound once: attribute access on an Enum class costs ~70 ns on Python 3.11 and the hot path makes
# dozens per state.
CANCELLED = StateStatus.CANCELLED
CREATED = StateStatus.CREATED
ERRORED = StateStatus.ERRORED
NEXT_CREATED_ERROR = StateStatus.NEXT_CREATED_ERROR
PRUNED = StateStatus.PRUNED
QUEUED = StateStatus.QUEUED
RETRY_CREATED = StateStatus.RETRY_CREATED
RUN_PENDING = RunStatus.PENDING
SUCCESS = StateStatus.SUCCESS
TIMEDOUT = StateStatus.TIMEDOUT


class StateMachine:
    def __init__(self, table: RunTable, dispatcher: Dispatcher, *, default_timeout_ms: int) -> None:
        self._table = table
        self._dispatcher = dispatcher
        self._default_timeout_ms = default_timeout_ms

    # ------------------------------------------------------------------ creating runs and states

    def start_run(self, checked: CheckedTrigger, run_id: str, now: int) -> Run:
        graph = checked.graph
        run = Run(
            run_id=run_id,
            namespace=graph.namespace,
            graph_name=graph.name,
            graph_version=graph.version,
            status=RUN_PENDING,
            store=checked.store,
            created_at_ms=now,
            updated_at_ms=now,
            graph=graph,
        )
        self._table.add_run(run)
        run_at = now + checked.start_delay_ms if checked.start_delay_ms else 0
        self._spawn(run, graph.root, checked.root_inputs, None, 0, (), now, run_at_ms=run_at)
        return run

    def _spawn(
        self,
        run: Run,
        node: CompiledNode,
        inputs: dict[str, str],
        parent: State | None,
        parent_output: int,
        path: tuple[int, ...],
        now: int,
        *,
        attempt: int = 1,
        run_at_ms: int = 0,
        watchers: tuple[State, ...] | None = None,
    ) -> State:
        state = self._table.new_state(
            run, node, inputs, parent, parent_output, path, now, attempt=attempt, run_at_ms=run_at_ms, watchers=watchers
        )
        self._dispatcher.enqueue(state)
        return state

    # ------------------------------------------------------------------ what runtimes answer

    def executed(
        self, state: State, outputs: list[dict[str, str]], store_writes: dict[str, str] | None, now: int
    ) -> None:
        problems = _output_problems(state.node, outputs)
        if problems:
            self.failed(state, {"message": problems, "type": "InvalidOutputsError"}, ERRORED, now)
            return
        if store_writes:
            self._table.write_store(state.run, store_writes)
        kept: Sequence[dict[str, str]] = outputs
        if outputs and not state.node.next:
            kept = pack(outputs)  # read again only by a merge, a read of the run and its row (server/packed.py)
        state.outputs = kept  # children_of reads them
        try:
            children = children_of(state)
        except ResolutionError as exc:
            error = {"message": str(exc), "type": "ResolutionError"}
            self._table.transition(state, NEXT_CREATED_ERROR, now, outputs=kept, error=error)
            self._close(state, failed=True, now=now)
            return
        if children:  # next nodes are never merges: one watchers tuple serves every child
            watchers = fanin.watchers_of(state, children[0].node)
            run = state.run
            for child in children:
                self._spawn(
                    run, child.node, child.inputs, state, child.parent_output, child.path, now, watchers=watchers
                )
        self._table.transition(state, SUCCESS, now, outputs=kept)
        self._close(state, failed=False, now=now)

    def failed(self, state: State, error: dict[str, str], status: StateStatus, now: int) -> None:
        """The attempt failed (``status`` ERRORED or TIMEDOUT): retry it by its policy, or fail it."""
        run = state.run
        policy = state.node.retry
        retry = state.attempt  # the retry about to be created, counting from 1
        if retry <= policy.max_retries and not run.cancelled:
            final = RETRY_CREATED if status == ERRORED else status
            self._table.transition(state, final, now, error=error)
            delay = retry_delay_ms(policy, retry)
            new = self._spawn(
                run, state.node, state.inputs, state.parent, state.parent_output, state.path, now,
                attempt=state.attempt + 1, run_at_ms=now + delay,
            )  # fmt: skip
            # The new attempt takes over the old one's place among open states.
            run.open_states -= 1
            fanin.replaced(state)
            logger.info(
                "state retry state_id=%s identifier=%r attempt=%d delay_ms=%d error=%r",
                state.state_id, state.identifier, new.attempt, delay, error.get("message", "")[:200],
            )  # fmt: skip
            return
        self._table.transition(state, status, now, error=error)
        logger.warning(
            "state failed state_id=%s run_id=%s identifier=%r status=%s error=%r",
            state.state_id, run.run_id, state.identifier, status, error.get("message", "")[:200],
        )  # fmt: skip
        self._close(state, failed=True, now=now)

    def pruned(self, state: State, data: str, now: int) -> None:
        self._table.transition(state, PRUNED, now, pruned_data=data)
        self._close(state, failed=False, now=now)

    def requeued(self, state: State, delay_ms: int, now: int) -> None:
        """Run the state again after ``delay_ms`` without counting a retry."""
        run_at = now + min(max(1, delay_ms), MAX_DELAY_MS)
        self._table.transition(state, CREATED, now, run_at_ms=run_at)
        self._dispatcher.enqueue(state)

    def timed_out(self, state: State, now: int) -> None:
        withdraw(state)
        timeout_ms = state.node.timeout_ms or self._default_timeout_ms
        error = {"message": f"state ran longer than its timeout of {timeout_ms} ms", "type": "TimeoutError"}
        self.failed(state, error, TIMEDOUT, now)

    # ------------------------------------------------------------------ users stepping in

    def cancel(self, run: Run, now: int) -> None:
        """Cancel every live state of a pending run; the run ends CANCELLED."""
        if not run.pending:
            return
        run.cancelled = True
        for state in list(run.states):
            if state.status not in LIVE_STATE_STATUSES:
                continue
            if state.status == QUEUED:
                withdraw(state)
            self._table.transition(state, CANCELLED, now)
            self._close(state, failed=False, now=now)
        logger.info("run cancelled run_id=%s", run.run_id)

    def retry(self, state: State, now: int) -> State:
        """A new attempt of the last failed attempt of a state (manual retry); reopens its run if it ended."""
        run = state.run
        new = self._spawn(
            run, state.node, dict(state.inputs), state.parent, state.parent_output, state.path, now,
            attempt=state.attempt + 1,
        )  # fmt: skip
        if not run.pending:
            self._table.reopen_run(run, now)
        fanin.recount_failures(run)
        return new

    # ------------------------------------------------------------------ closing states, firing merges, ending runs

    def _close(self, state: State, *, failed: bool, now: int) -> None:
        """A state reached its final status: update its run and the merges that wait for it."""
        run = state.run
        run.open_states -= 1
        if failed:
            run.failed = True
        if state.node.merges:
            self._fire(state, now)
        # Innermost first: an inner merge, once created, is open below the outer united states, which then wait for it.
        for united in reversed(fanin.closed(state, failed=failed)):
            self._fire(united, now)
        if run.open_states == 0 and run.pending:
            self._end(run, now)

    def _fire(self, united: State, now: int) -> None:
        """Create the merge states of a united state once nothing below it can change."""
        run = united.run
        for merge in fanin.due_merges(united):
            try:
                inputs = merge_inputs(merge, united)
            except ResolutionError as exc:
                error = {"message": str(exc), "type": "ResolutionError"}
                self._table.transition(united, NEXT_CREATED_ERROR, now, error=error)
                run.failed = True
                continue
            self._spawn(run, merge, inputs, united, -1, united.path, now)
        fanin.release(united)

    def _end(self, run: Run, now: int) -> None:
        self._table.end_run(run, now)
        logger.info(
            "run finished run_id=%s graph=%r status=%s states=%d",
            run.run_id,
            run.graph_name,
            run.status,
            len(run.states),
        )

    def resume(self, runs: Iterable[Run], now: int, *, end: bool = True) -> int:
        """Continue runs just loaded from the store: queue what is CREATED, fire due merges, end what has nothing
        open (unless ``end`` is false: a run reopened for a manual retry). Returns how many states were queued."""
        queued = 0
        for run in runs:
            for state in list(run.states):
                if state.status == CREATED:
                    self._dispatcher.enqueue(state)
                    queued += 1
                elif state.status == SUCCESS and state.node.merges:
                    self._fire(state, now)
            if end and run.open_states == 0 and run.pending:
                self._end(run, now)
        return queued


def _output_problems(node: CompiledNode, outputs: list[dict[str, str]]) -> str:
    if not node.output_fields and not node.required_outputs:
        return ""
    declared = node.output_fields
    for fields in outputs:  # the common case, without building sets (or a generator per result)
        if fields.keys() != declared:
            break
    else:
        return ""
    for index, fields in enumerate(outputs):
        unknown = fields.keys() - node.output_fields
        missing = node.required_outputs - fields.keys()
        if unknown or missing:
            parts = []
            if missing:
                parts.append(f"missing fields {sorted(missing)}")
            if unknown:
                parts.append(f"undeclared fields {sorted(unknown)}")
            return f"{node.node_name} output #{index}: " + ", ".join(parts)
    return ""
