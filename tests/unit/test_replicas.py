"""The cluster view's pieces: a replica's report survives its row, and runtimes merge across replicas."""

from __future__ import annotations

from typing import Any

from server.replicas import ReplicaReport, combined_runtimes


def runtime(runtime_id: str, used: int, heard: int, *, namespace: str = "ns", **extra: Any) -> dict[str, Any]:
    return {
        "runtime_id": runtime_id, "runtime_name": f"rt-{runtime_id}", "namespace": namespace, "nodes": ["A"],
        "credit_used": used, "credit": 4, "connected_at_ms": 100, "last_heartbeat_ms": heard, "draining": False,
        **extra,
    }  # fmt: skip


def test_a_report_round_trips_and_an_unreadable_one_is_empty() -> None:
    report = ReplicaReport([runtime("1", 2, 5)], {"ns": {"A": 3}}, {"ns": 2}, 17)
    assert ReplicaReport.from_json(report.to_json(), "r") == report
    assert ReplicaReport.from_json("{}", "r") == ReplicaReport()  # a row written before reports existed
    assert ReplicaReport.from_json("not json", "r") == ReplicaReport()
    assert ReplicaReport.from_json('{"queue_depths": [1]}', "r") == ReplicaReport()


def test_a_runtime_streaming_to_every_replica_shows_once_with_its_credit_added_up() -> None:
    a = ReplicaReport([runtime("1", 1, 50), runtime("2", 0, 10), runtime("3", 0, 10, namespace="other")])
    b = ReplicaReport([runtime("1", 2, 70, nodes=["B"], draining=True)])
    merged = combined_runtimes([("host-b:1", b), ("host-a:1", a)], "ns")
    assert [r["runtime_id"] for r in merged] == ["1", "2"]
    one = merged[0]
    assert one["credit_used"] == 3 and one["credit"] == 4  # the credit is shared by its streams
    assert one["last_heartbeat_ms"] == 70 and one["nodes"] == ["A", "B"] and one["draining"]
    assert one["replicas"] == ["host-a:1", "host-b:1"] and merged[1]["replicas"] == ["host-a:1"]
    assert combined_runtimes([("", a)], "ns")[0]["replicas"] == []  # a single scheduler has no replica address
