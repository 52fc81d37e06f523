"""Two replicas on one PostgreSQL, staleness sweeps racing drift reports: no taint is lost.

Two real ``corral-controller serve`` processes share one fresh schema, with a
short staleness limit and sweeps several times a second on both. Each round,
a batch of instances reports conformant (through either replica), falls
silent, and the moment the sweeps start marking the batch ``unknown`` every
instance of it reports drift through either replica — so a sweep that read an
instance just before a replica tainted it is likely to try to write it back.
Guaranteed (docs/operations.md, "Faults: what is guaranteed"): every drift
report answered ``tainted`` leaves the instance tainted, whatever any sweep or
later clean report does; the audit log is one intact chain and tells each
instance's transitions in order, ending in the stored state.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import psycopg
import pytest

from protos.corral.v1 import agent_pb2, agent_pb2_grpc
from tests.faults.faults_controller_support import (
    Controller,
    register_wire_image,
    wait_until,
    wire_drift,
    wire_report,
)
from tests.fixtures.postgres import connect, fresh_schema, schema_dsn

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

GROUP = "web"
ROUNDS = 8
BATCH = 24
STALE_AFTER = 1.0
TAINTED = agent_pb2.INSTANCE_STATE_TAINTED
UNKNOWN = agent_pb2.INSTANCE_STATE_UNKNOWN
FINAL = {"tainted", "replacing", "retired"}


class Replica:
    """A controller replica and an agent's stub on it."""

    def __init__(self, home: Path, schema: str, name: str) -> None:
        dsn = psycopg.conninfo.make_conninfo(schema_dsn(schema), application_name=name)
        self.controller = Controller(
            home,
            options={
                "store": "postgres",
                "stale_after": STALE_AFTER,
                "sweep_interval": 0.1,
                "report_interval": 1.0,
                "replacer_sweep_interval": 1.0,
            },
            env={"CORRAL_POSTGRES_DSN": dsn},
            local_provider=False,
        )
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.controller.port}")
        self.agent = agent_pb2_grpc.AgentServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()
        self.controller.stop()


@pytest.fixture
def replicas(tmp_path: Path) -> Iterator[tuple[Replica, Replica, str]]:
    with fresh_schema() as schema:
        suffix = schema.removeprefix("corral_test_")
        made: list[Replica] = []
        try:
            for name in ("a", "b"):  # one after the other: the schema is created once
                replica = Replica(tmp_path / name, schema, f"{name}-{suffix}")
                made.append(replica)
                replica.controller.start()
            yield made[0], made[1], schema
        finally:
            for replica in made:
                replica.close()


def _states(replica: Replica) -> dict[str, str]:
    return replica.controller.states(GROUP)


def _audit_transitions(schema: str) -> dict[str, list[tuple[str | None, str]]]:
    """Each instance's ``(from, to)`` state records, in chain order."""
    with connect(schema) as conn:
        rows = conn.execute(
            "SELECT instance_id, data FROM audit_records WHERE kind = 'instance.state' ORDER BY seq"
        ).fetchall()
    transitions: dict[str, list[tuple[str | None, str]]] = {}
    for instance_id, data in rows:
        body = json.loads(str(data))
        transitions.setdefault(str(instance_id), []).append((body["from"], body["to"]))
    return transitions


def test_staleness_sweeps_racing_drift_reports_never_lose_a_taint(
    replicas: tuple[Replica, Replica, str],
) -> None:
    a, b, schema = replicas
    register_wire_image(a.controller, GROUP)
    pair = (a, b)
    answered_tainted: set[str] = set()
    pool = ThreadPoolExecutor(max_workers=8)
    try:
        for round_ in range(ROUNDS):
            batch = [f"r{round_}-{i:02d}" for i in range(BATCH)]
            for n, instance_id in enumerate(batch):
                reply = pair[n % 2].agent.Report(wire_report(instance_id, GROUP, 1), timeout=10)
                assert reply.state == agent_pb2.INSTANCE_STATE_CONFORMANT
            # The sweeps have started on this batch: race them.
            members = set(batch)

            def sweeping(members: set[str] = members) -> bool:
                instances = a.controller.instances(GROUP)
                return any(i.state == UNKNOWN for i in instances if i.id in members)

            wait_until(
                sweeping, timeout=30, what="a sweep marking the batch unknown",
                log=a.controller.log,
            )  # fmt: skip
            answers = list(
                pool.map(
                    lambda item: (
                        item[1],
                        pair[item[0] % 2]
                        .agent.ReportDrift(wire_drift(item[1], GROUP, 2), timeout=10)
                        .state,
                    ),
                    enumerate(batch),
                )
            )
            for instance_id, state in answers:
                assert state == TAINTED, (instance_id, state)
                answered_tainted.add(instance_id)
            # A clean report afterwards, through the other replica, does not clear it.
            for n, instance_id in enumerate(batch):
                reply = pair[(n + 1) % 2].agent.Report(
                    wire_report(instance_id, GROUP, 3), timeout=10
                )
                assert reply.state == TAINTED, instance_id
            for replica in pair:
                states = _states(replica)
                lost = sorted(i for i in answered_tainted if states.get(i) != "tainted")
                assert not lost, f"taints lost: {[(i, states.get(i)) for i in lost]}"
    finally:
        pool.shutdown()

    # Sweeps keep running over the tainted instances: still every one tainted. A
    # fresh instance going unknown proves the sweeps ran after the last round.
    b.agent.Report(wire_report("canary", GROUP, 1), timeout=10)
    wait_until(
        lambda: _states(a).get("canary") == "unknown",
        timeout=30, what="the canary swept unknown", log=b.controller.log,
    )  # fmt: skip
    for replica in pair:
        states = _states(replica)
        assert sorted(i for i in answered_tainted if states.get(i) != "tainted") == []

    transitions = _audit_transitions(schema)
    stored = _states(a)
    for instance_id, steps in transitions.items():
        for (_, previous), (source, target) in itertools.pairwise(steps):
            assert source == previous, (instance_id, steps)  # no transition from a stale read
            assert previous not in FINAL or target in FINAL, (instance_id, steps)
        assert steps[-1][1] == stored[instance_id], (instance_id, steps)
    for replica in pair:
        verified = replica.controller.corral("audit", "verify", "--json")
        assert verified.returncode == 0, verified.stdout + verified.stderr
    conflicts = sum(
        r.controller.metric("corral_store_write_conflicts_total", writer="sweep") for r in pair
    )
    print(f"sweeps that lost the race to a report (nothing written): {conflicts:.0f}")
