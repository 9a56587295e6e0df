"""The test helpers themselves: a crashed runtime fails its test, waits fail with a message (no sockets here)."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from exosphere import Runtime
from tests.helpers.runtimes import RuntimeCrashedError, RuntimeGroup, running
from tests.helpers.servers import stop_process
from tests.helpers.waiting import assert_eventually
from tests.nodes import Echo


class FakeRuntime(Runtime):
    """Registers at once (unless ``registers=False``), then runs until ``stop()`` or ``crash()``; no connection."""

    def __init__(
        self,
        name: str = "fake",
        *,
        registers: bool = True,
        quits: bool = False,
        fails_with: BaseException | None = None,
        deaf: bool = False,
    ) -> None:
        super().__init__("helpers", name, [Echo])
        self.registers = registers
        self.quits = quits  # run() returns at once, after registering or not
        self.fails_with = fails_with  # raised by run() before it registers
        self.deaf = deaf  # ignores stop(), as a node sleeping past the test would
        self._crash: BaseException | None = None
        self._wake = asyncio.Event()
        self._is_registered = asyncio.Event()

    async def run(self) -> None:
        if self.fails_with is not None:
            raise self.fails_with
        if self.registers:
            self._is_registered.set()
        if self.quits:
            return
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._crash is not None:
                raise self._crash
            if not self.deaf:
                return

    def stop(self) -> None:
        self._wake.set()

    def crash(self, error: BaseException) -> None:
        self._crash = error
        self._wake.set()

    async def wait_registered(self, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            await self._is_registered.wait()


async def test_runtimes_that_stop_when_asked_pass() -> None:
    async with RuntimeGroup() as group:
        first = await group.start(FakeRuntime("a"))
        await group.start(FakeRuntime("b"))
        await group.stop(first)


async def test_a_runtime_that_crashed_during_the_test_fails_it_at_teardown_with_its_exception() -> None:
    boom = ValueError("boom")
    with pytest.raises(
        RuntimeCrashedError, match=r"runtime 'fake' in namespace 'helpers' crashed: ValueError: boom"
    ) as info:
        async with RuntimeGroup() as group:
            runtime = await group.start(FakeRuntime())
            runtime.crash(boom)
    assert info.value.__cause__ is boom
    assert info.value.error is boom


async def test_stopping_one_crashed_runtime_raises_there() -> None:
    async with RuntimeGroup() as group:
        runtime = await group.start(FakeRuntime())
        runtime.crash(OSError("disk"))
        with pytest.raises(RuntimeCrashedError, match="OSError: disk"):
            await group.stop(runtime)


async def test_several_crashes_are_all_reported() -> None:
    with pytest.raises(ExceptionGroup) as info:
        async with RuntimeGroup() as group:
            for name in ("a", "b"):
                (await group.start(FakeRuntime(name))).crash(ValueError(name))
    assert sorted(str(e.__cause__) for e in info.value.exceptions) == ["a", "b"]
    assert all(isinstance(e, RuntimeCrashedError) for e in info.value.exceptions)


async def test_a_crash_before_registration_fails_start_at_once() -> None:
    async with RuntimeGroup() as group:
        with pytest.raises(RuntimeCrashedError, match="PermissionError: denied"):
            await group.start(FakeRuntime(fails_with=PermissionError("denied")), timeout=30)


async def test_a_runtime_that_returns_without_registering_fails_start() -> None:
    async with RuntimeGroup() as group:
        with pytest.raises(AssertionError, match="returned before it registered"):
            await group.start(FakeRuntime(registers=False, quits=True))


async def test_a_runtime_that_never_registers_fails_start_after_the_timeout() -> None:
    async with RuntimeGroup() as group:
        with pytest.raises(AssertionError, match=r"not registered within 0\.05s"):
            await group.start(FakeRuntime(registers=False), timeout=0.05)


async def test_when_the_test_failed_too_the_crash_is_a_note_on_its_failure() -> None:
    with pytest.raises(AssertionError, match="the test's own failure") as info:
        async with RuntimeGroup() as group:
            (await group.start(FakeRuntime())).crash(ValueError("boom"))
            raise AssertionError("the test's own failure")
    notes = "".join(info.value.__notes__)
    assert "and at teardown" in notes and "ValueError: boom" in notes


async def test_a_runtime_still_busy_after_stop_is_cancelled_without_failing() -> None:
    async with RuntimeGroup(stop_timeout=0.05) as group:
        await group.start(FakeRuntime(deaf=True))


async def test_with_strict_stop_a_runtime_still_busy_after_stop_fails_once_cancelled() -> None:
    runtime = FakeRuntime(deaf=True)
    with pytest.raises(AssertionError, match=r"runtime 'fake' still running 0\.05s after stop\(\)"):
        async with RuntimeGroup(stop_timeout=0.05, strict_stop=True) as group:
            await group.start(runtime)
    with pytest.raises(AssertionError, match="still running"):
        async with running(FakeRuntime(deaf=True), stop_timeout=0.05, strict_stop=True):
            pass


async def test_running_is_one_runtime_in_a_group() -> None:
    async with running(FakeRuntime()) as runtime:
        assert isinstance(runtime, FakeRuntime)
    with pytest.raises(RuntimeCrashedError, match="boom"):
        async with running(FakeRuntime()) as runtime:
            assert isinstance(runtime, FakeRuntime)
            runtime.crash(ValueError("boom"))


async def test_assert_eventually_fails_with_a_message() -> None:
    with pytest.raises(AssertionError, match=r"not true within 0.05s: nothing came"):
        await assert_eventually(lambda: False, timeout=0.05, message="nothing came")
    seen = [0]

    def observed() -> str:
        return f"seen={seen[0]}"

    def counting() -> bool:
        seen[0] += 1
        return False

    with pytest.raises(AssertionError, match=r"not true within 0.05s: seen=\d+"):
        await assert_eventually(counting, timeout=0.05, message=observed)


async def test_assert_eventually_takes_async_predicates_and_lets_their_errors_through() -> None:
    calls = [0]

    async def third_time() -> bool:
        calls[0] += 1
        return calls[0] == 3

    await assert_eventually(third_time, timeout=5, interval=0)
    assert calls == [3]

    def times_out() -> bool:
        raise TimeoutError("the predicate's own")

    with pytest.raises(TimeoutError, match="the predicate's own"):
        await assert_eventually(times_out, timeout=5)


def _child(on_sigterm: str) -> subprocess.Popen[str]:
    """A Python child that prints ``up`` once its SIGTERM handler (``on_sigterm``) is installed, then sleeps."""
    code = f"""
import signal, sys, time
signal.signal(signal.SIGTERM, {on_sigterm})
print("up", flush=True)
time.sleep(30)
"""
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


async def test_stop_process_returns_the_exit_code_and_the_rest_of_the_output() -> None:
    proc = _child('lambda *_: (print("bye"), sys.exit(3))')
    assert proc.stdout is not None
    assert await asyncio.to_thread(proc.stdout.readline) == "up\n"
    assert await stop_process(proc) == (3, "bye\n")


async def test_stop_process_kills_a_child_that_ignores_sigterm_and_fails() -> None:
    proc = _child("signal.SIG_IGN")
    assert proc.stdout is not None
    assert await asyncio.to_thread(proc.stdout.readline) == "up\n"
    with pytest.raises(AssertionError, match=r"did not exit within 0\.2s of SIGTERM"):
        await stop_process(proc, timeout=0.2)
    assert proc.returncode == -9
