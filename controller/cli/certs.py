"""``corral certs``: a local CA and certificates for a quick start with mutual TLS.

    corral certs init DIR [--days N]
    corral certs issue --dir DIR --role agent|operator|auditor|controller --name N
                       [--san HOST|IP ...] [--days N] [--out DIR] [--trust-domain TD]

``issue`` writes ``<role>-<name>.key`` (mode 0600), ``.crt`` and ``.chain.crt``
plus ``ca.pem`` into ``--out``. Use the chain as the certificate file, the key
as the key file and ``ca.pem`` as the CA file. Real deployments issue the same
SANs from their own PKI (docs/security.md).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from types import ModuleType

from controller.security.errors import CertificateError
from controller.security.identity import DEFAULT_TRUST_DOMAIN, Role, check_trust_domain

EXIT_USAGE = 2


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    certs = subparsers.add_parser("certs", help="create a local CA and issue certificates")
    actions = certs.add_subparsers(dest="certs_command", required=True, metavar="ACTION")

    init = actions.add_parser("init", help="create a CA (ca.key, ca.pem) in DIR")
    init.add_argument("dir", metavar="DIR", type=Path)
    init.add_argument("--days", type=int, default=3650, help="validity (default 3650)")
    init.set_defaults(handler=_init)

    issue = actions.add_parser("issue", help="issue a certificate for one identity")
    issue.add_argument("--dir", required=True, type=Path, help="the CA directory")
    issue.add_argument("--role", required=True, choices=[str(role) for role in Role])
    issue.add_argument("--name", required=True, help="instance id (agents) or a name")
    issue.add_argument(
        "--san",
        action="append",
        default=[],
        metavar="HOST|IP",
        help="controller only: a DNS name or IP clients dial (repeatable; "
        "default localhost, 127.0.0.1, ::1)",
    )
    issue.add_argument("--days", type=int, default=365, help="validity (default 365)")
    issue.add_argument("--out", type=Path, help="where to write (default: the CA directory)")
    issue.add_argument("--trust-domain", default=DEFAULT_TRUST_DOMAIN, help=argparse.SUPPRESS)
    issue.set_defaults(handler=_issue)


def _certs() -> ModuleType | None:
    """The certs module, or None (with a message) when ``cryptography`` is missing."""
    try:
        from controller.security import certs  # noqa: PLC0415 - needs the 'tls' extra
    except ImportError:
        print(
            "corral certs: needs the cryptography package: pip install 'corral[tls]'",
            file=sys.stderr,
        )
        return None
    return certs


def _init(args: argparse.Namespace) -> int:
    certs = _certs()
    if certs is None:
        return EXIT_USAGE
    try:
        path = certs.init_ca(args.dir, days=args.days)
    except CertificateError as exc:
        print(f"corral certs init: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"CA certificate: {path}")
    print(f"CA key:         {args.dir / certs.CA_KEY} (keep it secret; it signs identities)")
    return 0


def _issue(args: argparse.Namespace) -> int:
    certs = _certs()
    if certs is None:
        return EXIT_USAGE
    try:
        check_trust_domain(args.trust_domain)
        files = certs.issue(
            args.dir,
            Role(args.role),
            args.name,
            days=args.days,
            out=args.out,
            sans=args.san,
            trust_domain=args.trust_domain,
        )
    except (CertificateError, ValueError) as exc:
        print(f"corral certs issue: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"identity:    spiffe://{args.trust_domain}/{args.role}/{args.name}")
    print(f"key:         {files.key}")
    print(f"certificate: {files.chain}")
    print(f"CA:          {files.ca}")
    return 0
