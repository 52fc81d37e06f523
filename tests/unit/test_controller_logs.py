"""Controller logs: one JSON object per line, instance lines carry instance_id/group/image."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry

from agent.logs import JsonFormatter, configure_logging
from agent.manifest.format import Entry, EntryType, Manifest, digest_of
from agent.manifest.policy import Policy
from agent.manifest.report import Report
from controller.domain.model import Group, ImageRecord
from controller.engine.reports import ControllerService
from controller.errors import ControllerError
from controller.metrics import ControllerMetrics
from controller.store.memory import MemoryStore
from tests.fixtures.clock import FakeClock


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    out = io.StringIO()  # not a TTY: JSON
    configure_logging(level="info", context={}, stream=out)
    yield out
    root.handlers[:], level = saved
    root.setLevel(level)


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_every_line_is_one_json_object(stream: io.StringIO) -> None:
    log = logging.getLogger("corral.controller")
    log.info("plain")
    log.warning("with\nnewline and %s", "args", extra={"group": "web"})
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    records = lines(stream)
    assert [r["message"] for r in records] == ["plain", "with\nnewline and args", "failed"]
    assert records[1]["group"] == "web" and records[1]["level"] == "warning"
    assert "ValueError: boom" in str(records[2]["exception"])
    for record in records:
        assert {"time", "level", "logger", "message"} <= set(record)


def test_level_filters(stream: io.StringIO) -> None:
    configure_logging(level="warning", context={}, stream=stream)
    logging.getLogger("corral.controller").info("hidden")
    assert stream.getvalue() == ""


def test_a_tty_gets_plain_text() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    out = Tty()
    try:
        configure_logging(level="info", context={}, stream=out)
        logging.getLogger("corral.controller").info("hello")
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    assert "hello" in out.getvalue() and not out.getvalue().startswith("{")


def test_unserialisable_extras_do_not_break_a_line() -> None:
    record = logging.makeLogRecord({"msg": "m", "levelname": "INFO", "thing": object()})
    assert json.loads(JsonFormatter().format(record))["thing"].startswith("<object")


def test_instance_lines_carry_instance_group_and_image(stream: io.StringIO) -> None:
    manifest = Manifest.build(
        Policy(), [Entry(b"/a", EntryType.REGULAR, 0o644, 0, 0, 1, b"\x01" * 32)]
    )
    encoded = manifest.encode()
    digest = digest_of(encoded)
    image = ImageRecord(
        name="web",
        version="1",
        ref=f"web@{digest}",
        digest=digest,
        manifest_digest=digest,
        root=manifest.root,
        entry_count=1,
        byte_count=manifest.byte_count,
    )
    clock = FakeClock()
    service = ControllerService(
        MemoryStore(),
        clock=clock,
        metrics=ControllerMetrics(CollectorRegistry()),
        stale_after=90.0,
    )
    service.register_image(image, encoded, actor="t")
    service.create_group(Group(name="web", desired_image_ref=image.ref))

    def report(seq: int, root: bytes, group: str = "web") -> Report:
        return Report(
            instance_id="i-7",
            group=group,
            image_ref=image.ref,
            image_digest=digest,
            root=root,
            seq=seq,
            boot_id="b",
            scanned_at_ms=seq,
        )

    service.report(report(1, manifest.root))  # conformant
    service.report(report(2, b"\x09" * 32))  # tainted
    with pytest.raises(ControllerError):
        service.report(report(3, manifest.root, group="nope"))  # refused
    clock.advance(1000)
    service.sweep_stale()
    instance_lines = [r for r in lines(stream) if "instance" in str(r["message"])]
    assert len(instance_lines) >= 2
    for record in instance_lines:
        assert record["instance_id"] == "i-7"
        assert record["group"] == "web"
        assert record["image"] == image.ref
    refused = [r for r in lines(stream) if "refused" in str(r["message"])]
    assert refused and refused[0]["instance_id"] == "i-7" and refused[0]["group"] == "nope"
