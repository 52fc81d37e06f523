"""``corral rollout GROUP IMAGE_REF`` and ``corral rollback GROUP``: move a group's desired image.

The reference must be pinned (``name@sha256:<64 hex>`` or an immutable provider
id) and registered; a tag or ``latest`` is refused with how to pin it. The
controller then replaces the instances on other images within the group's
budget. ``rollback`` goes back to the previous desired image. Exit codes: 0 done,
1 refused (not registered, nothing to roll back), 2 bad reference, 69 unavailable.
"""

from __future__ import annotations

import argparse

from controller.cli.client import FleetClient, add_controller_argument, print_json, run_with_client
from controller.cli.group import group_json
from protos.corral.v1 import fleet_pb2


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    rollout = subparsers.add_parser(
        "rollout", help="roll a group out to a pinned, registered image", description=__doc__
    )
    rollout.add_argument("group", metavar="GROUP")
    rollout.add_argument("image_ref", metavar="IMAGE_REF", help="NAME@sha256:<64 hex>")
    rollout.add_argument("--json", action="store_true")
    add_controller_argument(rollout)
    rollout.set_defaults(handler=lambda args: run_with_client(args, _rollout))
    rollback = subparsers.add_parser(
        "rollback", help="roll a group back to its previous desired image"
    )
    rollback.add_argument("group", metavar="GROUP")
    rollback.add_argument("--json", action="store_true")
    add_controller_argument(rollback)
    rollback.set_defaults(handler=lambda args: run_with_client(args, _rollback))


def _rollout(client: FleetClient, args: argparse.Namespace) -> int:
    request = fleet_pb2.RolloutRequest(group=args.group, image_ref=args.image_ref)
    response = client.call(client.stub.Rollout, request)
    if args.json:
        print_json(group_json(response.group))
    else:
        print(f"group {response.group.name} → {response.group.desired_image_ref}")
    return 0


def _rollback(client: FleetClient, args: argparse.Namespace) -> int:
    response = client.call(client.stub.Rollback, fleet_pb2.RollbackRequest(group=args.group))
    if args.json:
        print_json(
            {**group_json(response.group), "previous_image_ref": response.previous_image_ref}
        )
    else:
        print(
            f"group {response.group.name} rolled back: {response.previous_image_ref} "
            f"→ {response.group.desired_image_ref}"
        )
    return 0
