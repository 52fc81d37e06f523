"""``corral image build`` and ``corral image import``: image artifacts for the local provider.

``build`` turns a root directory into a deterministic tarball plus its manifest
and image.json (see :mod:`agent.image.artifact`): rebuilding the same tree gives the
same bytes and so the same ``NAME@sha256:...`` reference. ``import`` copies a
build into a local provider's artifact store so its instances can be launched.
No controller is needed for either. Exit codes: 0 done, 2 usage or input error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from agent.errors import AgentError
from agent.image.artifact import ArtifactResult, build_artifact
from agent.manifest.policy import Policy, load_policy
from controller.cli.image_registry import add_commands
from controller.errors import ControllerError
from controller.providers.local import LocalConfig, LocalProvider

EXIT_OK = 0
EXIT_USAGE = 2


def _owner(text: str) -> tuple[int, int] | None:
    if text == "keep":
        return None
    uid, sep, gid = text.partition(":")
    if not sep or not uid.isdigit() or not gid.isdigit():
        raise argparse.ArgumentTypeError("expected UID:GID (numbers) or 'keep'")
    return int(uid), int(gid)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``image build``, ``image import``, ``image register`` and ``image list``."""
    image = subparsers.add_parser(
        "image", help="build, import, register and list images", description=__doc__
    )
    commands = image.add_subparsers(dest="image_command", required=True, metavar="COMMAND")
    build = commands.add_parser(
        "build",
        help="archive a root into a deterministic image artifact",
        description=(
            "Write OUT/image.tar (same tree -> same bytes), OUT/manifest.pb and OUT/image.json. "
            "Member mtimes are 0 and owners are UID:GID (default 0:0); names are sorted."
        ),
    )
    build.add_argument("root", metavar="ROOT", help="the image's root directory")
    build.add_argument("--name", metavar="N", required=True, help="image name")
    build.add_argument("--version", metavar="V", required=True, help="image version")
    build.add_argument("--out", metavar="DIR", help="output directory (default: ./NAME-VERSION)")
    build.add_argument("--policy", metavar="FILE", help="policy TOML file (default policy)")
    build.add_argument(
        "--owner",
        metavar="UID:GID",
        type=_owner,
        default=(0, 0),
        help="owner of every member (default 0:0; 'keep' keeps the tree's numeric owners). "
        "An unprivileged local provider needs its own UID:GID here",
    )
    build.add_argument("--json", action="store_true", help="print image.json")
    build.set_defaults(handler=run_build)

    importer = commands.add_parser(
        "import",
        help="copy a built artifact into a local provider's store",
        description="Copy DIR (a `corral image build` output) into DATA/artifacts/.",
    )
    importer.add_argument("dir", metavar="DIR", help="the build output directory")
    importer.add_argument("--data-dir", metavar="DATA", required=True, help="provider data dir")
    importer.set_defaults(handler=run_import)
    add_commands(commands)


def run_build(args: argparse.Namespace) -> int:
    out = args.out or f"{args.name}-{args.version}"
    started = time.monotonic()
    try:
        policy = load_policy(args.policy) if args.policy else Policy()
        result = build_artifact(
            args.root, out, name=args.name, version=args.version, policy=policy, owner=args.owner
        )
    except (AgentError, OSError) as exc:
        print(f"corral image build: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    for warning in result.warnings:
        print(f"warning: secret: {warning}", file=sys.stderr)
    if args.json:
        print(json.dumps(result.image_json, indent=2, sort_keys=True))
    else:
        print(_summary(result, time.monotonic() - started))
    return EXIT_OK


def _summary(result: ArtifactResult, seconds: float) -> str:
    size = os.path.getsize(os.path.join(result.out_dir, "image.tar"))
    return "\n".join(
        (
            f"image:    {result.image_ref}",
            f"artifact: {os.path.join(result.out_dir, 'image.tar')} "
            f"({result.member_count} members, {size / 2**20:.1f} MiB)",
            f"manifest: {result.manifest_digest} ({len(result.manifest.entries)} entries, "
            f"root {result.manifest.root.hex()})",
            f"built in {seconds:.2f} s",
        )
    )


def run_import(args: argparse.Namespace) -> int:
    try:
        provider = LocalProvider(LocalConfig(data_dir=args.data_dir))
        digest = provider.import_artifact(args.dir)
    except (ControllerError, OSError) as exc:
        print(f"corral image import: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"imported {digest} into {provider.artifact_dir(digest)}")
    return EXIT_OK
