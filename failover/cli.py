"""The `failover` command: run, status, switchover, pause, resume, check-config, demo, version.

Exit codes: 0 ok; 1 runtime failure (or `status`: no healthy leader, `check-config`: invalid);
2 usage or configuration error (`status`: cannot read the cluster); 3 duplicate node name.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from failover import __version__, log
from failover.config import Settings
from failover.errors import ConfigError, FailoverError
from failover.sources import describe, load_settings

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_DUPLICATE = 0, 1, 2, 3


def _settings_from(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    for item in getattr(args, "set", None) or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError("--set", f"{item!r} is not KEY=VALUE", "e.g. --set lease_seconds=5")
        overrides[key.strip()] = value
    for name in ("node", "cluster", "backend"):
        value = getattr(args, name, None)
        if value:
            overrides[name] = value
    command = [c for c in getattr(args, "child_command", None) or [] if c != "--"]
    if command:
        overrides["command"] = command
    return load_settings(args.config, overrides=overrides)


def cmd_run(args: argparse.Namespace) -> int:
    from failover.daemon import run_daemon

    settings = _settings_from(args)
    log.configure(settings.log.format, settings.log.level)
    for warning in settings.warnings:
        log.get().warning("config_warning", warning=warning)
    return run_daemon(settings, reload=lambda: _settings_from(args))


def cmd_check_config(args: argparse.Namespace) -> int:
    try:
        settings = _settings_from(args)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_FAIL
    from failover import airflowdb

    print(json.dumps(describe(settings), indent=2, default=str))
    warnings = list(settings.warnings)
    missing = airflowdb.airflow_on_path(settings.command, os.environ)
    if missing:
        warnings.append(f"command: {missing}")
    warnings += airflowdb.environment_warnings(os.environ, settings.metadata_dsn is not None)
    if settings.backend == "zookeeper":
        from failover.config import zookeeper_session_seconds

        print(
            f"zookeeper session: {zookeeper_session_seconds(settings):g} s requested; the servers "
            "may grant another value (shown as effective_lease_seconds in /status)",
            file=sys.stderr,
        )
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print("configuration is valid", file=sys.stderr)
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    from failover.status import cluster_status, render

    settings = _settings_from(args)
    if args.interval < 0.1:
        raise ConfigError("--interval", f"{args.interval:g} s is too short", "use 0.1 s or more")
    while True:
        try:
            status = cluster_status(settings)
        except FailoverError as err:
            print(f"error: cannot read cluster {settings.cluster!r}: {err}", file=sys.stderr)
            if not args.watch:
                return EXIT_USAGE
            status = None
        if args.watch:
            sys.stdout.write("\x1b[H\x1b[2J")  # refresh in place
            print(time.strftime("%H:%M:%S"), f"every {args.interval:g} s, Ctrl-C to quit")
        if status is not None:
            print(json.dumps(status, indent=2) if args.json else render(status), flush=True)
        if not args.watch:
            return EXIT_OK if status and status["healthy_leader"] else EXIT_FAIL
        try:
            time.sleep(args.interval)
        except KeyboardInterrupt:
            return EXIT_OK


def cmd_switchover(args: argparse.Namespace) -> int:
    from failover.status import request_switchover

    settings = _settings_from(args)
    print(request_switchover(settings, args.to, args.wait))
    return EXIT_OK


def _pause(paused: bool) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        from failover.status import set_paused

        settings = _settings_from(args)
        set_paused(settings, paused)
        word = "paused: no elections; the current child keeps running" if paused else "resumed"
        print(f"cluster {settings.cluster!r} {word}")
        return EXIT_OK

    return run


def cmd_demo(args: argparse.Namespace) -> int:
    from failover.demo import run_demo

    return run_demo(keep=args.keep)


USAGE_KEEPER = "failover keeper --connect PATH [--alive-file FILE] -- CMD"


def cmd_keeper(args: argparse.Namespace) -> int:
    from failover import keeper

    if args.check:
        return keeper.main(["--check", args.check, "--max-age", f"{args.max_age:g}"])
    command = [c for c in args.child_command if c != "--"]
    if not args.connect or not command:
        raise ConfigError("keeper", "no socket or command given", USAGE_KEEPER)
    alive = ["--alive-file", args.alive_file] if args.alive_file else []
    return keeper.main(["--connect", args.connect, *alive, "--", *command])


def cmd_version(args: argparse.Namespace) -> int:
    print(f"failover {__version__}")
    return EXIT_OK


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", help="TOML file (default: $FAILOVER_CONFIG)")
    p.add_argument("--cluster", help="election namespace (default: airflow)")
    p.add_argument("--node", help="this candidate's name (default: host name)")
    p.add_argument("--backend", choices=("local", "postgres", "zookeeper"), help="election backend")
    p.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="any setting, e.g. lease_seconds=5"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="failover",
        description="Airflow scheduler failover controller: one scheduler, always, never two.",
        epilog="Exit codes: 0 ok; 1 failure / no healthy leader; 2 usage or config error; "
        "3 duplicate node name.",
    )
    sub = parser.add_subparsers(dest="command_name", metavar="COMMAND", required=True)
    run = sub.add_parser(
        "run",
        help="run the daemon on this candidate",
        description=(
            "Take part in the election; run the child only while leader. "
            "Give the child after --, e.g. failover run -- airflow scheduler"
        ),
    )
    _common(run)
    run.add_argument("child_command", nargs=argparse.REMAINDER, help="-- CMD ARGS (the child)")
    run.set_defaults(func=cmd_run)

    status = sub.add_parser("status", help="cluster table: node, role, epoch, heartbeat, child")
    _common(status)
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument("--watch", "-w", action="store_true", help="refresh until Ctrl-C")
    status.add_argument("--interval", type=float, default=1.0, help="--watch period (1 s)")
    status.set_defaults(func=cmd_status)

    switch = sub.add_parser("switchover", help="hand leadership to another candidate gracefully")
    _common(switch)
    switch.add_argument("--to", metavar="NODE", help="the standby to promote (default: any)")
    switch.add_argument("--wait", type=float, default=30.0, help="seconds to wait for it (30)")
    switch.set_defaults(func=cmd_switchover)

    for name, paused in (("pause", True), ("resume", False)):
        p = sub.add_parser(
            name,
            help=("maintenance: keep the child, no elections" if paused else "end maintenance"),
        )
        _common(p)
        p.set_defaults(func=_pause(paused))

    check = sub.add_parser(
        "check-config", help="print the effective, redacted config; exit 1 if bad"
    )
    _common(check)
    check.set_defaults(func=cmd_check_config)

    demo = sub.add_parser(
        "demo", help="three local candidates, kill the leader, watch the takeover"
    )
    demo.add_argument("--keep", action="store_true", help="keep the demo directory afterwards")
    demo.set_defaults(func=cmd_demo)

    keeper = sub.add_parser(
        "keeper",
        help="sidecar mode: run CMD for the daemon in another container",
        description="Connect to a daemon's [keeper] listen socket and run CMD only while it "
        "leads; kill CMD's whole tree when the daemon stops vouching (EOF or missed deadline). "
        "Use as the scheduler container's command.",
    )
    mode = keeper.add_mutually_exclusive_group(required=True)
    mode.add_argument("--connect", metavar="PATH", help="the daemon's socket")
    mode.add_argument(
        "--check", metavar="FILE", help="liveness probe: exit 1 if the keeper's FILE is stale"
    )
    keeper.add_argument(
        "--alive-file", metavar="FILE", help="refresh FILE every second (for --check)"
    )
    keeper.add_argument(
        "--max-age", type=float, default=3.0, help="with --check: seconds (default 3)"
    )
    keeper.add_argument("child_command", nargs=argparse.REMAINDER, help="-- CMD ARGS")
    keeper.set_defaults(func=cmd_keeper)

    version = sub.add_parser("version", help="print the version")
    version.set_defaults(func=cmd_version)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    log.configure("auto", "warning")  # until `run` configures it: warnings to stderr, never stdout
    try:
        code: int = args.func(args)
    except ConfigError as err:
        print(f"failover: configuration error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except FailoverError as err:
        print(f"failover: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
