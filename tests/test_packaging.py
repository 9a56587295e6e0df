"""What the distribution promises: the SDK installs and imports without the scheduler's or the CLI's extras, both
commands print the package version, and the licence file is the one declared."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import subprocess
import sys
import textwrap
import tomllib
import zipfile
from pathlib import Path

import pytest

import exosphere.__main__ as cli_entry

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _names(requirements: list[str]) -> set[str]:
    """Distribution names, normalized (PEP 503), of requirement strings."""
    return {re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9._-]+", r)[0]).lower() for r in requirements}  # type: ignore[index]


CORE = _names(PROJECT["dependencies"])
EXTRAS = {extra: _names(reqs) for extra, reqs in PROJECT["optional-dependencies"].items()}


def test_sdk_core_is_only_what_import_exosphere_needs() -> None:
    assert CORE == {"grpcio", "protobuf", "pydantic"}
    assert {"croniter", "cryptography", "grpcio-health-checking", "grpcio-reflection", "pyyaml", "uvloop"} <= EXTRAS[
        "server"
    ]
    assert {"rich", "pyyaml"} <= EXTRAS["cli"]
    assert not (EXTRAS["server"] | EXTRAS["cli"]) & CORE


def test_installed_metadata_matches_pyproject() -> None:
    installed = importlib.metadata.requires("exosphere") or []
    core = _names([r for r in installed if "extra ==" not in r])
    assert core == CORE
    for extra in ("server", "cli"):
        assert _names([r for r in installed if re.search(rf"extra == ['\"]{extra}['\"]", r)]) == EXTRAS[extra]


def test_the_sdk_works_without_the_extras() -> None:
    """Import the SDK, build a Runtime and a StateManager, with every extra-only package made unimportable."""
    distributions = importlib.metadata.packages_distributions()
    extra_only = {re.sub(r"[-_.]+", "-", d).lower() for d in (EXTRAS["server"] | EXTRAS["cli"])} - CORE
    blocked = sorted(
        module
        for module, dists in distributions.items()
        if any(re.sub(r"[-_.]+", "-", d).lower() in extra_only for d in dists)
    )
    assert {"yaml", "rich", "croniter", "cryptography", "grpc_health"} <= set(blocked)
    script = textwrap.dedent(
        f"""
        import asyncio, sys
        BLOCKED = {blocked!r}

        class Absent:
            def find_spec(self, name, path=None, target=None):
                if name.partition(".")[0] in BLOCKED:
                    raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
                return None

        sys.meta_path.insert(0, Absent())
        from pydantic import BaseModel
        import exospherehost
        from exosphere import BaseNode, Runtime, StateManager

        class Echo(BaseNode):
            class Inputs(BaseModel):
                text: str

            class Outputs(BaseModel):
                text: str

            async def execute(self):
                return self.Outputs(text=self.inputs.text)

        async def main():
            Runtime(namespace="ns", name="rt", nodes=[Echo], address="127.0.0.1:1")
            async with StateManager("ns", address="127.0.0.1:1"):
                pass

        asyncio.run(main())
        print(sorted(m for m in sys.modules if m.partition(".")[0] in BLOCKED))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_cli_without_its_extra_says_which_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "rich" else find_spec(name))
    with pytest.raises(SystemExit) as info:
        cli_entry.main()
    assert "pip install 'exosphere[cli]'" in str(info.value.code)
    assert "rich" in str(info.value.code)


@pytest.mark.parametrize("command", ["exosphere", "exosphere-server"])
def test_version_flag(command: str) -> None:
    script = Path(sys.executable).parent / command
    assert script.exists(), f"{script} is missing: run `make install`"
    done = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{command} {PROJECT['version']}"
    assert importlib.metadata.version("exosphere") == PROJECT["version"]


def test_license_file_is_the_declared_apache_2() -> None:
    assert PROJECT["license"] == "Apache-2.0"
    assert PROJECT["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert text.split()[:4] == ["Apache", "License", "Version", "2.0,"]
    for clause in ("1. Definitions.", "9. Accepting Warranty or Additional Liability.", "END OF TERMS AND CONDITIONS"):
        assert clause in text
    assert not [c for c in PROJECT["classifiers"] if c.startswith("License ::")]  # PEP 639: the expression says it


@pytest.mark.slow
def test_the_wheel_installs_the_scheduler_as_exosphere_server_and_no_top_level_server(tmp_path: Path) -> None:
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), ROOT],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr
    [wheel] = tmp_path.glob("exosphere-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    top = {name.split("/")[0] for name in names if not name.split("/")[0].endswith((".dist-info", ".data"))}
    assert top == {"exosphere", "exospherehost", "exosphere_server"}, top
    assert "exosphere_server/engine.py" in names and "exosphere_server/__main__.py" in names
    assert "exosphere/v1/runtime_pb2.py" in names and "exospherehost/node/BaseNode.py" in names
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    with zipfile.ZipFile(wheel) as archive:
        assert "exosphere-server = exosphere_server.__main__:main" in archive.read(entry_points).decode()


@pytest.mark.slow
def test_the_wheel_ships_the_dashboard_assets(tmp_path: Path) -> None:
    """The dashboard needs no internet at run time: its page, script, style and the vendored libraries are in the
    wheel."""
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), ROOT],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr
    [wheel] = tmp_path.glob("exosphere-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    static = "exosphere_server/web/static"
    for asset in ("index.html", "app.js", "style.css", "vendor/cytoscape.min.js", "vendor/dagre.min.js"):
        assert f"{static}/{asset}" in names, asset
    assert f"{static}/vendor/cytoscape-dagre.js" in names
    assert "exosphere_server/web/routes.py" in names
    page = (ROOT / "server/web/static/index.html").read_text()
    assert not re.search(r"(src|href)=\"https?://", page), "the page must not load anything from the internet"
