"""corral's version, single-sourced from the installed distribution's metadata.

``pyproject.toml`` holds the one version string; every program (``--version``),
the agent's reports and the controller's ``corral_build_info`` read it here.
"""

from __future__ import annotations

from functools import cache
from importlib import metadata


@cache
def corral_version() -> str:
    """The installed ``corral`` distribution's version ("0.0.0+unknown" from a bare checkout)."""
    try:
        return metadata.version("corral")
    except metadata.PackageNotFoundError:
        return "0.0.0+unknown"
