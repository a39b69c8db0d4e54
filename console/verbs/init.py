"""`gantry init --ca DIR [--host NAME=HOST[,HOST...]]... [--console NAME]...`: the
cluster's CA and certificates for direct mode (see `console/net/ca.py`)."""

from __future__ import annotations

import argparse
import getpass
import json
import re
import sys
from pathlib import Path
from typing import Any

from console.net.ca import (
    DEFAULT_DAYS,
    DEFAULT_PORT,
    CaError,
    check_console_name,
    init_ca,
    parse_host_flag,
)


def add_init_verb(verbs: Any) -> argparse.ArgumentParser:
    init: argparse.ArgumentParser = verbs.add_parser(
        "init", help="create the cluster's CA and certificates (agents reached without SSH)"
    )
    init.add_argument("--ca", type=Path, required=True, metavar="DIR", help="the CA's folder")
    init.add_argument(
        "--host",
        action="append",
        default=[],
        metavar="NAME=HOST[,HOST...]",
        help="an agent's certificate, valid for these host names and IPs (repeatable)",
    )
    init.add_argument(
        "--console",
        action="append",
        default=[],
        metavar="NAME",
        help="a console's client certificate (repeatable; default: your login name)",
    )
    init.add_argument("--days", type=int, default=DEFAULT_DAYS, help="certificate lifetime")
    init.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help="the agents' port, for DIR/cluster.yaml"
    )
    init.add_argument("--json", action="store_true", help="print JSON")
    return init


def default_console_name() -> str:
    try:
        name = getpass.getuser()
    except (OSError, KeyError):
        name = ""
    name = re.sub(r"[^A-Za-z0-9._@-]", "-", name).strip("-._@")[:64]
    return name or "console"


def run_init_verb(args: argparse.Namespace) -> int:
    try:
        hosts: dict[str, list[str]] = {}
        for flag in args.host:
            name, names = parse_host_flag(flag)
            if name in hosts:
                raise CaError(f"--host {flag!r}: node {name} is given twice")
            hosts[name] = names
        consoles = [check_console_name(c) for c in args.console]
        ca_dir: Path = args.ca
        if not consoles and not (ca_dir / "consoles").is_dir():
            consoles = [default_console_name()]
        result = init_ca(ca_dir, hosts, consoles, days=args.days, port=args.port)
    except CaError as exc:
        print(f"gantry: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        where = f" {exc.filename}" if exc.filename else ""
        print(f"gantry: cannot write{where}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    if args.json:
        report = {
            "ca": str(ca_dir / "ca.pem"),
            "ca_created": result.ca_created,
            "written": [str(p) for p in result.written],
            "cluster_file": str(result.cluster_file) if result.cluster_file else None,
        }
        print(json.dumps(report, indent=2))
        return 0
    print(f"{'created' if result.ca_created else 'reused'} the CA in {ca_dir}")
    for path in result.written:
        print(f"  wrote {path}")
    if result.cluster_file is not None:
        print(f"  wrote {result.cluster_file} (gantry --cluster {result.cluster_file})")
    for name in hosts:
        print(
            f"on {name}: copy ca.pem, agents/{name}.pem and agents/{name}.key (chmod 600), then run"
            f"\n  gantry-agent --listen 0.0.0.0:{args.port} --node-name {name} --data-dir DIR"
            f" --tls-ca ca.pem --tls-cert {name}.pem --tls-key {name}.key"
        )
    print(f"keep {ca_dir / 'ca.key'} here: it signs certificates and never leaves this machine")
    return 0
