"""deploy/kubernetes: manifests validate against API schemas offline and keep their guarantees."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.deploy_support import DEPLOY, run

K8S = DEPLOY / "kubernetes"
MANIFESTS = sorted(K8S.glob("*.yaml"))
# A version kubernetes-validate bundles (its package ships schemas for 1.2x-1.37).
KUBERNETES_VERSION = "1.32.0"
DIGEST = re.compile(r"^[^@\s]+@sha256:[a-f0-9]{64}$")


def _documents() -> Iterator[dict[str, Any]]:
    for path in MANIFESTS:
        yield from (doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc)


def _one(kind: str, name: str) -> dict[str, Any]:
    (doc,) = [d for d in _documents() if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


@pytest.mark.parametrize("manifest", MANIFESTS, ids=lambda p: p.name)
def test_manifest_validates_strictly(tool: Callable[[str], str], manifest: Path) -> None:
    result = run(
        [
            tool("kubernetes-validate"),
            "--strict",
            "-k",
            KUBERNETES_VERSION,
            "--quiet",
            str(manifest),
        ]
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_validation_catches_a_misspelt_field(tool: Callable[[str], str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    text = (
        (K8S / "agent-daemonset.yaml")
        .read_text()
        .replace("readOnlyRootFilesystem", "readOnlyRootFs")
    )
    bad.write_text(text, encoding="utf-8")
    result = run([tool("kubernetes-validate"), "--strict", "-k", KUBERNETES_VERSION, str(bad)])
    assert result.returncode != 0


def test_every_image_is_pinned_by_digest() -> None:
    images = [
        container["image"]
        for doc in _documents()
        if doc["kind"] in {"Deployment", "DaemonSet"}
        for container in doc["spec"]["template"]["spec"]["containers"]
    ]
    assert len(images) == 2
    for image in images:
        assert DIGEST.match(image), image


def test_agent_namespace_allows_what_the_agent_needs() -> None:
    agent_ns = _one("Namespace", "corral-agent")
    assert agent_ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"
    controller_ns = _one("Namespace", "corral")
    assert controller_ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert _one("DaemonSet", "corral-agent")["metadata"]["namespace"] == "corral-agent"


def test_agent_daemonset_mounts_the_host_read_only_with_one_capability() -> None:
    spec = _one("DaemonSet", "corral-agent")["spec"]["template"]["spec"]
    assert spec["automountServiceAccountToken"] is False
    assert {"operator": "Exists"} in spec["tolerations"]
    (container,) = spec["containers"]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"], "add": ["DAC_READ_SEARCH"]}
    assert security.get("privileged") is not True
    host_volumes = {v["name"]: v for v in spec["volumes"] if "hostPath" in v}
    assert [v["hostPath"]["path"] for v in host_volumes.values()] == ["/"]
    for mount in container["volumeMounts"]:
        if mount["name"] in host_volumes:
            assert mount["mountPath"] == "/host"
            assert mount["readOnly"] is True
            assert mount["mountPropagation"] == "HostToContainer"
    assert container["args"][0] == "run"
    assert "--root=/host" in container["args"]
    assert any(a.startswith("--controller=") for a in container["args"])
    assert "--instance-id=$(NODE_NAME)" in container["args"]
    (node_name,) = [e for e in container["env"] if e["name"] == "NODE_NAME"]
    assert node_name["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"


def test_controller_deployment_is_restricted_with_grpc_probes() -> None:
    spec = _one("Deployment", "corral-controller")["spec"]["template"]["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    (container,) = spec["containers"]
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["grpc"]["port"] == 7070, probe
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": 7070, "metrics": 9470}
    service = _one("Service", "corral-controller")
    assert {p["name"] for p in service["spec"]["ports"]} == {"grpc", "metrics"}


def test_controller_config_is_toml_the_controller_can_read(tmp_path: Path) -> None:
    config_module = pytest.importorskip("controller.config", reason="controller.config missing")
    config = _one("ConfigMap", "corral-controller")
    path = tmp_path / "controller.toml"
    path.write_text(config["data"]["controller.toml"], encoding="utf-8")
    loaded = config_module.load_config(path, env={})
    assert loaded.listen == "0.0.0.0:7070"
    assert loaded.metrics_listen == "0.0.0.0:9470"
    assert [group.name for group in loaded.groups] == ["nodes"]
