"""``corral fleet list`` and ``corral fleet show``: what every instance is doing.

``show`` prints the state, image, how long ago the instance last reported and,
for a tainted instance, why — with the changed paths as drift evidence (paths
are bytes; they are shown with :func:`agent.paths.display_path`).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from agent.paths import display_path
from controller.cli.client import (
    FleetClient,
    add_controller_argument,
    print_json,
    print_table,
    run_with_client,
)
from protos.corral.v1 import agent_pb2, fleet_pb2, manifest_pb2


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    fleet = subparsers.add_parser("fleet", help="list and show instances")
    commands = fleet.add_subparsers(dest="fleet_command", required=True, metavar="ACTION")
    listing = commands.add_parser("list", help="list instances")
    listing.add_argument("--group", metavar="G", help="only this group")
    listing.add_argument("--json", action="store_true")
    add_controller_argument(listing)
    listing.set_defaults(handler=lambda args: run_with_client(args, _list))
    show = commands.add_parser("show", help="show one instance with its drift evidence")
    show.add_argument("instance", metavar="INSTANCE")
    show.add_argument("--json", action="store_true")
    add_controller_argument(show)
    show.set_defaults(handler=lambda args: run_with_client(args, _show))


def _state(value: int) -> str:
    return agent_pb2.InstanceState.Name(value).removeprefix("INSTANCE_STATE_").lower()  # type: ignore[arg-type]


def _age(ms: int) -> float | None:
    return round(max(0.0, time.time() - ms / 1000), 1) if ms else None


def instance_json(instance: fleet_pb2.Instance) -> dict[str, Any]:
    document: dict[str, Any] = {
        "id": instance.id,
        "group": instance.group,
        "state": _state(instance.state),
        "image_ref": instance.image_ref,
        "image_digest": instance.image_digest,
        "root": instance.root.hex(),
        "last_report_age_seconds": _age(instance.last_report_ms),
        "last_seq": instance.last_seq,
        "boot_id": instance.boot_id,
        "suspicious": instance.suspicious,
        "agent_rss_bytes": instance.footprint.rss_bytes,
        "agent_cpu_millis": instance.footprint.cpu_millis,
        "replaces": instance.replaces,
        "taint": None,
    }
    if instance.HasField("taint"):
        taint = instance.taint
        document["taint"] = {
            "kind": fleet_pb2.DriftKind.Name(taint.kind).removeprefix("DRIFT_KIND_").lower(),
            "reason": taint.reason,
            "actor": taint.actor,
            "at_ms": taint.at_ms,
            "evidence_verified": taint.evidence_verified,
            "evidence_truncated": taint.evidence_truncated,
            "baseline_mismatch": taint.baseline_mismatch,
            "changes_recorded": taint.changes_recorded,
            "changes": [
                {
                    "kind": manifest_pb2.ChangeKind.Name(c.kind)
                    .removeprefix("CHANGE_KIND_")
                    .lower(),
                    "path": display_path(c.path),
                    "attributes": list(c.attributes),
                }
                for c in taint.changes
            ],
        }
    return document


def _list(client: FleetClient, args: argparse.Namespace) -> int:
    request = fleet_pb2.ListInstancesRequest(group=args.group or "")
    instances = client.list_all(client.stub.ListInstances, request, "instances")
    documents = [instance_json(instance) for instance in instances]
    if args.json:
        print_json(documents)
        return 0
    print_table(
        ("INSTANCE", "GROUP", "STATE", "LAST REPORT", "IMAGE"),
        [
            (d["id"], d["group"], d["state"], _ago(d["last_report_age_seconds"]), d["image_ref"])
            for d in documents
        ],
    )
    return 0


def _show(client: FleetClient, args: argparse.Namespace) -> int:
    request = fleet_pb2.GetInstanceRequest(instance_id=args.instance)
    document = instance_json(client.call(client.stub.GetInstance, request).instance)
    if args.json:
        print_json(document)
        return 0
    print(f"instance     {document['id']}")
    print(f"group        {document['group']}")
    print(
        f"state        {document['state']}" + ("  (SUSPICIOUS)" if document["suspicious"] else "")
    )
    print(f"image        {document['image_ref']}")
    print(f"last report  {_ago(document['last_report_age_seconds'])} (seq {document['last_seq']})")
    taint = document["taint"]
    if taint is not None:
        print(f"taint        {taint['kind']}: {taint['reason']} (by {taint['actor']})")
        checked = "verified" if taint["evidence_verified"] else "not verified"
        if taint["baseline_mismatch"]:
            print(
                "evidence     none: the agent's baseline matches its files but not the "
                "registered manifest"
            )
        if taint["changes"]:
            more = ", truncated" if taint["evidence_truncated"] else ""
            print(f"evidence     {taint['changes_recorded']} change(s), {checked}{more}")
            for change in taint["changes"]:
                attributes = ",".join(change["attributes"])
                print(f"  {change['kind']:<9} {change['path']}  {attributes}".rstrip())
            omitted = taint["changes_recorded"] - len(taint["changes"])
            if omitted > 0:
                print(f"  ... and {omitted} more (beyond the controller's response budget)")
    return 0


def _ago(age: float | None) -> str:
    return "never" if age is None else f"{age:.0f}s ago"
