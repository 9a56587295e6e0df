"""docs/graph-files.md's example is a graph that applies and runs as the page says."""

from __future__ import annotations

import json
import re
from pathlib import Path

from pydantic import BaseModel

from exosphere import BaseNode, RunStatus, StateManager
from tests.engine_nodes import Split
from tests.helpers.cli import cli
from tests.helpers.runtimes import RuntimeFactory

DOC = Path(__file__).resolve().parents[2] / "docs" / "graph-files.md"


class Summarize(BaseNode):
    class Inputs(BaseModel):
        text: str
        max_words: str = "100"

    class Outputs(BaseModel):
        summary: str

    class Secrets(BaseModel):
        api_key: str

    async def execute(self) -> Outputs:
        return self.Outputs(summary=" ".join(self.inputs.text.split()[: int(self.inputs.max_words)]).upper())


class Report(BaseNode):
    class Inputs(BaseModel):
        summaries: str

    class Outputs(BaseModel):
        report: str

    async def execute(self) -> Outputs:
        return self.Outputs(report=" | ".join(json.loads(self.inputs.summaries)))


async def test_the_documented_graph_file_applies_and_runs(
    tmp_path: Path, server_address: str, start_runtime: RuntimeFactory
) -> None:
    [example] = re.findall(r"```yaml\n(.*?)```", DOC.read_text(), re.S)
    path = tmp_path / "graph.yaml"
    path.write_text(example)
    await start_runtime([Split, Summarize, Report], namespace="docs")
    applied = await cli("graph", "apply", str(path), "--address", server_address)
    assert applied.code == 0, applied.err
    async with StateManager("docs", address=server_address) as sm:
        run = await sm.trigger_and_wait("summarize-all", store={"documents": "alpha,beta"}, timeout=20)
        assert run.status is RunStatus.SUCCESS, run
        assert run.state("report").outputs == [{"report": "ALPHA | BETA"}]
        assert run.store["language"] == "en"
        graph = await sm.get_graph("summarize-all")
    assert graph.secret_names == ["api_key"] and graph.triggers[0].timezone == "Europe/Paris"
