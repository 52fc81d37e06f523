"""``corral demo``: the whole loop on one machine, with no services — watch, drift, replace.

Starts a controller (SQLite, the local provider, short intervals) on free
127.0.0.1 ports, builds a small sample image, launches a group of instances
(directories watched by their own agents), shows them conformant, then appends a
line to one instance's ``etc/app.conf`` — a hand-patch — and shows it detected,
tainted, replaced, the replacement conformant and the old instance retired,
with the time of each step. Everything it started is stopped at exit, by PID.

    corral demo [--instances N] [--data-dir DIR] [--keep-running]
                [--non-interactive] [--json] [--timeout SECONDS]

Exit codes: 0 the loop succeeded, 1 it did not (within ``--timeout``), 2 usage.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from agent.image.artifact import build_artifact
from agent.manifest.policy import Policy
from controller.cli.client import ClientError, FleetClient, print_table
from controller.cli.fleet import instance_json
from controller.cli.image_registry import register_bake
from controller.demo import fleet as support
from controller.providers.local import LocalConfig, LocalProvider
from protos.corral.v1 import agent_pb2, fleet_pb2

GROUP = "demo"
_STATES: dict[int, str] = {
    v: k.removeprefix("INSTANCE_STATE_").lower() for k, v in agent_pb2.InstanceState.items()
}


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = subparsers.add_parser(
        "demo",
        help="a local fleet: drift injected, detected, tainted and replaced",
        description=__doc__.split("\n\n")[1],
    )
    demo.add_argument("--instances", type=int, default=3, metavar="N", help="group size (3)")
    demo.add_argument("--data-dir", metavar="DIR", help="keep the state here (default: temp)")
    demo.add_argument("--keep-running", action="store_true", help="stay up until Ctrl-C")
    demo.add_argument("--non-interactive", action="store_true", help="no pauses; exit 0 on success")
    demo.add_argument("--json", action="store_true", help="print a JSON summary at the end")
    demo.add_argument("--timeout", type=float, default=90.0, help="seconds for the whole loop")
    demo.set_defaults(handler=run)


class Demo:
    """One run: the data dir, the controller process, a client, and what was measured."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.quiet = bool(args.json)
        self.keep = args.data_dir is not None
        self.data = Path(args.data_dir or tempfile.mkdtemp(prefix="corral-demo-")).resolve()
        self.data.mkdir(parents=True, exist_ok=True)
        self.grpc_port, self.metrics_port = support.free_port(), support.free_port()
        self.deadline = time.monotonic() + float(args.timeout)
        self.summary: dict[str, Any] = {"ok": False, "data_dir": str(self.data), "group": GROUP}
        self.controller: Any = None
        self.client: FleetClient | None = None

    def say(self, text: str) -> None:
        if not self.quiet:
            print(text, flush=True)

    def remaining(self) -> float:
        return max(0.1, self.deadline - time.monotonic())

    def instances(self) -> list[fleet_pb2.Instance]:
        assert self.client is not None
        request = fleet_pb2.ListInstancesRequest(group=GROUP)
        return list(self.client.call(self.client.stub.ListInstances, request).instances)

    def instance(self, instance_id: str) -> fleet_pb2.Instance:
        assert self.client is not None
        request = fleet_pb2.GetInstanceRequest(instance_id=instance_id)
        return self.client.call(self.client.stub.GetInstance, request).instance

    # Steps --------------------------------------------------------------------

    def start(self) -> None:
        config = support.write_config(
            self.data,
            grpc_port=self.grpc_port,
            metrics_port=self.metrics_port,
            s=support.DemoSettings(),
        )
        self.controller = support.start_controller(self.data, config)
        self.client = FleetClient(f"127.0.0.1:{self.grpc_port}", timeout=5.0)
        listing = fleet_pb2.ListGroupsRequest()
        client = self.client

        def up() -> bool:
            try:
                client.call(client.stub.ListGroups, listing)
            except ClientError:
                return self.controller.poll() is None and False
            return True

        if not support.wait_for(up, timeout=min(30.0, self.remaining()), step=0.2):
            raise RuntimeError(f"the controller did not start: see {self.data}/controller.log")
        self.summary["controller"] = f"127.0.0.1:{self.grpc_port}"
        self.summary["metrics_url"] = f"http://127.0.0.1:{self.metrics_port}/metrics"
        self.say(
            f"controller  127.0.0.1:{self.grpc_port} (pid {self.controller.pid}), data {self.data}"
        )
        self.say(f"metrics     {self.summary['metrics_url']} (while the demo runs)")

    def build_and_register(self) -> str:
        assert self.client is not None
        root = self.data / "sample-root"
        support.write_sample_root(root)
        started = time.monotonic()
        out = self.data / "images" / "demo-1"
        result = build_artifact(
            str(root), str(out), name="demo", version="1", policy=Policy(),
            owner=(os.getuid(), os.getgid()),
        )  # fmt: skip
        LocalProvider(LocalConfig(data_dir=str(self.data))).import_artifact(str(out))
        register_bake(self.client, out)
        self.summary["image_ref"] = result.image_ref
        self.summary["image_build_seconds"] = round(time.monotonic() - started, 3)
        self.say(f"image       {result.image_ref} ({len(result.manifest.entries)} entries)")
        return result.image_ref

    def launch_group(self, image_ref: str) -> None:
        assert self.client is not None
        n = int(self.args.instances)
        group = fleet_pb2.Group(
            name=GROUP, desired_image_ref=image_ref, mode=fleet_pb2.GROUP_MODE_ENFORCE,
            provider="local", desired_size=n,
        )  # fmt: skip
        started = time.monotonic()
        self.client.call(self.client.stub.CreateGroup, fleet_pb2.CreateGroupRequest(group=group))
        self.say(f"group       {GROUP}: enforce, local provider, {n} instance(s); launching...")

        def all_conformant() -> bool:
            states = [_STATES[i.state] for i in self.instances()]
            return states.count("conformant") >= n

        if not support.wait_for(all_conformant, timeout=self.remaining(), step=0.1):
            raise RuntimeError(f"the group did not reach {n} conformant instances in time")
        self.summary["startup_seconds"] = round(time.monotonic() - started, 3)
        self.show("all conformant after " + f"{self.summary['startup_seconds']:.1f} s")

    def show(self, title: str) -> None:
        rows: list[tuple[str, ...]] = [
            (i.id, _STATES[i.state], i.replaces or "-", i.image_digest[:19])
            for i in self.instances()
        ]
        self.summary["instances"] = [{"id": r[0], "state": r[1], "replaces": r[2]} for r in rows]
        if not self.quiet:
            print(f"\n{title}")
            print_table(("INSTANCE", "STATE", "REPLACES", "IMAGE"), rows)
            print()

    def drift_and_watch(self) -> None:
        victim = next(i.id for i in self.instances() if _STATES[i.state] == "conformant")
        conf = self.data / "instances" / victim / "rootfs" / support.APP_CONF
        if not self.args.non_interactive and sys.stdin.isatty() and not self.quiet:
            input(f"press Enter to hand-patch {victim}:/{support.APP_CONF} ...")
        t0 = time.monotonic()
        with conf.open("a") as handle:
            handle.write("debug = true  # hot-fixed by hand\n")
        self.say(f"drift       appended a line to {conf}")
        steps: dict[str, float] = {}
        self.summary["drifted_instance"] = victim
        labels = {
            "tainted": "detected and tainted",
            "replacement_launched": "replacement launched",
            "replacement_conformant": "replacement conformant",
            "old_retired": "old instance retired",
        }

        def progress() -> bool:
            now = round(time.monotonic() - t0, 3)
            by_id = {i.id: i for i in self.instances()}
            old = by_id[victim]
            new = next((i for i in by_id.values() if i.replaces == victim), None)
            seen = {
                "tainted": _STATES[old.state] in ("tainted", "replacing", "retired"),
                "replacement_launched": new is not None,
                "replacement_conformant": new is not None and _STATES[new.state] == "conformant",
                "old_retired": _STATES[old.state] == "retired",
            }
            for step, done in seen.items():
                if done and step not in steps:
                    steps[step] = now
                    self.say(f"  +{now:5.2f} s  {labels[step]}")
                    if step == "tainted":  # lists carry summaries; the evidence is shown one by one
                        self.say_evidence(self.instance(victim))
            if new is not None:
                self.summary["replacement_instance"] = new.id
            return len(steps) == len(seen)

        finished = support.wait_for(progress, timeout=self.remaining(), step=0.05)
        self.summary["steps_seconds"] = steps
        if not finished:
            raise RuntimeError(f"the replacement did not finish in time (steps seen: {steps})")
        total = max(steps["replacement_conformant"], steps["old_retired"])
        self.summary["drift_to_replacement_conformant_seconds"] = total
        self.summary["ok"] = True
        self.show(f"drift written → replacement conformant and old retired: {total:.2f} s")

    def say_evidence(self, instance: fleet_pb2.Instance) -> None:
        """What the agent reported as changed, as `corral fleet show` prints it."""
        taint = instance_json(instance)["taint"] or {"changes": []}
        self.summary["evidence"] = taint["changes"]
        for change in taint["changes"]:
            attributes = ", ".join(change["attributes"])
            self.say(f"             {change['kind']} {change['path']} ({attributes})")

    def keep_running(self) -> None:
        self.say(
            f"running; tamper with any instance under {self.data}/instances/*/rootfs and "
            "watch `corral fleet list --controller "
            f"127.0.0.1:{self.grpc_port}`. Ctrl-C stops everything."
        )
        signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
        try:
            while self.controller.poll() is None:
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()
        if self.controller is not None:
            support.stop_process(self.controller)
        support.stop_agents(self.data)
        if not self.keep:
            shutil.rmtree(self.data, ignore_errors=True)
            self.summary["data_dir_removed"] = True


def run(args: argparse.Namespace) -> int:
    if args.instances < 1 or args.instances > 50:
        print("corral demo: --instances must be between 1 and 50", file=sys.stderr)
        return 2
    demo = Demo(args)
    try:
        demo.start()
        demo.launch_group(demo.build_and_register())
        demo.drift_and_watch()
        if args.keep_running:
            demo.keep_running()
    except (RuntimeError, ClientError, OSError) as exc:
        demo.summary["error"] = str(exc)
        print(f"corral demo: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        demo.summary["error"] = "interrupted"
    finally:
        demo.stop()
    if args.json:
        print(json.dumps(demo.summary, indent=2, sort_keys=True))
    return 0 if demo.summary["ok"] else 1
