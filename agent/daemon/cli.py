"""``corral-agent``: the agent's command line and its composition root.

``corral-agent run`` reads the settings (:mod:`agent.daemon.config`), establishes who
it reports for (:mod:`agent.daemon.identity`), wires the runner to the real clock,
scanner, gRPC transport and metrics, lowers its own priority and runs until
SIGTERM (or, with ``--once``, for one scan and its delivery).
``corral-agent version`` prints the version.

Exit codes: 0 success; 1 ``--once``'s report was refused by the controller
(e.g. ``PERMISSION_DENIED``); 2 bad settings or an identity/image problem (the
message says which); 69 ``--once`` could not reach the controller within its
attempts. The long-running mode keeps running through refusals (it counts them).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import threading
import time
from collections.abc import Sequence

import psutil

from agent.daemon.backoff import Backoff
from agent.daemon.config import AgentConfig, ConfigError, load_config
from agent.daemon.container import ContainerScanner, attach
from agent.daemon.engine import ContainerStorage, inspect_container
from agent.daemon.identity import (
    check_manifest_digest,
    read_boot_id,
    read_image_json,
    resolve_instance_id,
)
from agent.daemon.metrics import AgentMetrics, new_registry, serve_metrics
from agent.daemon.outbox import Outbox
from agent.daemon.outbox_file import OutboxFile
from agent.daemon.ports import Scanner
from agent.daemon.runner import Limits, Runner, Schedule, Subject
from agent.daemon.scanjob import SubprocessScanner
from agent.daemon.schedule import install_signal_handlers, run_scheduled
from agent.daemon.sequence import SequenceNumbers
from agent.daemon.transport import GrpcTransport, TlsFiles
from agent.daemon.watch.mode import start_watch_mode
from agent.errors import AgentError
from agent.logs import configure_logging
from agent.manifest.policy import Policy
from agent.manifest.report import Footprint
from agent.version import corral_version

log = logging.getLogger("agent")

ONCE_ATTEMPTS = 6
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 69  # EX_UNAVAILABLE (sysexits.h)
_EXIT_CODES = """exit codes:
  0   stopped cleanly, or --once delivered its report
  1   --once: the controller refused the report (e.g. PERMISSION_DENIED,
      INVALID_ARGUMENT); the log says why
  2   bad settings, identity or image
  69  --once: the controller stayed unreachable for every attempt
      (a refused TLS handshake looks like this too), or kept failing
      (INTERNAL, UNKNOWN...); the report is kept in DATA_DIR/outbox.json
      and delivered by the next run"""
_FLAGS = (
    ("--controller", str, "HOST:PORT", "the controller's AgentService address"),
    ("--root", str, "DIR", "the root to watch (default /)"),
    ("--instance-id", str, "ID", "this instance's id (default: ROOT/etc/machine-id)"),
    ("--image-json", str, "FILE", "the baked image.json (default /etc/corral/image.json)"),
    ("--manifest", str, "FILE", "the baked manifest.pb (default: beside image.json)"),
    ("--group", str, "G", "the group this instance belongs to"),
    ("--interval", float, "SECONDS", "seconds between scans (default 30)"),
    ("--jitter", float, "SECONDS", "random extra delay per scan (default interval/10)"),
    ("--data-dir", str, "DIR", "the agent's own state (default /var/lib/corral-agent)"),
    ("--metrics-listen", str, "HOST:PORT", "serve Prometheus metrics here"),
    ("--nice", int, "N", "CPU nice level (default 10)"),
    ("--read-budget", int, "BYTES_PER_S", "most bytes per second a scan reads (0: no limit)"),
    ("--workers", int, "N", "hashing processes per scan (default 0: in the agent)"),
    ("--deadline", float, "SECONDS", "time allowed for one call to the controller"),
    ("--log-level", str, "LEVEL", "debug, info, warning or error (default info)"),
    ("--tls-ca", str, "FILE", "CA bundle the controller's certificate chains to"),
    ("--tls-cert", str, "FILE", "this agent's certificate chain (mutual TLS)"),
    ("--tls-key", str, "FILE", "this agent's private key (mutual TLS)"),
    (
        "--watch-scan-interval",
        float,
        "SECONDS",
        "watch mode: seconds between safety-net scans (default 3600)",
    ),
    ("--container", str, "ID", "watch this container (root and overlay upper dir from --engine)"),
    ("--engine", str, "unix:///PATH", "container engine API socket (Docker or Podman)"),
    ("--container-full-scan-interval", float, "SECONDS", "full scans of a container's root"),
)


_FLAG_SETTINGS = {
    "--tls-ca": "tls_ca_file",
    "--tls-cert": "tls_cert_file",
    "--tls-key": "tls_key_file",
}
"""Flags whose setting is not their own name (the same TLS flags as the other programs)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="corral-agent",
        description="Prove, continuously, that this instance still matches its baked image.",
    )
    parser.add_argument("--version", action="version", version=f"corral-agent {corral_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser(
        "run",
        help="scan on a schedule and report to the controller",
        description="Every setting can also come from the TOML file (--config or "
        "CORRAL_AGENT_CONFIG) or from CORRAL_AGENT_<SETTING> variables; flags win.",
        epilog=_EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for flag, kind, metavar, text in _FLAGS:
        run.add_argument(flag, type=kind, metavar=metavar, help=text, dest=_FLAG_SETTINGS.get(flag))
    rehash = run.add_mutually_exclusive_group()
    rehash.add_argument(
        "--full-rehash-every", type=int, metavar="N", help="full rehash every N scans"
    )
    rehash.add_argument(
        "--full-rehash-interval", type=float, metavar="SECONDS", help="full rehash every SECONDS"
    )
    run.add_argument("--once", action="store_true", default=None, help="one scan, then exit")
    run.add_argument(
        "--no-watch",
        dest="watch",
        action="store_false",
        default=None,
        help="no kernel file events: find changes by interval scans only",
    )
    run.add_argument("--config", metavar="FILE", help="TOML settings file")
    commands.add_parser("version", help="print the agent's version")
    return parser


def _flags(args: argparse.Namespace) -> dict[str, object]:
    names = [_FLAG_SETTINGS.get(flag, flag[2:].replace("-", "_")) for flag, *_ in _FLAGS]
    names += ["full_rehash_every", "full_rehash_interval", "once", "watch"]
    return {name: getattr(args, name) for name in names}


def lower_priority(nice: int) -> None:
    """Run at ``nice`` (raising priority needs privileges; failing that, warn)."""
    try:
        current = os.nice(0)
        if nice != current:
            os.setpriority(os.PRIO_PROCESS, 0, nice)
        process = psutil.Process()
        if nice > 0 and hasattr(psutil, "IOPRIO_CLASS_BE"):
            process.ionice(psutil.IOPRIO_CLASS_BE, value=7)
    except (OSError, psutil.Error) as exc:
        log.warning("cannot set nice level %d: %s", nice, exc)


def footprint_of(process: psutil.Process) -> Footprint:
    """The agent's RSS now, and CPU used since start including its finished scan children."""
    times = process.cpu_times()
    cpu = times.user + times.system + times.children_user + times.children_system
    return Footprint(rss_bytes=process.memory_info().rss, cpu_millis=int(cpu * 1000))


def _data_dir(config: AgentConfig, runner_policy_excludes: bool) -> str:
    state = os.path.realpath(config.data_dir)
    root = os.path.realpath(config.root)
    inside = state == root or state.startswith(root.rstrip("/") + "/")
    if inside and not runner_policy_excludes:
        raise AgentError(
            f"data dir {config.data_dir} is inside the watched root {config.root} and not "
            "excluded by the image's policy: the agent's own writes would be drift"
        )
    os.makedirs(state, mode=0o700, exist_ok=True)
    return state


def build_runner(config: AgentConfig, *, metrics: AgentMetrics) -> Runner:
    """Wire a Runner for ``config``; raises AgentError when identity or image is wrong."""
    storage = None
    if config.container:  # the container's merged root, fully scanned on its own schedule
        storage = inspect_container(config.engine, config.container)
        config = dataclasses.replace(
            config,
            root=attach(storage),
            full_rehash_every=None,
            full_rehash_interval=config.container_full_scan_interval,
        )
    image = read_image_json(config.image_json)
    check_manifest_digest(config.manifest_path, image.manifest_digest)
    instance_id = resolve_instance_id(config.instance_id, root=config.root)
    boot_id = read_boot_id()
    state = os.path.realpath(config.data_dir)
    relative = "/" + os.path.relpath(state, os.path.realpath(config.root))
    data_dir = _data_dir(config, image.policy.excludes(os.fsencode(relative)))
    version = corral_version()
    tls = None
    if config.tls_ca_file:
        tls = TlsFiles(config.tls_ca_file, config.tls_cert_file, config.tls_key_file)
    # The retry cap is the report interval (at most 300 s): a recovered controller hears
    # from every agent within one interval of coming back, well inside its staleness
    # (three report intervals of listening time). gRPC's reconnect backoff is bounded too.
    retry_cap = min(300.0, max(config.interval, 1.0))
    transport = GrpcTransport(
        config.controller,
        deadline=config.deadline,
        agent_version=version,
        reconnect_cap=retry_cap,
        tls=tls,
    )
    process = psutil.Process()

    def state_write_failed(_exc: OSError) -> None:
        metrics.errors.labels(reason="state_write_failed").inc()

    return Runner(
        subject=Subject(
            instance_id=instance_id,
            group=config.group,
            boot_id=boot_id,
            agent_version=version,
            image=image,
            root=config.root,
            manifest_path=config.manifest_path,
        ),
        schedule=_schedule(config),
        limits=Limits(
            max_changes=config.max_changes,
            max_evidence_bytes=config.max_evidence_bytes,
            read_budget=config.read_budget,
            workers=config.workers,
        ),
        scanner=_scanner(config, storage, data_dir, image.policy, metrics),
        transport=transport,
        outbox=Outbox(
            capacity=config.outbox_capacity,
            file=OutboxFile(
                data_dir,
                on_damaged=lambda: metrics.errors.labels(reason="outbox_damaged").inc(),
            ),
            on_write_error=state_write_failed,
        ),
        sequence=SequenceNumbers(
            boot_id=boot_id, data_dir=data_dir, clock=time.time, on_write_error=state_write_failed
        ),
        backoff=Backoff(base=1.0, cap=retry_cap),
        metrics=metrics,
        footprint=lambda: footprint_of(process),
    )


def _scanner(
    config: AgentConfig,
    storage: ContainerStorage | None,
    data_dir: str,
    policy: Policy,
    metrics: AgentMetrics,
) -> Scanner:
    scanner = SubprocessScanner(cache_path=os.path.join(data_dir, "statcache"))
    if storage is None:
        return scanner
    return ContainerScanner(
        inner=scanner, storage=storage, policy=policy, fallbacks=metrics.container_fallback
    )


def _schedule(config: AgentConfig) -> Schedule:
    return Schedule(
        interval=config.interval,
        jitter=config.scan_jitter,
        full_rehash_every=config.full_rehash_every,
        full_rehash_interval=config.full_rehash_interval,
    )


def run_once(runner: Runner, *, attempts: int = ONCE_ATTEMPTS) -> int:
    """One scan and its delivery; returns ``--once``'s exit code.

    A refusal is an answer (1: resending cannot help); a report still buffered
    after ``attempts`` deliveries means the controller was never reached (69).
    """
    runner.tick()
    delivered = runner.drain(attempts=attempts)
    if runner.refused:
        log.error("the controller refused %d report(s)", runner.refused)
        return EXIT_REFUSED
    if not delivered:
        log.error("the controller stayed unreachable; the report was not delivered")
        return EXIT_UNAVAILABLE
    return 0


def run(config: AgentConfig) -> int:
    registry = new_registry()
    metrics = AgentMetrics(registry)
    runner = build_runner(config, metrics=metrics)
    subject = runner.subject
    configure_logging(
        level=config.log_level,
        context={
            "instance_id": subject.instance_id,
            "group": subject.group,
            "image": subject.image.image_ref,
        },
    )
    lower_priority(config.nice)
    if config.metrics_listen:
        serve_metrics(config.metrics_listen, registry)
    log.info(
        "agent starting",
        extra={
            "controller": config.controller,
            "root": config.root,
            "version": subject.agent_version,
        },
    )
    stop = threading.Event()
    install_signal_handlers(stop)
    if config.once:
        return run_once(runner)
    # A container is checked from its overlay upper directory (agent.daemon.container) instead.
    watching = config.watch and config.container is None
    watch = start_watch_mode(config, runner, metrics) if watching else None
    run_scheduled(runner, _schedule(config), stop=stop, watch=watch)
    log.info("agent stopped")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "version":
        print(f"corral-agent {corral_version()}")
        return 0
    configure_logging(level="INFO", context={})
    try:
        config = load_config(flags=_flags(args), env=os.environ, config_file=args.config)
        return run(config)
    except ConfigError as exc:
        print(f"corral-agent: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except AgentError as exc:
        log.error("cannot start: %s", exc)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
