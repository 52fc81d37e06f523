"""A real headless Chromium driven over the DevTools protocol on a pipe, for page tests.

``Browser`` starts Debian's ``chromium`` with ``--remote-debugging-pipe``
(commands on fd 3, answers on fd 4, NUL-terminated JSON), opens a page, and
records what the page did: console messages, exceptions, log entries and every
network request. Waits are on messages, with deadlines; nothing sleeps. The
browser runs with a fresh profile and with background networking off, and is
stopped by its PID.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import itertools
import json
import os
import queue
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--mute-audio",
)


def chromium_binary() -> str:
    """The chromium executable; skips the test when it is not installed (CI installs it)."""
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("chromium is not installed (run .ci/setup-system: apt install chromium)")


def chromium_command(profile: Path, *extra: str) -> list[str]:
    """A headless chromium command line with a fresh profile directory."""
    return [chromium_binary(), *FLAGS, f"--user-data-dir={profile}", *extra]


def _high(fds: tuple[int, int]) -> tuple[int, int]:
    """The same pipe ends, renumbered to 10 or above (close-on-exec until passed on)."""
    moved = tuple(fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in fds)
    for fd in fds:
        os.close(fd)
    return moved[0], moved[1]


class Browser:
    """One chromium process and one page, with everything the page reported."""

    def __init__(self, profile: Path, *, timeout: float = 60.0) -> None:
        self.timeout = timeout
        to_browser_r, self._to_browser = _high(os.pipe())
        self._from_browser, from_browser_w = _high(os.pipe())
        command = chromium_command(profile, "--remote-debugging-pipe", "about:blank")
        # bash moves the pipe ends (numbered 10 and up, so never 3 or 4 themselves) to
        # fds 3 and 4, where chromium expects them.
        script = (
            f'exec "$@" 3<&{to_browser_r} 4>&{from_browser_w} {to_browser_r}<&- {from_browser_w}>&-'
        )
        self.process = subprocess.Popen(
            ["/bin/bash", "-c", script, "bash", *command],
            pass_fds=(to_browser_r, from_browser_w),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._ids = itertools.count(1)
        self._answers: dict[int, queue.Queue[dict[str, Any]]] = {}
        self._lock = threading.Lock()
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.console: list[dict[str, Any]] = []
        self.exceptions: list[dict[str, Any]] = []
        self.log_entries: list[dict[str, Any]] = []
        self.requests: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.session = ""

    # The protocol ---------------------------------------------------------------

    def _read(self) -> None:
        buffer = b""
        while True:
            chunk = os.read(self._from_browser, 1 << 16)
            if not chunk:
                self.events.put({"method": "closed"})
                return
            buffer += chunk
            while b"\0" in buffer:
                raw, buffer = buffer.split(b"\0", 1)
                self._dispatch(json.loads(raw))

    def _dispatch(self, message: dict[str, Any]) -> None:
        if "id" in message:
            with self._lock:
                waiter = self._answers.get(message["id"])
            if waiter is not None:
                waiter.put(message)
            return
        method, params = message.get("method", ""), message.get("params", {})
        if method == "Runtime.consoleAPICalled":
            self.console.append(params)
        elif method == "Runtime.exceptionThrown":
            self.exceptions.append(params)
        elif method == "Log.entryAdded":
            self.log_entries.append(params.get("entry", {}))
        elif method == "Network.requestWillBeSent":
            self.requests.append(params.get("request", {}).get("url", ""))
        self.events.put(message)

    def call(self, method: str, params: dict[str, Any] | None = None, *, page: bool = True) -> Any:
        """Send one command (to the page's session by default) and wait for its answer."""
        number = next(self._ids)
        waiter: queue.Queue[dict[str, Any]] = queue.Queue()
        with self._lock:
            self._answers[number] = waiter
        message: dict[str, Any] = {"id": number, "method": method, "params": params or {}}
        if page and self.session:
            message["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        try:
            answer = waiter.get(timeout=self.timeout)
        except queue.Empty:
            raise TimeoutError(f"chromium did not answer {method} in {self.timeout} s") from None
        finally:
            with self._lock:
                del self._answers[number]
        if "error" in answer:
            raise RuntimeError(f"{method} failed: {answer['error']}")
        return answer.get("result", {})

    def wait_event(self, method: str) -> dict[str, Any]:
        """The next event named ``method`` (earlier events of other names are skipped)."""
        deadline = time.monotonic() + self.timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {method} from chromium in {self.timeout} s")
            try:
                event = self.events.get(timeout=left)
            except queue.Empty:
                continue
            if event.get("method") == "closed":
                raise RuntimeError("chromium closed its DevTools pipe")
            if event.get("method") == method:
                return event

    # What the tests do ------------------------------------------------------------

    def open(self, url: str) -> None:
        """Open a page on ``url`` with console, log and network reporting on; wait for load."""
        target = self.call("Target.createTarget", {"url": "about:blank"}, page=False)
        attached = self.call(
            "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}, page=False
        )
        self.session = attached["sessionId"]
        for domain in ("Runtime", "Log", "Network", "Page"):
            self.call(f"{domain}.enable")
        self.requests.clear()
        self.call("Page.navigate", {"url": url})
        self.wait_event("Page.loadEventFired")

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    def print_pdf(self, out: Path, *, width_in: float, height_in: float) -> Path:
        """Print the page on paper of the given size (inches), as the print dialog would."""
        result = self.call(
            "Page.printToPDF",
            {"paperWidth": width_in, "paperHeight": height_in, "preferCSSPageSize": False},
        )
        out.write_bytes(base64.b64decode(result["data"]))
        return out

    def screenshot(self, out: Path) -> Path:
        result = self.call("Page.captureScreenshot", {"format": "png"})
        out.write_bytes(base64.b64decode(result["data"]))
        return out

    def close(self) -> None:
        with contextlib.suppress(OSError, RuntimeError, TimeoutError):
            self.call("Browser.close", page=False)
        try:
            self.process.wait(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()
        os.close(self._to_browser)
        self._reader.join(timeout=self.timeout)
        os.close(self._from_browser)
