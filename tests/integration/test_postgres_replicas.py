"""Controller replicas on one PostgreSQL: shared state, one leader, a survivor takes over.

Two ``corral-controller serve`` processes with ``store = "postgres"`` on one
fresh schema, agents' reports sent over real gRPC on loopback to either of
them. Which replica leads is read from the server itself: the session holding
the advisory lock, named by its ``application_name``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import psycopg
import pytest

from controller.demo import fleet as support
from controller.store.postgres import PostgresStore
from protos.corral.v1 import agent_pb2, agent_pb2_grpc, fleet_pb2, fleet_pb2_grpc
from tests.fixtures.baked import ENTRIES, Baked
from tests.fixtures.postgres import fresh_schema, postgres_dsn, schema_dsn

pytestmark = pytest.mark.postgres

WEB = Baked(entries=ENTRIES[:2])
CONFORMANT = agent_pb2.INSTANCE_STATE_CONFORMANT
TAINTED = agent_pb2.INSTANCE_STATE_TAINTED


class Replica:
    """One ``corral-controller serve`` process on the shared schema."""

    def __init__(self, name: str, schema: str, data: Path) -> None:
        self.name = name
        data.mkdir(parents=True)
        self.port = support.free_port()
        config = data / "controller.toml"
        config.write_text(
            f'listen = "127.0.0.1:{self.port}"\nmetrics_listen = ""\n'
            f'data_dir = {json.dumps(str(data))}\nstore = "postgres"\n'
            "replacer_interval = 0.2\nreplacer_sweep_interval = 1\n"
        )
        dsn = psycopg.conninfo.make_conninfo(schema_dsn(schema), application_name=name)
        self.log = data / "controller.log"
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "controller.cli.serve", "serve", "--config", str(config)],
                env={**os.environ, "CORRAL_POSTGRES_DSN": dsn},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        self.agent = agent_pb2_grpc.AgentServiceStub(self.channel)
        self.fleet = fleet_pb2_grpc.FleetServiceStub(self.channel)

    def up(self) -> bool:
        try:
            self.fleet.ListGroups(fleet_pb2.ListGroupsRequest(), timeout=1)
        except grpc.RpcError:
            return False
        return True

    def report(self, seq: int) -> agent_pb2.ReportResponse:
        header = WEB.header(seq=seq, scanned_at_ms=1_000 + seq)
        return self.agent.Report(agent_pb2.ReportRequest(header=header), timeout=5)

    def instance(self) -> fleet_pb2.Instance:
        request = fleet_pb2.GetInstanceRequest(instance_id="i-1")
        return self.fleet.GetInstance(request, timeout=5).instance

    def kill(self) -> None:
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        self.channel.close()
        support.stop_process(self.process)


def leaders(names: tuple[str, ...]) -> list[str]:
    """The application names of the sessions holding an advisory lock, of these replicas."""
    with psycopg.connect(postgres_dsn(), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
            " WHERE l.locktype = 'advisory' AND l.granted AND a.application_name = ANY(%s)",
            (list(names),),
        ).fetchall()
    return sorted(str(row[0]) for row in rows)


@pytest.fixture
def replicas(tmp_path: Path) -> Iterator[tuple[Replica, Replica]]:
    with fresh_schema() as schema:
        suffix = schema.removeprefix("corral_test_")
        started = [Replica(f"{n}-{suffix}", schema, tmp_path / n) for n in ("a", "b")]
        try:
            for replica in started:
                assert support.wait_for(replica.up, timeout=20, step=0.1), replica.log.read_text()
            yield started[0], started[1]
        finally:
            for replica in started:
                replica.stop()
        store = PostgresStore(postgres_dsn(), schema=schema)
        try:
            result = store.audit_log().verify()
            assert result.ok, result.describe()
        finally:
            store.close()


def test_agents_report_to_either_replica_and_a_survivor_takes_over(
    replicas: tuple[Replica, Replica],
) -> None:
    a, b = replicas
    names = (a.name, b.name)
    assert support.wait_for(lambda: len(leaders(names)) == 1, timeout=5)
    assert len(leaders(names)) == 1  # still exactly one after a few more ticks
    time.sleep(0.5)
    (leader_name,) = leaders(names)
    leader, survivor = (a, b) if leader_name == a.name else (b, a)

    a.fleet.RegisterImage(iter(WEB.register_requests()), timeout=5)
    group = fleet_pb2.Group(name="web", desired_image_ref=WEB.ref)
    b.fleet.CreateGroup(fleet_pb2.CreateGroupRequest(group=group), timeout=5)

    a.report(seq=1)
    assert (b.instance().state, b.instance().last_seq) == (CONFORMANT, 1)
    b.report(seq=2)  # a heartbeat through the other replica
    assert (a.instance().state, a.instance().last_seq) == (CONFORMANT, 2)
    b.fleet.TaintInstance(
        fleet_pb2.TaintInstanceRequest(instance_id="i-1", reason="operator saw a shell"),
        timeout=5,
    )
    a.report(seq=3)  # a clean report through the other replica does not clear it
    assert a.instance().state == TAINTED
    assert b.instance().state == TAINTED

    leader.kill()
    started = time.monotonic()
    assert support.wait_for(lambda: leaders(names) == [survivor.name], timeout=5)
    takeover = time.monotonic() - started
    assert takeover < 2.0, f"the survivor took {takeover:.2f} s to lead"
    survivor.report(seq=4)
    assert survivor.instance().last_seq == 4
