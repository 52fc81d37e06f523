"""The installed ``controller`` is the regular package in this checkout, not a namespace.

An editable install made before ``controller/__init__.py`` existed maps
``controller`` as a namespace package: imports keep working, but the package's
own ``__init__`` (its docstring) silently never runs. Re-running
``pip install -e .`` fixes it; this test says so when it happens.
"""

from __future__ import annotations

from pathlib import Path

import agent
import controller
import protos

CHECKOUT = Path(__file__).resolve().parents[2]


def test_packages_are_regular_packages_from_this_checkout() -> None:
    for package in (agent, controller):
        assert package.__file__ is not None, (
            f"{package.__name__} imports as a namespace package: run "
            "`.venv/bin/pip install -e '.[dev]'` again"
        )
        assert Path(package.__file__).parent.parent == CHECKOUT
    assert Path(next(iter(protos.__path__))).parent == CHECKOUT


def test_the_version_comes_from_the_installed_distribution() -> None:
    from importlib import metadata  # noqa: PLC0415

    from agent.version import corral_version  # noqa: PLC0415

    assert corral_version() == metadata.version("corral")
    assert corral_version().count(".") == 2
