"""``corral group create``, ``resume`` and ``list``: declare who should run what.

A group names its desired image (which must already be registered) and a mode:
``observe`` taints drifted instances, ``enforce`` also replaces them.
"""

from __future__ import annotations

import argparse
from typing import Any

from controller.cli.client import (
    FleetClient,
    add_controller_argument,
    print_json,
    print_table,
    run_with_client,
)
from protos.corral.v1 import fleet_pb2

_MODES = {"observe": fleet_pb2.GROUP_MODE_OBSERVE, "enforce": fleet_pb2.GROUP_MODE_ENFORCE}
_MODE_NAMES = {value: name for name, value in _MODES.items()}


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    group = subparsers.add_parser("group", help="declare and list groups")
    commands = group.add_subparsers(dest="group_command", required=True, metavar="ACTION")
    create = commands.add_parser("create", help="declare a group with its desired image")
    create.add_argument("name", metavar="G")
    create.add_argument("--image", required=True, metavar="REF", help="pinned image reference")
    create.add_argument("--mode", choices=sorted(_MODES), default="observe")
    create.add_argument("--provider", default="local", help="provider name (default local)")
    create.add_argument(
        "--size", type=int, default=0, help="desired number of instances (launched by the provider)"
    )
    create.add_argument(
        "--max-concurrent-replacements",
        type=int,
        default=0,
        metavar="N",
        help="replacements in flight at once (default max(1, 10%% of the group))",
    )
    create.add_argument("--json", action="store_true")
    add_controller_argument(create)
    create.set_defaults(handler=lambda args: run_with_client(args, _create))
    resume = commands.add_parser(
        "resume", help="close a group's circuit breaker after looking at its taints"
    )
    resume.add_argument("name", metavar="G")
    resume.add_argument("--json", action="store_true")
    add_controller_argument(resume)
    resume.set_defaults(handler=lambda args: run_with_client(args, _resume))
    listing = commands.add_parser("list", help="list groups")
    listing.add_argument("--json", action="store_true")
    add_controller_argument(listing)
    listing.set_defaults(handler=lambda args: run_with_client(args, _list))


def group_json(group: fleet_pb2.Group) -> dict[str, Any]:
    return {
        "name": group.name,
        "image_ref": group.desired_image_ref,
        "image_digest": group.desired_image_digest,
        "mode": _MODE_NAMES.get(group.mode, "observe"),
        "provider": group.provider,
        "size": group.size,
        "desired_size": group.desired_size,
        "breaker_open": group.breaker_open,
    }


def _create(client: FleetClient, args: argparse.Namespace) -> int:
    request = fleet_pb2.CreateGroupRequest(
        group=fleet_pb2.Group(
            name=args.name,
            desired_image_ref=args.image,
            mode=_MODES[args.mode],
            provider=args.provider,
            desired_size=args.size,
            max_concurrent_replacements=args.max_concurrent_replacements,
        )
    )
    response = client.call(client.stub.CreateGroup, request)
    if args.json:
        print_json({**group_json(response.group), "created": response.created})
    else:
        verb = "created" if response.created else "already exists:"
        print(f"group {verb} {response.group.name} → {response.group.desired_image_ref}")
    return 0


def _resume(client: FleetClient, args: argparse.Namespace) -> int:
    response = client.call(client.stub.ResumeGroup, fleet_pb2.ResumeGroupRequest(group=args.name))
    if args.json:
        print_json(group_json(response.group))
    else:
        print(f"group {response.group.name} resumed: its circuit breaker is closed")
    return 0


def _list(client: FleetClient, args: argparse.Namespace) -> int:
    groups = client.list_all(client.stub.ListGroups, fleet_pb2.ListGroupsRequest(), "groups")
    documents = [group_json(group) for group in groups]
    if args.json:
        print_json(documents)
        return 0
    print_table(
        ("GROUP", "MODE", "SIZE", "IMAGE"),
        [(d["name"], d["mode"], str(d["size"]), d["image_ref"]) for d in documents],
    )
    return 0
