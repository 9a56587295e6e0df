"""Imports point one way: the scheduler uses only the SDK's generated protocol, its error types, its log format and
its wire framing, and the SDK never imports the scheduler."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVER_MAY_IMPORT = ("exosphere.v1", "exosphere.errors", "exosphere.logs", "exosphere.wireformat")


def _imports(path: Path) -> list[str]:
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return names


def _offenders(folder: str, allowed: tuple[str, ...], forbidden: tuple[str, ...]) -> list[str]:
    found = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        for name in _imports(path):
            if name.startswith(forbidden) and not name.startswith(allowed):
                found.append(f"{path.relative_to(ROOT)}: {name}")
    return found


def test_the_scheduler_imports_only_the_sdks_protocol_errors_log_format_and_framing() -> None:
    assert _offenders("server", SERVER_MAY_IMPORT, ("exosphere",)) == []


def test_the_sdk_never_imports_the_scheduler() -> None:
    forbidden = ("server", "exosphere_server")
    assert _offenders("exosphere", (), forbidden) == []
    assert _offenders("exospherehost", (), forbidden) == []


@pytest.mark.parametrize("module", ["exosphere/logs.py", "exosphere/wireformat.py"])
def test_what_the_scheduler_shares_with_the_sdk_needs_only_the_standard_library(module: str) -> None:
    roots = {name.split(".")[0] for name in _imports(ROOT / module)} - {"__future__"}
    assert roots and roots <= sys.stdlib_module_names, roots
