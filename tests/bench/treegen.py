"""Generate a deterministic, image-like file tree for the scan benchmark.

The shape imitates an installed system's ``/usr``: eight top directories
(bin, lib, share, include, libexec, sbin, local, src), nested directories of
depth 2 to 8, mostly small files with a long tail of larger ones and a few very
large ones. Content is cut from a seeded random pool and starts with a header
unique to the file, so no two files share a digest and nothing compresses.
The same ``(files, seed)`` always gives the same tree: names, sizes, modes,
content and mtimes.

Usage: ``python tests/bench/treegen.py DIR [--files N] [--seed S]``.
"""

from __future__ import annotations

import argparse
import math
import os
import random
from dataclasses import dataclass
from pathlib import Path

TOP_DIRS = ("bin", "lib", "share", "include", "libexec", "sbin", "local", "src")
MIN_DEPTH = 2
MAX_DEPTH = 8
FILES_PER_DIR = 8
FILES_PER_LARGE = 6700
POOL_BYTES = 64 << 20
KIB = 1024
MIB = 1024 * KIB
_EPOCH = 1_600_000_000
_EXTENSIONS = (b"", b".so", b".h", b".py", b".txt", b".conf", b".gz", b".mo")


@dataclass(frozen=True)
class TreeStats:
    """What :func:`generate` wrote."""

    files: int
    directories: int
    total_bytes: int


def _file_size(rng: random.Random) -> int:
    """A size from the mix: 84% small, 15% medium, 1% large (log-uniform tails)."""
    draw = rng.random()
    if draw < 0.84:
        return rng.randint(KIB // 2, 8 * KIB)
    if draw < 0.99:
        return int(math.exp(rng.uniform(math.log(8 * KIB), math.log(64 * KIB))))
    return int(math.exp(rng.uniform(math.log(64 * KIB), math.log(MIB))))


def _directories(rng: random.Random, count: int) -> list[tuple[bytes, int]]:
    """``count`` relative directory paths with their depth; parents come first."""
    dirs: list[tuple[bytes, int]] = [(name.encode(), 1) for name in TOP_DIRS]
    while len(dirs) < max(count, len(TOP_DIRS) + 1):
        parent, depth = rng.choice(dirs)
        if depth >= MAX_DEPTH:
            continue
        dirs.append((parent + b"/d%05d" % len(dirs), depth + 1))
    return dirs


def generate(root: str | os.PathLike[str], *, files: int, seed: int = 1) -> TreeStats:
    """Write the tree for ``(files, seed)`` under ``root`` (created; must be empty)."""
    rng = random.Random(seed)
    base = os.fsencode(root)
    os.makedirs(base, exist_ok=True)
    pool = rng.randbytes(POOL_BYTES)
    dirs = _directories(rng, max(1, files // FILES_PER_DIR))
    for rel, _depth in dirs:
        os.mkdir(base + b"/" + rel)
    leaves = [rel for rel, depth in dirs if depth >= MIN_DEPTH]
    large = set(rng.sample(range(files), max(1, files // FILES_PER_LARGE)))
    total = 0
    for index in range(files):
        rel = rng.choice(leaves) + b"/f%06d" % index + rng.choice(_EXTENSIONS)
        size = rng.randint(10 * MIB, 50 * MIB) if index in large else _file_size(rng)
        header = b"corral-bench %d %d %s\n" % (seed, index, rel)
        body_size = max(0, size - len(header))
        offset = rng.randrange(0, POOL_BYTES - body_size)
        path = base + b"/" + rel
        with open(path, "wb") as handle:
            handle.write(header[:size])
            handle.write(memoryview(pool)[offset : offset + body_size])
        os.chmod(path, 0o755 if rng.random() < 0.08 else 0o644)
        mtime = _EPOCH + rng.randrange(0, 86_400 * 365) * 1_000_000_000
        os.utime(path, ns=(mtime, mtime))
        total += size
    return TreeStats(files=files, directories=len(dirs), total_bytes=total)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    stats = generate(args.root, files=args.files, seed=args.seed)
    print(f"{stats.files} files in {stats.directories} directories, {stats.total_bytes} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
