"""``corral image register DIR`` and ``corral image list``: the image registry.

``register`` reads a bake output (DIR/image.json + DIR/manifest.pb) and streams
the manifest to the controller in 1 MiB chunks. The image is registered under
image.json's ``image_ref`` and ``image_digest``: for an image baked from its
OCI artifact that is the OCI manifest digest (``repo@sha256:...``), the one
the docker provider deploys. Registering the same image again
is harmless; a different manifest under a registered reference is refused.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from controller.cli.client import (
    EXIT_USAGE,
    ClientError,
    FleetClient,
    add_controller_argument,
    print_json,
    print_table,
    run_with_client,
)
from protos.corral.v1 import fleet_pb2

CHUNK = 1024 * 1024


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``image register`` and ``image list`` (the controller's image registry)."""
    reg = commands.add_parser("register", help="register a bake output with the controller")
    reg.add_argument("dir", metavar="DIR", help="directory holding image.json and manifest.pb")
    reg.add_argument("--json", action="store_true", help="print the registered image as JSON")
    add_controller_argument(reg)
    reg.set_defaults(handler=lambda args: run_with_client(args, _register))
    listing = commands.add_parser("list", help="list registered images")
    listing.add_argument("--json", action="store_true", help="print JSON")
    add_controller_argument(listing)
    listing.set_defaults(handler=lambda args: run_with_client(args, _list))


def image_json(image: fleet_pb2.Image) -> dict[str, Any]:
    return {
        "name": image.name,
        "version": image.version,
        "image_ref": image.ref,
        "image_digest": image.digest,
        "manifest_digest": image.manifest_digest,
        "root": image.root.hex(),
        "entry_count": image.entry_count,
        "byte_count": image.byte_count,
        "registered_at_ms": image.registered_at_ms,
        "registered_by": image.registered_by,
    }


def _read_bake(directory: Path) -> tuple[fleet_pb2.Image, Path]:
    try:
        document = json.loads((directory / "image.json").read_text())
        image = fleet_pb2.Image(
            name=document["name"],
            version=str(document["version"]),
            ref=document["image_ref"],
            digest=document["image_digest"],
            manifest_digest=document["manifest_digest"],
            root=bytes.fromhex(document["root"]),
            entry_count=int(document["entry_count"]),
            byte_count=int(document["byte_count"]),
        )
    except OSError as exc:
        raise ClientError(
            f"cannot read {directory}/image.json: {exc.strerror}", exit_code=EXIT_USAGE
        ) from None
    except (ValueError, KeyError, TypeError) as exc:
        raise ClientError(
            f"{directory}/image.json is not a bake output ({exc!r})", exit_code=EXIT_USAGE
        ) from None
    _check_identity(directory, document, image)
    manifest = directory / "manifest.pb"
    if not manifest.is_file():
        raise ClientError(f"{manifest} is missing: run `corral bake` again", exit_code=EXIT_USAGE)
    return image, manifest


def _check_identity(directory: Path, document: dict[str, Any], image: fleet_pb2.Image) -> None:
    """The reference names the digest, and an OCI image's digest is its OCI manifest digest.

    ``corral bake`` writes them so; a hand-edited image.json that disagrees
    would register one digest and deploy another.
    """
    oci = document.get("oci_manifest_digest")
    if not image.ref.endswith("@" + image.digest) or (oci is not None and oci != image.digest):
        raise ClientError(
            f"{directory}/image.json: image_ref {image.ref} and image_digest {image.digest} "
            f"disagree{f' with oci_manifest_digest {oci}' if oci is not None else ''}",
            exit_code=EXIT_USAGE,
        )


def _requests(image: fleet_pb2.Image, manifest: Path) -> Iterator[fleet_pb2.RegisterImageRequest]:
    with manifest.open("rb") as handle:
        first = True
        while True:
            chunk = handle.read(CHUNK)
            if first:
                yield fleet_pb2.RegisterImageRequest(image=image, manifest_chunk=chunk)
                first = False
            elif chunk:
                yield fleet_pb2.RegisterImageRequest(manifest_chunk=chunk)
            if not chunk:
                return


def register_bake(client: FleetClient, directory: Path) -> fleet_pb2.RegisterImageResponse:
    """Register a bake output (``image.json`` + ``manifest.pb``), streaming the manifest.

    Raises ClientError when the directory is not a bake output or the call fails.
    """
    image, manifest = _read_bake(directory)
    return client.stream(client.stub.RegisterImage, _requests(image, manifest))


def _register(client: FleetClient, args: argparse.Namespace) -> int:
    response = register_bake(client, Path(args.dir))
    if args.json:
        print_json({**image_json(response.image), "created": response.created})
    elif response.created:
        print(f"registered {response.image.ref}")
    else:
        print(f"already registered: {response.image.ref}")
    return 0


def _list(client: FleetClient, args: argparse.Namespace) -> int:
    images = client.list_all(client.stub.ListImages, fleet_pb2.ListImagesRequest(), "images")
    if args.json:
        print_json([image_json(image) for image in images])
        return 0
    print_table(
        ("REF", "VERSION", "ENTRIES", "REGISTERED BY"),
        [(i.ref, i.version, str(i.entry_count), i.registered_by) for i in images],
    )
    return 0
