"""Start and stop the host agent process that watches one instance's root.

The local provider (and the docker provider, for a container's merged root)
runs one ``corral-agent run`` per instance on the host. The process is
detached: its own session and process group, output to a log file, so it
survives a controller restart. It is stopped by PID, but only after checking
that the PID still runs *that* agent (its command line names the instance's
root): a PID recycled by the kernel for another program is never signalled.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import psutil

_CMDLINE_ATTEMPTS = 10


def default_agent_prefix() -> tuple[str, ...]:
    """``corral-agent`` beside this Python, else ``python -m agent.daemon.cli``."""
    script = os.path.join(os.path.dirname(sys.executable), "corral-agent")
    if os.access(script, os.X_OK):
        return (script,)
    return (sys.executable, "-m", "agent.daemon.cli")


@dataclass(frozen=True)
class AgentCommand:
    """How to run an agent: the argv prefix and the flags every instance gets."""

    prefix: tuple[str, ...]
    interval: float = 1.0
    extra_args: tuple[str, ...] = ()

    def argv(
        self,
        *,
        controller: str,
        root: str,
        instance_id: str,
        image_json: str,
        group: str,
        data_dir: str,
    ) -> list[str]:
        return [
            *self.prefix,
            "run",
            "--controller",
            controller,
            "--root",
            root,
            "--instance-id",
            instance_id,
            "--image-json",
            image_json,
            "--group",
            group,
            "--interval",
            f"{self.interval:g}",
            "--data-dir",
            data_dir,
            *self.extra_args,
        ]


class AgentProcesses:
    """Agents this controller process started (so it can reap them) and the checks on PIDs."""

    def __init__(self) -> None:
        self._children: dict[int, subprocess.Popen[bytes]] = {}

    def start(
        self, argv: Sequence[str], *, log_path: str, env: Mapping[str, str] | None = None
    ) -> int:
        """Start ``argv`` detached, output appended to ``log_path``; returns its PID.

        ``env`` is added to this process's environment (e.g. the agent's TLS files).
        Raises OSError when the program cannot be started.
        """
        with open(log_path, "ab") as log:
            child = subprocess.Popen(
                list(argv),
                env={**os.environ, **env} if env else None,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
            )
        self._children[child.pid] = child
        self.reap()
        return child.pid

    def reap(self) -> None:
        """Collect the exit status of children that ended, so none lingers as a zombie."""
        for pid, child in list(self._children.items()):
            if child.poll() is not None:
                del self._children[pid]

    def is_running(self, pid: int, marker: str) -> bool:
        """True when ``pid`` is alive and its command line contains ``marker``.

        A live process can briefly show an empty command line (while the kernel
        sets up a fresh exec); that is asked again a few times before the answer
        is "not this agent".
        """
        self.reap()
        for attempt in range(_CMDLINE_ATTEMPTS):
            try:
                process = psutil.Process(pid)
                if process.status() == psutil.STATUS_ZOMBIE:
                    return False
                cmdline = process.cmdline()
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                return False
            if cmdline:
                return marker in cmdline
            time.sleep(0.01 * (attempt + 1))
        return False

    def find(self, marker: str) -> int | None:
        """The PID of a live process whose command line contains ``marker``, if any."""
        for process in psutil.process_iter(["pid", "cmdline"]):
            with contextlib.suppress(psutil.Error):
                cmdline = process.info["cmdline"] or ()
                if marker in cmdline and process.status() != psutil.STATUS_ZOMBIE:
                    return int(process.info["pid"])
        return None

    def stop(self, pid: int, marker: str, *, timeout: float = 5.0) -> None:
        """SIGTERM the agent's process group, wait up to ``timeout``, then SIGKILL it.

        Does nothing when ``pid`` no longer runs the agent named by ``marker``.
        """
        if not self.is_running(pid, marker):
            return
        self._signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.is_running(pid, marker):
                break
            time.sleep(0.02)
        else:
            self._signal(pid, signal.SIGKILL)
        child = self._children.pop(pid, None)
        if child is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=timeout)

    @staticmethod
    def _signal(pid: int, signum: signal.Signals) -> None:
        try:
            if os.getpgid(pid) == pid:
                os.killpg(pid, signum)  # the agent leads its own group: its children go too
            else:
                os.kill(pid, signum)
        except ProcessLookupError:
            return
