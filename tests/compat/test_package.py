"""exospherehost's names, signatures, messages and error types, checked without a scheduler."""

from __future__ import annotations

import asyncio
import importlib
import inspect
from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import BaseModel

import exosphere
import exospherehost
from exospherehost import (
    BaseNode,
    GraphNodeModel,
    PruneSignal,
    ReQueueAfterSignal,
    RetryPolicyModel,
    Runtime,
    StateManager,
    StoreConfigModel,
)
from exospherehost._address import resolve_target


class GoodNode(BaseNode):
    class Inputs(BaseModel):
        name: str

    class Outputs(BaseModel):
        message: str

    class Secrets(BaseModel):
        api_key: str

    async def execute(self) -> Outputs:
        return self.Outputs(message=f"hi {self.inputs.name} ({len(self.secrets.api_key)})")


class BadNodeWrongInputsBase(BaseNode):
    Inputs = object  # type: ignore[assignment]

    class Outputs(BaseModel):
        message: str

    async def execute(self) -> Outputs:
        return self.Outputs(message="x")


class BadNodeWrongTypes(BaseNode):
    class Inputs(BaseModel):
        count: int

    class Outputs(BaseModel):
        ok: bool

    class Secrets(BaseModel):
        secret: bytes

    async def execute(self) -> None:
        return None


def test_all_is_exospherehosts_list() -> None:
    assert sorted(exospherehost.__all__) == sorted(
        [
            "Runtime",
            "BaseNode",
            "StateManager",
            "VERSION",
            "PruneSignal",
            "ReQueueAfterSignal",
            "UnitesStrategyEnum",
            "UnitesModel",
            "GraphNodeModel",
            "RetryStrategyEnum",
            "RetryPolicyModel",
            "StoreConfigModel",
            "CronTrigger",
        ]
    )
    assert "ExosphereHost" in (exospherehost.__doc__ or "") and "Python SDK" in (exospherehost.__doc__ or "")


def test_version_and_submodules() -> None:
    from exospherehost._version import version

    assert exospherehost.VERSION == exospherehost.__version__ == version == exosphere.__version__
    for module, names in {
        "exospherehost.runtime": ["Runtime"],
        "exospherehost.statemanager": ["StateManager"],
        "exospherehost.node": ["BaseNode"],
        "exospherehost.node.BaseNode": ["BaseNode"],
        "exospherehost.signals": ["PruneSignal", "ReQueueAfterSignal"],
        "exospherehost.models": [
            "UnitesStrategyEnum",
            "UnitesModel",
            "GraphNodeModel",
            "RetryStrategyEnum",
            "RetryPolicyModel",
            "StoreConfigModel",
            "CronTrigger",
        ],
    }.items():
        imported = importlib.import_module(module)
        for name in names:
            assert getattr(imported, name) is getattr(exospherehost, name), (module, name)
    from exospherehost import TriggerState  # an older name exospherehost's docs still import

    assert TriggerState(identifier="t", inputs={"k": "v"}).inputs == {"k": "v"}


def test_every_name_is_ours_or_built_on_ours() -> None:
    for name in set(exospherehost.__all__) - {"VERSION", "StateManager"}:
        assert issubclass(getattr(exospherehost, name), getattr(exosphere, name)), name
    # StateManager is its own class: its methods return exospherehost's dicts, not our models.
    assert not issubclass(StateManager, exosphere.StateManager)


def test_signatures_keep_the_real_order() -> None:
    assert list(inspect.signature(Runtime).parameters) == [
        "namespace",
        "name",
        "nodes",
        "state_manager_uri",
        "key",
        "batch_size",
        "workers",
        "state_manage_version",
        "poll_interval",
        "state_manager_version",
    ]
    assert list(inspect.signature(StateManager).parameters) == [
        "namespace",
        "state_manager_uri",
        "key",
        "state_manager_version",
    ]
    upsert = inspect.signature(StateManager.upsert_graph).parameters
    assert list(upsert)[1:] == [
        "graph_name",
        "graph_nodes",
        "secrets",
        "retry_policy",
        "store_config",
        "triggers",
        "validation_timeout",
        "polling_interval",
    ]
    assert upsert["validation_timeout"].default == 60 and upsert["polling_interval"].default == 1
    assert list(inspect.signature(StateManager.trigger).parameters)[1:] == [
        "graph_name",
        "inputs",
        "store",
        "start_delay",
    ]
    for method in (StateManager.trigger, StateManager.get_graph, StateManager.upsert_graph):
        assert inspect.iscoroutinefunction(method)


def test_base_node_is_abstract_and_execute_runs_a_node_in_a_unit_test() -> None:
    with pytest.raises(TypeError, match="Can't instantiate abstract class"):
        BaseNode()  # type: ignore[abstract]
    node = GoodNode()
    outputs = asyncio.run(node._execute(GoodNode.Inputs(name="Ada"), GoodNode.Secrets(api_key="k3y")))
    assert outputs == GoodNode.Outputs(message="hi Ada (3)")
    assert node.inputs.name == "Ada" and node.secrets.api_key == "k3y"


def test_runtime_takes_the_real_parameters_positionally() -> None:
    runtime = Runtime("ns", "rt", [GoodNode], "http://127.0.0.1:6000", "k", 8, 2, "v1", 5)
    assert runtime.max_concurrency == 2  # workers: states run at once
    assert (runtime._batch_size, runtime._poll_interval, runtime._state_manager_version) == (8, 5, "v1")
    assert runtime._state_manager_uri == "http://127.0.0.1:6000" and runtime._key == "k"
    assert runtime._node_names == ["GoodNode"] and runtime._need_secrets(GoodNode)
    assert isinstance(runtime, exosphere.Runtime)
    spelled_as_the_docs = Runtime(namespace="ns", name="rt", nodes=[GoodNode], state_manager_version="v2")
    assert spelled_as_the_docs._state_manager_version == "v2"


def test_nodes_of_either_package_run_on_either_runtime() -> None:
    class OurNode(exosphere.BaseNode):
        async def execute(self) -> None:
            return None

    assert Runtime(namespace="ns", name="rt", nodes=[OurNode, GoodNode])._node_names == ["OurNode", "GoodNode"]
    assert exosphere.Runtime(namespace="ns", name="rt", nodes=[OurNode, GoodNode]).namespace == "ns"


def test_runtime_refuses_bad_settings_with_value_errors() -> None:
    with pytest.raises(ValueError, match="Batch size should be at least 1"):
        Runtime(namespace="ns", name="rt", nodes=[GoodNode], batch_size=0)
    with pytest.raises(ValueError, match="Workers should be at least 1"):
        Runtime(namespace="ns", name="rt", nodes=[GoodNode], workers=0)
    with pytest.raises(ValueError, match="State manager URI must look like"):
        Runtime(namespace="ns", name="rt", nodes=[GoodNode], state_manager_uri="ftp://x")


def test_node_validation_errors_are_value_errors_in_exosphereshosts_words() -> None:
    with pytest.raises(ValueError, match=r"^Following errors while validating nodes: ") as wrong_base:
        Runtime(namespace="ns", name="rt", nodes=[BadNodeWrongInputsBase])
    assert "BadNodeWrongInputsBase does not have an Inputs class that inherits from pydantic.BaseModel" in str(
        wrong_base.value
    )
    with pytest.raises(ValueError) as wrong_types:
        Runtime(namespace="ns", name="rt", nodes=[BadNodeWrongTypes])
    message = str(wrong_types.value)
    assert "BadNodeWrongTypes.Inputs field 'count' must be of type str, got <class 'int'>" in message
    assert "Outputs field 'ok'" in message and "Secrets field 'secret'" in message
    assert isinstance(wrong_types.value, exosphere.NodeValidationError)  # our error too

    class NotANode:
        pass

    with pytest.raises(ValueError, match=r"NotANode does not inherit from exospherehost.BaseNode"):
        Runtime(namespace="ns", name="rt", nodes=[NotANode])  # type: ignore[list-item]

    class Twin(GoodNode):
        pass

    other = type("Twin", (GoodNode,), {})
    with pytest.raises(ValueError, match=r"Duplicate node class names found: \['Twin'\]"):
        Runtime(namespace="ns", name="rt", nodes=[Twin, other])

    class SyncNode(BaseNode):
        def execute(self) -> None:  # type: ignore[override]
            return None

    with pytest.raises(ValueError, match=r"SyncNode.execute must be defined with 'async def'"):
        Runtime(namespace="ns", name="rt", nodes=[SyncNode])


def test_state_manager_uri_becomes_the_scheduler_address(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert resolve_target("http://127.0.0.1:50051").address == "127.0.0.1:50051"
    assert resolve_target("http://sched.internal/").address == "sched.internal:80"
    assert resolve_target("http://[::1]:7000/v0").address == "[::1]:7000"
    assert resolve_target("localhost:50051").address == "localhost:50051"
    plain = resolve_target("http://h:1")
    assert plain.tls_ca_file is None
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    monkeypatch.setenv("EXOSPHERE_TLS_CA_FILE", str(ca))
    secure = resolve_target("https://sm.example.com")
    assert secure.address == "sm.example.com:443" and secure.tls_ca_file == str(ca)
    monkeypatch.setenv("EXOSPHERE_STATE_MANAGER_URI", "http://from-env:8000")
    assert resolve_target(None).address == "from-env:8000"
    assert Runtime(namespace="ns", name="rt", nodes=[GoodNode])._state_manager_uri == "http://from-env:8000"
    assert resolve_target("http://arg:1").address == "arg:1"  # the argument wins
    monkeypatch.delenv("EXOSPHERE_STATE_MANAGER_URI")
    assert resolve_target(None).address is None  # our own settings decide (EXOSPHERE_SCHEDULER_ADDRESS)
    with pytest.raises(ValueError, match="invalid port"):
        resolve_target("http://h:notaport")


def test_signals_keep_exosphereshosts_messages() -> None:
    prune = PruneSignal({"test": "data"})
    assert prune.data == {"test": "data"} and PruneSignal().data == {}
    assert "Prune signal received with data" in str(prune) and "{'test': 'data'}" in str(prune)
    assert "Do not catch this Exception" in str(prune)
    requeue = ReQueueAfterSignal(timedelta(minutes=5))
    assert requeue.delay == timedelta(minutes=5)
    assert "ReQueueAfter signal received with timedelta" in str(requeue)
    with pytest.raises(Exception, match="Delay must be greater than 0"):
        ReQueueAfterSignal(timedelta(seconds=0))
    assert isinstance(prune, exosphere.PruneSignal) and isinstance(requeue, exosphere.ReQueueAfterSignal)


def test_models_keep_exosphereshosts_rules_and_messages() -> None:
    with pytest.raises(ValueError, match="Node name cannot be empty"):
        GraphNodeModel(node_name=" ", namespace="n", identifier="a")
    with pytest.raises(ValueError, match="Node identifier cannot be reserved word 'store'"):
        GraphNodeModel(node_name="N", namespace="n", identifier=" store ")
    with pytest.raises(ValueError, match="Next node identifier b is not unique"):
        GraphNodeModel(node_name="N", namespace="n", identifier="a", next_nodes=["b", " b"])
    with pytest.raises(ValueError, match="Unites identifier cannot be empty"):
        GraphNodeModel(node_name="N", namespace="n", identifier="a", unites={"identifier": " "})
    node = GraphNodeModel(node_name=" N ", namespace="n", identifier=" a ", unknown_field="ignored")  # type: ignore[call-arg]
    assert (node.node_name, node.identifier, node.inputs) == ("N", "a", {})
    with pytest.raises(ValueError, match=r"Key 'a.b' cannot contain '.' character"):
        StoreConfigModel(required_keys=["a.b"])
    with pytest.raises(ValueError, match="Key 'k' is duplicated"):
        StoreConfigModel(required_keys=["k", " k"])
    assert StoreConfigModel.model_validate({"default_values": {" n ": 1}}).default_values == {"n": "1"}
    with pytest.raises(ValueError):
        RetryPolicyModel(backoff_factor=0)
    assert RetryPolicyModel().model_dump(mode="json") == {
        "max_retries": 3,
        "strategy": "EXPONENTIAL",
        "backoff_factor": 2000,
        "exponent": 2,
        "max_delay": None,
    }
