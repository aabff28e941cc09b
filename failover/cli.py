"""The `failover` command: run, status, switchover, pause, resume, check-config, demo, version.

Exit codes: 0 ok; 1 runtime failure (`status`: no healthy leader; `check-config`: anything
`run` would refuse); 2 usage or configuration error (`status`: cannot read the cluster);
3 duplicate node name.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from failover import __version__, log
from failover.config import BACKENDS, Settings
from failover.errors import ConfigError, FailoverError
from failover.sources import describe, load_settings

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_DUPLICATE = 0, 1, 2, 3


def _settings_from(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    labels: dict[str, str] = {}
    for item in getattr(args, "set", None) or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(
                "--set", f"{item!r} is not KEY=VALUE", "e.g. --set lease_seconds=5 or local.dir=/x"
            )
        overrides[key.strip()] = value
    for name in ("node", "cluster", "backend"):
        value = getattr(args, name, None)
        if value:
            overrides[name] = value
            labels[name] = f"--{name}"
    command = _child_command(getattr(args, "child_command", None))
    if command:
        overrides["command"] = command
        labels["command"] = "-- CMD"
    return load_settings(args.config, overrides=overrides, labels=labels)


def _child_command(words: list[str] | None) -> list[str]:
    """The words after `--` (argparse keeps the `--`); a `--` with nothing after is refused."""
    if not words:
        return []
    if words[0] == "--":
        words = words[1:]
        if not words:
            raise ConfigError(
                "--",
                "no command after --",
                "give the child, e.g. -- airflow scheduler, or drop the -- for the default",
            )
    return words


def cmd_run(args: argparse.Namespace) -> int:
    from failover.daemon import run_daemon

    settings = _settings_from(args)
    log.configure(settings.log.format, settings.log.level)
    for warning in settings.warnings:
        log.get().warning("config_warning", warning=warning)
    return run_daemon(settings, reload=lambda: _settings_from(args))


def cmd_check_config(args: argparse.Namespace) -> int:
    from failover.airflow import airflow3
    from failover.airflow import settings as airflow_settings
    from failover.preflight import startup_checks

    try:
        settings = _settings_from(args)
    except ConfigError as err:
        _say("configuration error", err)
        return EXIT_FAIL
    print(json.dumps(describe(settings), indent=2, default=str))
    warnings = list(settings.warnings)
    warnings += airflow_settings.environment_warnings(os.environ, settings.metadata_dsn is not None)
    warnings += airflow3.warnings(settings.group, os.environ)
    if settings.backend == "zookeeper":
        from failover.config import zookeeper_session_seconds

        warnings.append(
            f"zookeeper session: {zookeeper_session_seconds(settings):g} s requested; the servers "
            "may grant another value (shown as effective_lease_seconds in /status)"
        )
    for warning in warnings:
        _say("warning", warning)
    try:
        startup_checks(settings, os.environ)
    except ConfigError as err:
        _say("configuration error", err)
        return EXIT_FAIL
    print("failover: configuration is valid", file=sys.stderr)
    return EXIT_OK


def _say(kind: str, text: object) -> None:
    """The one style of every message on stderr: `failover: <kind>: <text>`."""
    print(f"failover: {kind}: {text}" if kind else f"failover: {text}", file=sys.stderr)


def cmd_status(args: argparse.Namespace) -> int:
    from failover.ops.status import cluster_status, render

    settings = _settings_from(args)
    if args.interval < 0.1:
        raise ConfigError("--interval", f"{args.interval:g} s is too short", "use 0.1 s or more")
    while True:
        try:
            status = cluster_status(settings)
        except FailoverError as err:
            _say("", f"cannot read cluster {settings.cluster!r}: {err}")
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
    from failover.ops.status import request_switchover

    settings = _settings_from(args)
    print(request_switchover(settings, args.to, args.wait))
    return EXIT_OK


def _pause(paused: bool) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        from failover.ops.status import set_paused

        settings = _settings_from(args)
        set_paused(settings, paused)
        word = "paused: no elections; the current child keeps running" if paused else "resumed"
        print(f"cluster {settings.cluster!r} {word}")
        return EXIT_OK

    return run


def cmd_demo(args: argparse.Namespace) -> int:
    from failover.demo.cluster import run_demo

    return run_demo(keep=args.keep)


USAGE_KEEPER = "failover keeper --connect PATH [--alive-file FILE] -- CMD"


def cmd_keeper(args: argparse.Namespace) -> int:
    from failover.keeper import core as keeper

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


SET_HELP = (
    "any setting, repeatable: a top-level key (--set lease_seconds=5) or section.key for a "
    "[section] of the TOML file (--set local.dir=/tmp/f, --set http.listen=); overrides "
    "file and env"
)


def _common(p: argparse.ArgumentParser, client: bool = True) -> None:
    p.add_argument("--config", "-c", help="TOML file (default: $FAILOVER_CONFIG, else none)")
    p.add_argument(
        "--cluster", help="election namespace: which cluster to act on (default: airflow)"
    )
    node = (
        "only names this command's own database session; status, pause and switchover act "
        "on the whole cluster (default: host name)"
        if client
        else "this candidate's unique name (default: host name)"
    )
    p.add_argument("--node", help=node)
    p.add_argument(
        "--backend",
        choices=BACKENDS,
        help=f"election backend: {', '.join(BACKENDS)} (default: local)",
    )
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help=SET_HELP)


class _Parser(argparse.ArgumentParser):
    """Usage errors in the one style of every failover message (one line, exit 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"failover: usage error: {message} (see {self.prog} --help)\n")


def _sub(sub: Any, name: str, summary: str, description: str = "") -> argparse.ArgumentParser:
    """A subcommand whose one-line summary shows in `failover --help` and atop its own."""
    parser: argparse.ArgumentParser = sub.add_parser(
        name, help=summary, description=f"{summary}. {description}".strip()
    )
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="failover",
        description="Airflow scheduler failover controller: one scheduler, always, never two.",
        epilog="Exit codes: 0 ok; 1 failure / no healthy leader / check-config found a problem; "
        "2 usage or config error, or status cannot read the cluster; 3 duplicate node name. "
        "Settings: defaults < TOML file < FAILOVER_* env < flags.",
    )
    sub = parser.add_subparsers(dest="command_name", metavar="COMMAND", required=True)
    run = _sub(
        sub,
        "run",
        "Run the daemon on this candidate",
        "Takes part in the election and runs the child only while leader. Give the child "
        "after --, e.g. failover run -- airflow scheduler (default: the command setting, "
        "airflow scheduler).",
    )
    _common(run, client=False)
    run.add_argument("child_command", nargs=argparse.REMAINDER, help="-- CMD ARGS (the child)")
    run.set_defaults(func=cmd_run)

    status = _sub(
        sub,
        "status",
        "Print the cluster table: node, role, epoch, heartbeat, child",
        "Read-only. Exit 0 with exactly one healthy leader, 1 without, 2 when the cluster "
        "cannot be read.",
    )
    _common(status)
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument("--watch", "-w", action="store_true", help="refresh until Ctrl-C")
    status.add_argument(
        "--interval", type=float, default=1.0, help="--watch period in seconds (default: 1)"
    )
    status.set_defaults(func=cmd_status)

    switch = _sub(
        sub,
        "switchover",
        "Hand leadership to another candidate gracefully",
        "Waits until the new leader's child runs; refused (nothing changed) without a healthy "
        "standby.",
    )
    _common(switch)
    switch.add_argument("--to", metavar="NODE", help="the standby to promote (default: any)")
    switch.add_argument(
        "--wait", type=float, default=30.0, help="seconds to wait for it (default: 30)"
    )
    switch.set_defaults(func=cmd_switchover)

    for name, paused in (("pause", True), ("resume", False)):
        p = _sub(
            sub,
            name,
            "Maintenance: keep the current child, hold every election"
            if paused
            else "End maintenance: elections resume",
            "Stored in the backend: survives daemon restarts.",
        )
        _common(p)
        p.set_defaults(func=_pause(paused))

    check = _sub(
        sub,
        "check-config",
        "Check the configuration as failover run would, print it redacted",
        "Runs every start-up check of run; prints warnings; exit 1 on anything run would refuse.",
    )
    _common(check, client=False)
    check.set_defaults(func=cmd_check_config)

    demo = _sub(
        sub,
        "demo",
        "Three local candidates: kill -9 the leader, watch the takeover, switch over",
        "No servers and no Airflow needed (a stand-in child).",
    )
    demo.add_argument(
        "--keep",
        action="store_true",
        help="leave the three daemons running afterwards, to try status, switchover, pause; "
        "prints the commands to use and to stop them (default: stop and remove everything)",
    )
    demo.set_defaults(func=cmd_demo)

    keeper = _sub(
        sub,
        "keeper",
        "Sidecar mode: run CMD for a daemon in another container",
        "Connect to a daemon's [keeper] listen socket and run CMD only while it "
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

    version = _sub(sub, "version", "Print the version")
    version.set_defaults(func=cmd_version)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    log.configure("auto", "warning")  # until `run` configures it: warnings to stderr, never stdout
    try:
        code: int = args.func(args)
    except ConfigError as err:
        _say("configuration error", err)
        return EXIT_USAGE
    except FailoverError as err:
        _say("", err)
        return err.exit_code
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
