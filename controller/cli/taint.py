"""``corral taint INSTANCE --reason TEXT``: mark an instance for replacement by hand.

A taint is final: the instance never becomes conformant again. The reason and
who gave it are recorded with the taint.
"""

from __future__ import annotations

import argparse

from controller.cli.client import FleetClient, add_controller_argument, print_json, run_with_client
from controller.cli.fleet import instance_json
from protos.corral.v1 import fleet_pb2


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    taint = subparsers.add_parser("taint", help="taint an instance by hand")
    taint.add_argument("instance", metavar="INSTANCE")
    taint.add_argument("--reason", required=True, help="why (recorded with the taint)")
    taint.add_argument("--json", action="store_true")
    add_controller_argument(taint)
    taint.set_defaults(handler=lambda args: run_with_client(args, _taint))


def _taint(client: FleetClient, args: argparse.Namespace) -> int:
    request = fleet_pb2.TaintInstanceRequest(instance_id=args.instance, reason=args.reason)
    instance = client.call(client.stub.TaintInstance, request).instance
    if args.json:
        print_json(instance_json(instance))
    else:
        print(f"instance {instance.id} is tainted")
    return 0
