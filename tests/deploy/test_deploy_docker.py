"""deploy/docker: the Dockerfiles pass hadolint and pin every base image by digest."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.deploy.deploy_support import DEPLOY, run

DOCKERFILES = sorted((DEPLOY / "docker").glob("*.Dockerfile"))
PINNED = re.compile(r"^FROM\s+\S+@sha256:[a-f0-9]{64}(\s+AS\s+\S+)?\s*$", re.I)


def _instructions(path: Path) -> list[str]:
    """Instructions with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", path.read_text(encoding="utf-8"))
    return [
        line.strip() for line in joined.splitlines() if line.strip() and not line.startswith("#")
    ]


def test_both_images_exist() -> None:
    assert {p.name for p in DOCKERFILES} == {"agent.Dockerfile", "controller.Dockerfile"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_passes(tool: Callable[[str], str], dockerfile: Path) -> None:
    result = run([tool("hadolint"), "--no-color", str(dockerfile)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_fails_on_a_bad_dockerfile(tool: Callable[[str], str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.Dockerfile"
    bad.write_text("FROM python:latest\nADD . /app\nCMD python app.py\n", encoding="utf-8")
    assert run([tool("hadolint"), "--no-color", str(bad)]).returncode != 0


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_every_from_is_pinned_by_digest(dockerfile: Path) -> None:
    froms = [i for i in _instructions(dockerfile) if i.upper().startswith("FROM ")]
    assert len(froms) >= 2, "multi-stage: a build stage and a runtime stage"
    for instruction in froms:
        if re.match(r"FROM\s+\w+\s*$", instruction, re.I):
            continue  # FROM <earlier stage>
        assert PINNED.match(instruction), f"not pinned by digest: {instruction}"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_runtime_stage_shape(dockerfile: Path) -> None:
    instructions = _instructions(dockerfile)
    runtime = instructions[
        max(i for i, x in enumerate(instructions) if x.upper().startswith("FROM ")) :
    ]
    users = [i for i in runtime if i.upper().startswith("USER ")]
    assert users and re.fullmatch(r"USER 10001(:10001)?", users[-1]), users
    entrypoints = [i for i in runtime if i.upper().startswith("ENTRYPOINT ")]
    assert entrypoints and entrypoints[-1].split(None, 1)[1].startswith("["), "exec-form ENTRYPOINT"
    assert not any(i.upper().startswith("ADD ") for i in instructions)
    assert any(i.upper().startswith("COPY --FROM=") for i in runtime)


def test_controller_has_a_healthcheck() -> None:
    instructions = _instructions(DEPLOY / "docker" / "controller.Dockerfile")
    (check,) = [i for i in instructions if i.upper().startswith("HEALTHCHECK ")]
    assert "CMD [" in check and "HealthStub" in check
