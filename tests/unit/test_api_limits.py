"""The edge's range checks (controller/api/convert.py): the documented limits, bounded echoes."""

from __future__ import annotations

import pytest

from controller.api.convert import (
    check_int,
    echo,
    echo_path,
    group_from_proto,
    instance_id_of,
    report_from_proto,
)
from controller.api.limits import INT64_MAX, MAX_TIME_MS
from controller.errors import InvalidArgumentError
from protos.corral.v1 import agent_pb2, fleet_pb2

DIGEST = "sha256:" + "a" * 64


def _header(**fields: object) -> agent_pb2.ReportHeader:
    values: dict[str, object] = {
        "instance_id": "i-1",
        "group": "web",
        "image_ref": f"web@{DIGEST}",
        "image_digest": DIGEST,
        "root": b"\x01" * 32,
        "seq": 1,
        "boot_id": "b",
        "scanned_at_ms": 1,
    }
    values.update(fields)
    return agent_pb2.ReportHeader(**values)  # type: ignore[arg-type]


def test_values_at_the_limits_are_accepted() -> None:
    footprint = agent_pb2.AgentFootprint(rss_bytes=INT64_MAX, cpu_millis=INT64_MAX)
    header = _header(seq=INT64_MAX, scanned_at_ms=MAX_TIME_MS, footprint=footprint)
    report = report_from_proto(header, present=True)
    assert report.footprint.rss_bytes == INT64_MAX and report.seq == INT64_MAX


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"footprint": agent_pb2.AgentFootprint(rss_bytes=2**64 - 1)}, "rss_bytes"),
        ({"footprint": agent_pb2.AgentFootprint(cpu_millis=INT64_MAX + 1)}, "cpu_millis"),
        ({"seq": INT64_MAX + 1}, "header.seq"),
        ({"scanned_at_ms": MAX_TIME_MS + 1}, "scanned_at_ms"),
        ({"agent_version": "v\x00"}, "agent_version"),
        ({"image_ref": "web@sha256:" + "b" * 64}, "header.image_ref"),
        ({"image_ref": DIGEST}, None),
    ],
)
def test_out_of_range_header_fields_are_named(fields: dict[str, object], field: str | None) -> None:
    if field is None:
        report_from_proto(_header(**fields), present=True)
        return
    with pytest.raises(InvalidArgumentError, match=field):
        report_from_proto(_header(**fields), present=True)


def test_group_sizes_are_bounded() -> None:
    group = fleet_pb2.Group(name="web", desired_image_ref="web@x", desired_size=10_001)
    with pytest.raises(InvalidArgumentError, match="desired_size"):
        group_from_proto(group)


def test_echo_is_escaped_and_truncated() -> None:
    shown = echo("a\x00\n" + "x" * 500)
    assert shown.startswith('"a\\u0000\\n') and "more characters" in shown and len(shown) < 140
    assert echo_path(b"/etc/\xff") == "/etc/%FF"
    assert echo_path(b"/" + b"p" * 1000).endswith("(801 more bytes)")


def test_empty_and_malformed_ids_are_invalid_argument() -> None:
    with pytest.raises(InvalidArgumentError, match="is empty"):
        instance_id_of("instance_id", "")
    with pytest.raises(InvalidArgumentError, match="not a valid"):
        instance_id_of("instance_id", "i 1")
    with pytest.raises(InvalidArgumentError, match=r"0\.\.5"):
        check_int("n", 6, high=5)
