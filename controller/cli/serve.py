"""``corral-controller serve``: run the controller until SIGTERM or SIGINT.

    corral-controller serve --listen HOST:PORT --data-dir DIR
                            [--metrics-listen HOST:PORT] [--config FILE]
                            [--tls-ca FILE --tls-cert FILE --tls-key FILE] [--insecure]
                            [--init]

Defaults: gRPC on 127.0.0.1:7070, metrics on 127.0.0.1:9470. On SIGTERM the
health service reports NOT_SERVING, in-flight calls finish (5 s grace), pending
heartbeats are flushed and the store is closed.

The store is checked before it is trusted: a missing, empty or damaged SQLite
database where the data dir held one, or a data dir another controller holds,
is refused with one line and exit 1 (see docs/operations.md); ``--init`` starts
a fresh store after moving the old files aside.

A non-loopback ``--listen`` needs the three TLS files (client certificates are
then required); without them the controller refuses to start (exit 2) unless
``--insecure`` is given, which is logged as a warning at every start.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from prometheus_client import REGISTRY, CollectorRegistry

from agent.logs import configure_logging
from agent.version import corral_version
from controller.app import start_controller
from controller.config import ControllerConfig, load_config
from controller.errors import ControllerError, StoreRefusedError
from controller.metrics import serve_metrics
from controller.security.listen import check_listen
from controller.security.serving import security_from_config

log = logging.getLogger("corral.controller")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="corral-controller", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--version", action="version", version=f"corral-controller {corral_version()}"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser("serve", help="serve agents and operators")
    serve.add_argument("--listen", help="gRPC address HOST:PORT (default 127.0.0.1:7070)")
    serve.add_argument("--data-dir", help="where the SQLite store lives")
    serve.add_argument(
        "--metrics-listen", help="Prometheus address HOST:PORT (default 127.0.0.1:9470; '' off)"
    )
    serve.add_argument("--config", type=Path, help="TOML config file")
    serve.add_argument("--log-level", help="debug, info, warning, error")
    serve.add_argument("--tls-ca", metavar="FILE", help="CA bundle clients' certificates chain to")
    serve.add_argument("--tls-cert", metavar="FILE", help="the controller's certificate chain")
    serve.add_argument("--tls-key", metavar="FILE", help="the controller's private key")
    serve.add_argument(
        "--init",
        action="store_true",
        help="start a fresh store where a missing, empty or damaged one was found "
        "(its files are moved into DATA_DIR/damaged-<time>/, never deleted)",
    )
    serve.add_argument(
        "--insecure",
        action="store_true",
        default=None,
        help="serve a non-loopback address without TLS (anyone reachable can call it)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load_config(
            args.config,
            env=os.environ,
            overrides={
                "listen": args.listen,
                "data_dir": args.data_dir,
                "metrics_listen": args.metrics_listen,
                "log_level": args.log_level,
                "tls_ca_file": args.tls_ca,
                "tls_cert_file": args.tls_cert,
                "tls_key_file": args.tls_key,
                "insecure": args.insecure,
            },
        )
        # Refuse plaintext off loopback before anything starts; the warning that
        # --insecure earns is logged by the server itself at every start.
        security = security_from_config(config)
        check_listen(
            config.listen, tls_configured=security.tls is not None, insecure=security.insecure
        )
    except ControllerError as exc:
        print(f"corral-controller: {exc}", file=sys.stderr)
        return 2
    configure_logging(level=config.log_level, context={})
    try:
        asyncio.run(serve(config, registry=REGISTRY, init=args.init))
    except StoreRefusedError as exc:
        log.error("store refused: %s", exc)
        return 1
    except (ControllerError, OSError) as exc:
        log.error("controller stopped: %s", exc)
        return 1
    return 0


async def serve(
    config: ControllerConfig, *, registry: CollectorRegistry, init: bool = False
) -> None:
    """Run until SIGTERM/SIGINT, then shut down gracefully."""
    controller = await start_controller(config, clock=time.time, registry=registry, init=init)
    if config.metrics_listen:
        serve_metrics(registry, config.metrics_listen)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    await stopping.wait()
    log.info("shutting down")
    await controller.stop()


if __name__ == "__main__":
    sys.exit(main())
