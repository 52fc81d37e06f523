"""One contract for every provider: what the replacement engine relies on.

The same tests run against local (directories + stand-in agent processes),
docker (a private Podman service), exec (real subprocess scripts) and aws-asg
(moto's standalone server). A provider passes when a launch is found by its
idempotency key, a retried launch returns the same instance, terminate is
idempotent, and unknown instances describe as None.
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.image.artifact import build_artifact
from agent.manifest.policy import Policy
from controller.providers import (
    LaunchedInstance,
    LaunchSpec,
    Provider,
    ReplacementStrategy,
    create_provider,
)
from controller.providers.base import LABEL_GROUP, LABEL_IDEMPOTENCY_KEY, LABEL_IMAGE_DIGEST
from controller.providers.local import LocalProvider
from tests.fixtures.moto import MotoAws, moto_aws
from tests.fixtures.podman import PodmanEngine, podman_engine
from tests.fixtures.stand_in_agent import IDLE_AGENT

__all__ = ["moto_aws", "podman_engine"]  # session fixtures used below

UNKNOWN_ID = "i-00000000000000000"


@dataclass
class Case:
    """A provider under test and how to make launch specs for one fresh group."""

    provider: Provider
    group: str
    image_ref: str
    image_digest: str

    def spec(self, key: str, instance_id: str | None = None) -> LaunchSpec:
        return LaunchSpec(
            group=self.group,
            image_ref=self.image_ref,
            image_digest=self.image_digest,
            instance_id=instance_id or f"i-{uuid.uuid4().hex[:12]}",
            idempotency_key=key,
            controller="127.0.0.1:1",
            labels={"team": "contract"},
        )


def _local(tmp_path: Path, group: str) -> Case:
    root = tmp_path / "image-root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "app.conf").write_text("port = 8080\n")
    owner = (os.geteuid(), os.getegid())
    build = build_artifact(
        root, tmp_path / "build", name="web", version="1", policy=Policy(), owner=owner
    )
    provider = create_provider(
        "local",
        {"data_dir": str(tmp_path / "data"), "agent_command": list(IDLE_AGENT)},
    )
    assert isinstance(provider, LocalProvider)
    provider.import_artifact(str(tmp_path / "build"))
    return Case(provider, group, build.image_ref, build.image_digest)


EXEC_SCRIPT = r"""
import json, os, sys
state_file, operation, *args = sys.argv[1:]
state = json.load(open(state_file)) if os.path.exists(state_file) else {}
if operation == "launch":
    group, image_ref, image_digest, instance_id, key = args
    state[instance_id] = {
        "instance_id": instance_id, "group": group, "image_digest": image_digest,
        "idempotency_key": key, "state": "running", "labels": {"io.corral.group": group},
    }
    print(json.dumps(state[instance_id]))
elif operation == "list":
    print(json.dumps({"instances": [i for i in state.values() if i["group"] == args[0]]}))
elif operation == "describe":
    print(json.dumps(state.get(args[0])))
elif operation == "terminate":
    state.pop(args[0], None)
json.dump(state, open(state_file, "w"))
"""


def _exec(tmp_path: Path, group: str) -> Case:
    script = tmp_path / "provider.py"
    script.write_text(EXEC_SCRIPT)
    base = [sys.executable, str(script), str(tmp_path / "state.json")]
    provider = create_provider(
        "exec",
        {
            "launch": [
                *base,
                "launch",
                "{group}",
                "{image_ref}",
                "{image_digest}",
                "{instance_id}",
                "{idempotency_key}",
            ],
            "list": [*base, "list", "{group}"],
            "describe": [*base, "describe", "{instance_id}"],
            "terminate": [*base, "terminate", "{instance_id}"],
            "timeout": 30,
        },
    )
    digest = "sha256:" + "ab" * 32
    return Case(provider, group, f"web@{digest}", digest)


def _docker(engine: PodmanEngine, group: str) -> Case:
    provider = create_provider("docker", {"base_url": engine.base_url})
    return Case(provider, group, engine.image_ref, engine.image_digest)


def _aws(aws: MotoAws, group: str) -> Case:
    aws.create_group(group, version="1", desired=1)
    provider = create_provider("aws-asg", {"region": aws.region, "endpoint_url": aws.endpoint})
    digest = "sha256:" + "cd" * 32
    return Case(provider, group, f"web@{digest}", digest)


PROVIDERS = [
    "local",
    "exec",
    pytest.param("docker", marks=pytest.mark.podman),
    pytest.param("aws-asg", marks=pytest.mark.aws),
]


@pytest.fixture(params=PROVIDERS)
def case(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Case]:
    group = f"contract-{uuid.uuid4().hex[:8]}"
    factories: dict[str, Callable[[], Case]] = {
        "local": lambda: _local(tmp_path, group),
        "exec": lambda: _exec(tmp_path, group),
        "docker": lambda: _docker(request.getfixturevalue("podman_engine"), group),
        "aws-asg": lambda: _aws(request.getfixturevalue("moto_aws"), group),
    }
    made = factories[request.param]()
    try:
        yield made
    finally:
        for instance in made.provider.list(made.group):
            made.provider.terminate(instance.instance_id)
        made.provider.close()


def _ids(instances: list[LaunchedInstance]) -> list[str]:
    return [instance.instance_id for instance in instances]


def test_declares_a_replacement_strategy(case: Case) -> None:
    assert isinstance(case.provider.replacement_strategy, ReplacementStrategy)
    assert case.provider.name


def test_launched_instance_is_listed_with_its_labels(case: Case) -> None:
    launched = case.provider.launch(case.spec("taint-1"))
    assert launched.instance_id
    listed = {i.instance_id: i for i in case.provider.list(case.group)}
    assert launched.instance_id in listed
    seen = listed[launched.instance_id]
    assert seen.group == case.group
    assert seen.idempotency_key == "taint-1"
    assert seen.image_digest == case.image_digest
    assert seen.labels.get(LABEL_GROUP) == case.group
    assert seen.labels.get(LABEL_IDEMPOTENCY_KEY) == "taint-1"
    assert seen.labels.get(LABEL_IMAGE_DIGEST) == case.image_digest
    described = case.provider.describe(launched.instance_id)
    assert described is not None and described.idempotency_key == "taint-1"


def test_retried_launch_returns_the_same_instance(case: Case) -> None:
    spec = case.spec("taint-2")
    first = case.provider.launch(spec)
    before = _ids(case.provider.list(case.group))
    again = case.provider.launch(spec)
    assert again.instance_id == first.instance_id
    assert _ids(case.provider.list(case.group)) == before


def test_retry_with_another_suggested_id_still_finds_the_first(case: Case) -> None:
    first = case.provider.launch(case.spec("taint-3"))
    again = case.provider.launch(case.spec("taint-3"))
    assert again.instance_id == first.instance_id


def test_terminate_removes_and_is_idempotent(case: Case) -> None:
    launched = case.provider.launch(case.spec("taint-4"))
    case.provider.terminate(launched.instance_id)
    assert launched.instance_id not in _ids(case.provider.list(case.group))
    assert case.provider.describe(launched.instance_id) is None
    case.provider.terminate(launched.instance_id)  # already gone: fine


def test_unknown_instances(case: Case) -> None:
    assert case.provider.describe(UNKNOWN_ID) is None
    case.provider.terminate(UNKNOWN_ID)


def test_list_is_scoped_to_the_group(case: Case) -> None:
    launched = case.provider.launch(case.spec("taint-5"))
    listed = case.provider.list(case.group)
    assert launched.instance_id in _ids(listed)
    assert all(instance.group == case.group for instance in listed)


def test_exec_script_state_is_real(tmp_path: Path) -> None:
    """The exec stand-in really persists state between processes (guards the suite itself)."""
    made = _exec(tmp_path, "g")
    made.provider.launch(made.spec("k"))
    state = json.loads((tmp_path / "state.json").read_text())
    assert [entry["idempotency_key"] for entry in state.values()] == ["k"]
