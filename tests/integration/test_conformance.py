"""`exosphere conformance -- COMMAND` on real runtimes: the Python SDK's and the Node.js example's pass; a broken one
and a sloppy hand-written one fail, each on what it gets wrong.

Each run starts a real exosphere-server process (SQLite in a temporary directory) and the runtime as a child
process behind the kit's recording proxy, as a user's run does.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from exosphere.conformance import OBLIGATIONS
from tests.helpers.cli import run_cli
from tests.helpers.node import NODE_RUNTIME_DIR, ensure_node_modules

ROOT = Path(__file__).resolve().parents[2]
PYTHON_RUNTIME = ROOT / "examples" / "conformance" / "python_runtime.py"
BROKEN_RUNTIME = ROOT / "tests" / "conformance" / "broken_runtime.py"
SLOPPY_RUNTIME = ROOT / "tests" / "conformance" / "sloppy_runtime.py"


def _conformance(*argv: str) -> tuple[int, list[str], str]:
    """``exosphere conformance ARGV`` through the CLI's main(); returns the exit code, stdout lines and stderr."""
    result = run_cli("conformance", *argv)
    return result.code, result.out.splitlines(), result.err


def _verdicts(lines: list[str]) -> dict[str, str]:
    """Obligation -> PASS or FAIL, from the report's lines."""
    verdicts = {}
    for line in lines:
        verdict, _, rest = line.partition("  ")
        name = next((o for o in OBLIGATIONS if rest.startswith(o + " ")), None)
        if verdict in ("PASS", "FAIL") and name is not None:
            verdicts[name] = verdict
    return verdicts


def _assert_conforms(code: int, lines: list[str], err: str) -> None:
    report = "\n".join(lines) + err
    verdicts = _verdicts(lines)
    assert set(verdicts) == set(OBLIGATIONS), report
    failed = sorted(name for name in OBLIGATIONS if verdicts[name] != "PASS")
    assert not failed, f"failed {failed}:\n{report}"
    assert code == 0, report
    assert f"{len(OBLIGATIONS)}/{len(OBLIGATIONS)} obligations passed" in lines, report


@pytest.mark.slow
def test_python_runtime_conforms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The user's own settings reach neither the kit's scheduler nor the runtime.
    monkeypatch.setenv("EXOSPHERE_DB", str(tmp_path / "missing" / "elsewhere.db"))
    monkeypatch.setenv("EXOSPHERE_SCHEDULER_ADDRESS", "127.0.0.1:1")
    code, lines, err = _conformance("--keep", str(tmp_path), "--", sys.executable, str(PYTHON_RUNTIME))
    _assert_conforms(code, lines, err)


@pytest.mark.slow
@pytest.mark.timeout(180)  # a first `npm ci` may take a while
def test_node_runtime_conforms(tmp_path: Path) -> None:
    asyncio.run(ensure_node_modules())
    script = NODE_RUNTIME_DIR / "conformance.js"
    code, lines, err = _conformance("--keep", str(tmp_path), "--", "node", str(script))
    _assert_conforms(code, lines, err)


@pytest.mark.slow
def test_kit_fails_a_runtime_that_breaks_the_spec(tmp_path: Path) -> None:
    code, lines, err = _conformance("--keep", str(tmp_path), "--", sys.executable, str(BROKEN_RUNTIME))
    report = "\n".join(lines) + err
    assert code == 1, report
    verdicts = _verdicts(lines)
    assert verdicts == dict.fromkeys(OBLIGATIONS, "FAIL"), report
    registration = next(line for line in lines if line.startswith("FAIL  registration"))
    assert "node StoreWrite missing" in registration, report
    assert "Echo.Inputs.text is LABEL_OPTIONAL, expected LABEL_REQUIRED without a default" in registration, report
    assert "0/10 obligations passed" in lines, report
    # The runtime's log is kept beside the scheduler's for the author to read.
    assert (tmp_path / "runtime.log").is_file() and (tmp_path / "scheduler.log").is_file()


def test_usage_errors_name_the_problem() -> None:
    code, _, err = _conformance()
    assert code == 2 and "give the runtime to check after --" in err
    code, _, err = _conformance("--", "/nonexistent/runtime-binary")
    assert code == 2 and "cannot run '/nonexistent/runtime-binary': no such executable" in err
    code, _, err = _conformance("--lease-ms", "0", "--", "true")
    assert code == 2 and "--lease-ms: must be at least 1 ms, got 0" in err


@pytest.mark.slow
def test_kit_fails_what_a_sloppy_runtime_gets_wrong(tmp_path: Path) -> None:
    # A short grace: the sloppy runtime ignores Drain, so the scheduler waits all of it.
    options = ("--drain-grace-ms", "1000", "--timeout", "10", "--keep", str(tmp_path))
    code, lines, err = _conformance(*options, "--", sys.executable, str(SLOPPY_RUNTIME))
    report = "\n".join(lines) + err
    assert code == 1, report
    verdicts = _verdicts(lines)
    passed = {name for name, verdict in verdicts.items() if verdict == "PASS"}
    assert passed == {"registration", "outputs", "fan-out", "store writes", "heartbeats"}, report

    def seen(obligation: str) -> str:
        return next(line for line in lines if line.startswith(f"FAIL  {obligation} ")).partition("| seen: ")[2]

    assert "on the wire ['errored', 'errored']" in seen("errors"), report  # its duplicate
    assert "a second result: state" in seen("credit") and "the scheduler rejected the result" in seen("credit"), report
    assert "run of conformance-fan-echo still PENDING after 6s" in seen("cancel"), report
    assert seen("drain").startswith("drain(grace 1000 ms) -> closed UNAVAILABLE"), report
    assert "no draining before the stream ended" in seen("drain"), report
    assert seen("reconnect").startswith("the runtime exited with status 0"), report
    wire = (tmp_path / "wire.log").read_text()
    assert "runtime->scheduler register" in wire and "scheduler->runtime drain" in wire
