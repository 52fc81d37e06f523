"""``corral bake`` and ``corral verify``: the image-build side of corral, no controller needed.

``bake`` records what an image must stay (manifest.pb + image.json); ``verify``
checks a tree against it, offline. Data goes to stdout (a summary or table for
people, a stable JSON object with ``--json``); progress, warnings and errors go
to stderr. Exit codes: 0 baked / conformant, 1 drift or a strict bake refused,
2 usage or input error.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, TextIO

from agent.errors import AgentError
from agent.image.bake import BakeResult, bake
from agent.image.oci.layers import ROOT_MODE
from agent.image.secrets import SecretsFoundError, SecretWarning
from agent.image.verify import VerifyResult, verify
from agent.manifest.diff import Change
from agent.manifest.format import read_manifest
from agent.manifest.policy import Policy, load_policy
from agent.paths import display_path

EXIT_OK = 0
EXIT_DRIFT = 1
EXIT_USAGE = 2


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``bake`` and ``verify`` subcommands."""
    baker = subparsers.add_parser(
        "bake",
        help="scan a root tree or an image archive and write its manifest and image identity",
        description=(
            "Scan ROOT and write DIR/manifest.pb and DIR/image.json. ROOT is a directory or "
            "an image artifact: oci-archive:PATH[:REF], oci:DIR[:REF] or docker-archive:PATH "
            "(layers applied in memory, nothing extracted; the image's identity is its OCI "
            "manifest digest)."
        ),
    )
    baker.add_argument(
        "root",
        metavar="ROOT",
        help="the image's root directory, or oci-archive:PATH, oci:DIR[:REF], docker-archive:PATH",
    )
    baker.add_argument("--out", metavar="DIR", required=True, help="output directory")
    baker.add_argument(
        "--policy", metavar="FILE", help="policy TOML file (default policy if unset)"
    )
    baker.add_argument(
        "--name",
        metavar="N",
        help="image name (default: base name of ROOT, or the image's name in the archive)",
    )
    baker.add_argument(
        "--version", metavar="V", help="image version (default: 0, or the image's tag)"
    )
    baker.add_argument(
        "--root-mode",
        metavar="OCTAL",
        type=_octal_mode,
        default=ROOT_MODE,
        help="image sources: mode of the root directory when no layer sets it "
        "(default 0555 as Podman and CRI-O unpack; 0755 for Docker and containerd)",
    )
    baker.add_argument("--json", action="store_true", help="print image.json plus warnings")
    baker.add_argument(
        "--strict", action="store_true", help="fail (exit 1, write nothing) on secret warnings"
    )
    baker.set_defaults(handler=run_bake)

    checker = subparsers.add_parser(
        "verify",
        help="check a root tree against a baked manifest",
        description=(
            "Scan ROOT under the manifest's baked policy and list every change. "
            "Exit 0 when conformant, 1 on drift, 2 on a usage or input error."
        ),
    )
    checker.add_argument("root", metavar="ROOT", help="the tree to check")
    checker.add_argument("--manifest", metavar="FILE", required=True, help="a baked manifest.pb")
    checker.add_argument("--json", action="store_true", help="print a JSON object")
    checker.add_argument(
        "--full",
        action="store_true",
        help="re-hash every file (verify keeps no cache between runs, so it always does)",
    )
    checker.set_defaults(handler=run_verify)


def _octal_mode(text: str) -> int:
    try:
        mode = int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an octal mode") from None
    if not 0 <= mode <= 0o7777:
        raise argparse.ArgumentTypeError(f"{text!r} is not a mode (0000-7777)")
    return mode


class _ProgressLine:
    """A one-line counter on stderr, redrawn with a carriage return; silent off a TTY."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._active = stream.isatty()
        self._drawn = False

    def __call__(self, entries: int, bytes_hashed: int) -> None:
        if self._active:
            self._stream.write(
                f"\r  scanning: {entries:>9,} entries, {bytes_hashed / 2**20:>10,.1f} MiB hashed"
            )
            self._stream.flush()
            self._drawn = True

    def clear(self) -> None:
        if self._drawn:
            self._stream.write("\r\033[K")
            self._stream.flush()


def _error(command: str, message: object) -> int:
    print(f"corral {command}: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _print_warnings(warnings: tuple[SecretWarning, ...]) -> None:
    for warning in warnings:
        print(f"warning: secret: {warning}", file=sys.stderr)


def run_bake(args: argparse.Namespace) -> int:
    progress = _ProgressLine(sys.stderr)
    try:
        policy = load_policy(args.policy) if args.policy else Policy()
        result = bake(
            args.root,
            args.out,
            policy=policy,
            name=args.name,
            version=args.version,
            progress=progress,
            strict=args.strict,
            root_mode=args.root_mode,
        )
    except SecretsFoundError as exc:
        progress.clear()
        _print_warnings(exc.warnings)
        print(f"corral bake: {exc} (--strict)", file=sys.stderr)
        return EXIT_DRIFT
    except AgentError as exc:
        progress.clear()
        return _error("bake", exc)
    progress.clear()
    _print_warnings(result.warnings)
    if args.json:
        document = dict(result.image, warnings=[w.to_json() for w in result.warnings])
        print(json.dumps(document, indent=2, sort_keys=True))
    else:
        print(_bake_summary(result))
    return EXIT_OK


def _bake_summary(result: BakeResult) -> str:
    image = result.image
    return "\n".join(
        [
            f"baked {image['image_ref']}",
            f"  root      {image['root']}",
            f"  entries   {image['entry_count']} ({image['byte_count']} bytes in files)",
            f"  manifest  {result.manifest_path}",
            f"  image     {result.image_path}",
            f"  secrets   {len(result.warnings)} warning(s)",
            f"  scan      {result.files_hashed} files hashed in {result.seconds:.2f} s"
            + (f", {result.scan_errors} unreadable" if result.scan_errors else ""),
        ]
    )


def run_verify(args: argparse.Namespace) -> int:
    progress = _ProgressLine(sys.stderr)
    try:
        manifest, digest = read_manifest(args.manifest)
        result = verify(
            args.root,
            manifest,
            manifest_digest=digest,
            full_rehash=args.full,
            progress=progress,
        )
    except AgentError as exc:
        progress.clear()
        return _error("verify", exc)
    progress.clear()
    if args.json:
        print(json.dumps(verify_document(result), indent=2, sort_keys=True))
    else:
        print(_verify_table(result))
    return EXIT_OK if result.conformant else EXIT_DRIFT


def _change_json(change: Change) -> dict[str, Any]:
    return {
        "path": display_path(change.path),
        "kind": change.kind.value,
        "attributes": list(change.attributes),
    }


def verify_document(result: VerifyResult) -> dict[str, Any]:
    """The ``--json`` output of ``corral verify`` (schema in docs/manifest.md)."""
    return {
        "conformant": result.conformant,
        "root": result.root.hex(),
        "expected_root": result.expected_root.hex(),
        "manifest_digest": result.manifest_digest,
        "changes": [_change_json(change) for change in result.changes],
        "counts": result.counts(),
    }


def _verify_table(result: VerifyResult) -> str:
    lines = []
    if result.changes:
        rows = [
            (c.kind.value, display_path(c.path), ",".join(c.attributes) or "-")
            for c in result.changes
        ]
        width = max(len("PATH"), *(len(row[1]) for row in rows))
        lines.append(f"{'KIND':<9} {'PATH':<{width}}  ATTRIBUTES")
        lines.extend(f"{kind:<9} {path:<{width}}  {attrs}" for kind, path, attrs in rows)
    counts = result.counts()
    if result.conformant:
        lines.append(
            f"conformant: {counts['entries']} entries match {result.manifest_digest} "
            f"(root {result.root.hex()})"
        )
    else:
        lines.append(
            f"drift: {len(result.changes)} change(s) ({counts['added']} added, "
            f"{counts['removed']} removed, {counts['modified']} modified); "
            f"root {result.root.hex()} != expected {result.expected_root.hex()}"
        )
    return "\n".join(lines)
