"""deploy/systemd: the units pass `systemd-analyze verify` silently and score well on security.

`verify` needs the ExecStart program to exist, and /usr/bin/corral-agent is not
installed where tests run. The test therefore verifies a copy of the unit in
which only the program path of ExecStart is replaced by an executable stub in
tmp_path; every other line, the arguments included, is the committed unit.
Unknown or misspelt keys are only warnings (rc 0), so any stderr output fails.

Security thresholds (systemd 252 `security --offline`, 0-100 scale, 10 = 1.0):
the agent scores 1.6 and the controller 1.1. What remains for the agent is what
it exists for: ambient CAP_DAC_READ_SEARCH, host network to reach the
controller, ProtectHome=read-only (the scan must see /home), no PrivateUsers
(the capability would only apply inside a user namespace), no ProcSubset=pid
(the process collector reads /proc/stat) and no IPAddressAllow (the controller
address is per site). The thresholds sit just above those scores, so dropping
any hardening line fails the test.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.deploy.deploy_support import DEPLOY, run

SYSTEMD = DEPLOY / "systemd"
THRESHOLDS = {"corral-agent.service": 17, "corral-controller.service": 12}


def _with_stub_program(unit: Path, tmp_path: Path) -> Path:
    stub = tmp_path / "bin" / unit.stem
    stub.parent.mkdir(exist_ok=True)
    stub.write_text("#!/bin/sh\nexit 0\n", encoding="utf-8")
    stub.chmod(0o755)
    text = unit.read_text(encoding="utf-8")
    replaced, count = re.subn(r"^ExecStart=/usr/bin/\S+", f"ExecStart={stub}", text, flags=re.M)
    assert count == 1, f"{unit.name} must have one ExecStart=/usr/bin/..."
    copy = tmp_path / unit.name
    copy.write_text(replaced, encoding="utf-8")
    return copy


@pytest.mark.parametrize("name", sorted(THRESHOLDS))
def test_unit_verifies_without_any_warning(
    tool: Callable[[str], str], tmp_path: Path, name: str
) -> None:
    unit = _with_stub_program(SYSTEMD / name, tmp_path)
    result = run([tool("systemd-analyze"), "verify", "--man=no", str(unit)])
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr


def test_verify_reports_a_misspelt_key(tool: Callable[[str], str], tmp_path: Path) -> None:
    """The check can fail: a typo is only a warning, which the test above rejects."""
    source = SYSTEMD / "corral-agent.service"
    unit = _with_stub_program(source, tmp_path)
    unit.write_text(unit.read_text().replace("ProtectSystem=", "ProtectSystm="), encoding="utf-8")
    result = run([tool("systemd-analyze"), "verify", "--man=no", str(unit)])
    assert "ProtectSystm" in result.stderr


@pytest.mark.parametrize(("name", "threshold"), sorted(THRESHOLDS.items()))
def test_unit_security_exposure_is_below_threshold(
    tool: Callable[[str], str], tmp_path: Path, name: str, threshold: int
) -> None:
    unit = _with_stub_program(SYSTEMD / name, tmp_path)
    result = run(
        [
            tool("systemd-analyze"),
            "security",
            "--offline=true",
            f"--threshold={threshold}",
            str(unit),
        ]
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _settings(name: str) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in (SYSTEMD / name).read_text(encoding="utf-8").splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def test_agent_reads_everything_and_changes_nothing() -> None:
    agent = _settings("corral-agent.service")
    assert agent["ProtectSystem"] == ["strict"]
    assert agent["ReadOnlyPaths"] == ["/"]
    # "yes" would hide /home from the scan; read-only keeps it visible.
    assert agent["ProtectHome"] == ["read-only"]
    assert agent["AmbientCapabilities"] == ["CAP_DAC_READ_SEARCH"]
    assert agent["CapabilityBoundingSet"] == ["CAP_DAC_READ_SEARCH"]
    assert agent["NoNewPrivileges"] == ["yes"]
    assert agent["StateDirectory"] == ["corral-agent"]
    assert agent["RestrictAddressFamilies"] == ["AF_INET AF_INET6 AF_UNIX"]
    assert agent["UMask"] == ["0077"]
    assert agent["IOSchedulingClass"] == ["idle"]
    assert "EnvironmentFile" in agent
    assert agent["ExecStart"][0].startswith("/usr/bin/corral-agent run ")
    assert "PrivateUsers" not in agent


def test_controller_ports_match_the_documented_defaults() -> None:
    (exec_start,) = _settings("corral-controller.service")["ExecStart"]
    assert "--listen 0.0.0.0:7070" in exec_start
    assert "--metrics-listen 0.0.0.0:9470" in exec_start
    (agent_start,) = _settings("corral-agent.service")["ExecStart"]
    assert "--metrics-listen 0.0.0.0:9471" in agent_start
