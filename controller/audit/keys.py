"""Where the checkpoint signing key comes from: a file or the environment, never the log.

The key is read when a command needs it (never at import time), is never
logged or stored, and is named in output only by its ``key_id`` fingerprint.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from controller.audit.errors import CheckpointError

KEY_FILE_ENV = "CORRAL_AUDIT_KEY_FILE"
KEY_ENV = "CORRAL_AUDIT_KEY"
MIN_KEY_BYTES = 16


def load_key(path: Path | None, environ: Mapping[str, str]) -> bytes | None:
    """The key from ``path``, else ``$CORRAL_AUDIT_KEY_FILE``, else ``$CORRAL_AUDIT_KEY``.

    None when none is set. Raises CheckpointError if the file cannot be read or
    the key is shorter than 16 bytes (a trailing newline is not part of the key).
    """
    if path is None and environ.get(KEY_FILE_ENV):
        path = Path(environ[KEY_FILE_ENV])
    if path is not None:
        try:
            key = path.read_bytes().rstrip(b"\r\n")
        except OSError as error:
            raise CheckpointError(
                f"cannot read the audit key file {path}: {error.strerror}"
            ) from error
    elif environ.get(KEY_ENV):
        key = environ[KEY_ENV].encode("utf-8")
    else:
        return None
    if len(key) < MIN_KEY_BYTES:
        raise CheckpointError(f"the audit signing key must be at least {MIN_KEY_BYTES} bytes")
    return key
