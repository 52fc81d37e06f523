"""deploy/packer: the template validates with Packer and bakes, installs and registers.

Debian's Packer 1.6.6 has the amazon/qemu/null builders built in but does not
know `required_plugins`, which therefore lives in plugins.pkr.hcl. Packer given
a single file loads only that file, so validating corral-image.pkr.hcl in place
leaves plugins.pkr.hcl out while `${path.root}` still resolves to deploy/packer.
The wheel it uploads must exist for validation, so a stand-in is passed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import hcl2
import pytest

from tests.deploy.deploy_support import DEPLOY, run

PACKER = DEPLOY / "packer"
TEMPLATE = PACKER / "corral-image.pkr.hcl"


def _validate(packer: str, template: Path, tmp_path: Path) -> Any:
    wheel = tmp_path / "corral-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"stand-in")
    return run([packer, "validate", f"-var=agent_wheel={wheel}", str(template)])


def test_template_validates(tool: Callable[[str], str], tmp_path: Path) -> None:
    result = _validate(tool("packer"), TEMPLATE, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_template_is_formatted(tool: Callable[[str], str]) -> None:
    result = run([tool("packer"), "fmt", "-check", str(PACKER)])
    assert result.returncode == 0, f"run: packer fmt {PACKER}\n{result.stdout}"


def test_validate_catches_a_misspelt_argument(tool: Callable[[str], str], tmp_path: Path) -> None:
    broken = tmp_path / "packer" / TEMPLATE.name
    broken.parent.mkdir()
    broken.write_text(TEMPLATE.read_text().replace("strip_path", "strip_pth"), encoding="utf-8")
    (tmp_path / "systemd").symlink_to(DEPLOY / "systemd")
    result = _validate(tool("packer"), broken, tmp_path)
    assert result.returncode != 0
    assert "strip_pth" in result.stdout + result.stderr


def _parse(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as handle:
        parsed: dict[str, Any] = hcl2.load(handle)
    return parsed


def _unquote(value: Any) -> Any:
    return value.strip('"') if isinstance(value, str) else value


def test_required_plugins_are_kept_apart() -> None:
    assert "required_plugins" not in TEMPLATE.read_text(encoding="utf-8")
    (packer_block,) = _parse(PACKER / "plugins.pkr.hcl")["packer"]
    assert "amazon" in str(packer_block["required_plugins"])


def test_build_installs_bakes_last_and_registers() -> None:
    template = _parse(TEMPLATE)
    local_values = {k: _unquote(v) for block in template["locals"] for k, v in block.items()}

    def expand(line: str) -> str:
        for name, value in local_values.items():
            line = line.replace("${local." + name + "}", str(value))
        return line.strip('"')

    (build,) = template["build"]
    steps: list[tuple[str, dict[str, Any]]] = [
        (_unquote(kind), body)
        for provisioner in build["provisioner"]
        for kind, body in provisioner.items()
    ]
    commands = [
        (index, " ".join(expand(line) for line in body.get("inline", [])))
        for index, (kind, body) in enumerate(steps)
        if kind == "shell"
    ]
    install = [
        i for i, text in commands if "pip install" in text and "corral-agent.service" in text
    ]
    bake = [i for i, text in commands if "corral bake / --out /usr/share/corral/image" in text]
    assert install and bake and install[0] < bake[0]
    # Nothing but downloading the baked files may follow the bake.
    for kind, body in steps[bake[0] + 1 :]:
        assert kind == "file" and _unquote(body["direction"]) == "download"

    post = {_unquote(kind): body for p in build["post-processor"] for kind, body in p.items()}
    assert "image_version" in post["manifest"]["custom_data"]
    assert _unquote(post["manifest"]["output"]).endswith("packer-manifest.json")
    register = " ".join(_unquote(line) for line in post["shell-local"]["inline"])
    assert "corral image register" in register


def test_unit_installed_is_the_repository_unit() -> None:
    text = TEMPLATE.read_text(encoding="utf-8")
    assert '"${path.root}/../systemd/corral-agent.service"' in text
    assert (PACKER / "../systemd/corral-agent.service").resolve().exists()


@pytest.mark.parametrize("name", ["corral-image.pkr.hcl", "plugins.pkr.hcl"])
def test_files_parse_as_hcl2(name: str) -> None:
    assert _parse(PACKER / name)
