"""``https://`` state manager URIs reach a TLS scheduler, verified with EXOSPHERE_TLS_CA_FILE."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

import exosphere
from exospherehost import BaseNode, GraphNodeModel, Runtime, StateManager
from server.app import App
from tests.helpers.runtimes import running
from tests.integration.test_security import Pki, pki, tls_app  # noqa: F401  (fixtures: a CA and a TLS scheduler)


class Shout(BaseNode):
    class Inputs(BaseModel):
        text: str

    class Outputs(BaseModel):
        text: str

    async def execute(self) -> Outputs:
        return self.Outputs(text=self.inputs.text.upper())


async def test_https_uri_runs_a_graph_over_tls(tls_app: App, pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    monkeypatch.setenv("EXOSPHERE_TLS_CA_FILE", str(pki.ca))
    uri = f"https://localhost:{tls_app.port}"
    async with running(Runtime("tls", "tls-runtime", [Shout], uri), registered=False):
        sm = StateManager("tls", uri)
        nodes = [GraphNodeModel(node_name="Shout", namespace="tls", identifier="s", inputs={"text": "x"})]
        assert (await sm.upsert_graph("g", nodes, {}))["validation_status"] == "VALID"  # waits for registration
        run_id = (await sm.trigger("g", inputs={"text": "over tls"}))["run_id"]
        address = f"localhost:{tls_app.port}"
        async with exosphere.StateManager("tls", address=address, tls_ca_file=str(pki.ca)) as ours:
            done = await ours.wait(run_id, timeout=20)
        assert done.states[0].outputs == [{"text": "OVER TLS"}]
