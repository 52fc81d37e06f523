"""Structured logging for every corral program: one JSON object per line unless on a terminal.

The agent, the controller and the CLI share this one formatter (UTC, milliseconds,
``Z``); the controller imports it from here, as it imports the manifest format.

Every line names the instance, group and image it is about, so a fleet's logs
can be searched by instance without parsing messages. On a TTY the same fields
are appended to a plain human-readable line.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Mapping
from typing import IO, Any

_CONTEXT_KEYS = ("instance_id", "group", "image")
# Attributes every LogRecord has; anything else was passed with ``extra=``.
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class _ContextFilter(logging.Filter):
    def __init__(self, context: Mapping[str, str]) -> None:
        super().__init__()
        self._context = dict(context)

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in self._context.items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, context, extras."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update(_extras(record))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """A readable line with the same fields as ``key=value`` pairs."""

    def format(self, record: logging.LogRecord) -> str:
        fields = " ".join(f"{k}={v}" for k, v in _extras(record).items())
        text = f"{record.levelname.lower():7} {record.getMessage()}"
        if fields:
            text += "  " + fields
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def configure_logging(
    *, level: str, context: Mapping[str, str], stream: IO[str] | None = None
) -> logging.Handler:
    """Send the root logger to ``stream`` (stderr), JSON unless it is a TTY."""
    target = stream if stream is not None else sys.stderr
    handler = logging.StreamHandler(target)
    is_tty = hasattr(target, "isatty") and target.isatty()
    handler.setFormatter(TextFormatter() if is_tty else JsonFormatter())
    handler.addFilter(_ContextFilter({k: v for k, v in context.items() if k in _CONTEXT_KEYS}))
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    return handler
