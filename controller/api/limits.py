"""The documented range of every request field, in one place (docs/api.md mirrors it).

Every bound here is checked at the edge (:mod:`controller.api.convert`) before
the service or a store sees a value, so the same limits hold for every store
adapter: SQLite's INTEGER and PostgreSQL's BIGINT are signed 64-bit, so no
integer above :data:`INT64_MAX` may reach them whatever its proto type.
"""

from __future__ import annotations

import re

#: The largest integer every store can hold (SQLite INTEGER, PostgreSQL BIGINT).
INT64_MAX = 2**63 - 1
#: Timestamps in Unix milliseconds: 0 (1970) to the last millisecond of year 9999.
MAX_TIME_MS = 253_402_300_799_999

#: Group, image and provider names.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
NAME_CHARS = 63
#: Instance ids (also the name in an agent's certificate).
INSTANCE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
INSTANCE_ID_CHARS = 128
#: Digests, refs, boot ids: printable ASCII, no spaces.
TOKEN = re.compile(r"[\x21-\x7e]+")
#: Free text that is echoed back (agent version): printable ASCII with spaces.
PRINTABLE = re.compile(r"[\x20-\x7e]*")

IMAGE_REF_CHARS = 512
IMAGE_DIGEST_CHARS = 256
IMAGE_VERSION_CHARS = 128
MANIFEST_DIGEST_CHARS = 128
BOOT_ID_CHARS = 64
AGENT_VERSION_CHARS = 64
ROOT_BYTES = 32

#: Drift evidence: changes per report (the agent's default ``max_changes``), path bytes.
MAX_CHANGES = 10_000
MAX_PATH = 4096
MAX_ATTRIBUTES = 16
ATTRIBUTE_CHARS = 32

#: Operators' reasons for a manual taint.
REASON_CHARS = 1024
#: How many instances a group may ask for, and replacements it may run at once.
MAX_DESIRED_SIZE = 10_000
MAX_CONCURRENT_REPLACEMENTS = 1_000

#: List RPCs (AIP-158): the page size when the request says 0, and the most a page holds.
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1_000
PAGE_TOKEN_CHARS = 1024

#: How much of a caller's value an error message echoes (escaped) before ``…``.
ECHO_CHARS = 80
