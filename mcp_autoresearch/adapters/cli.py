"""The command line: `mcp-autoresearch serve | detect | results | status | dashboard | plot | finish | clean | demo`.

Only argument parsing and dispatch live here. Every failure the user can fix prints one line and exits 2.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from .. import __version__
from ..errors import AutoresearchError

TOKEN_ENV = "AUTORESEARCH_TOKEN"
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line (not usage plus error) and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _add_project(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--project", default=".", metavar="DIR", help="project directory (default: current)")


def _add_overrides(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("settings (the user's word: they override every configuration file)")
    group.add_argument("--target", metavar="FILE", help="the single file the agent may edit")
    group.add_argument("--run-command", metavar="CMD", help="shell command that runs one experiment")
    group.add_argument("--metric", metavar="NAME", help="name of the metric that decides")
    group.add_argument(
        "--eval-command",
        metavar="CMD",
        help="command that measures each run, after it, in its own process tree",
    )
    group.add_argument(
        "--direction",
        metavar="lower|higher",
        help="lower or higher (also lower_is_better / higher_is_better)",
    )
    group.add_argument("--time-budget", metavar="SECONDS", help="seconds an experiment is meant to take")
    group.add_argument("--readonly", metavar="FILE", action="append", help="a read-only file (repeatable)")
    group.add_argument(
        "--max-experiments", metavar="N", help="the session's experiment budget (no run starts past it)"
    )
    group.add_argument(
        "--max-hours",
        metavar="HOURS",
        help="the session's wall-clock budget from its start (no run starts past it)",
    )
    group.add_argument(
        "--network",
        choices=["on", "off"],
        help="whether runs may use the network (default: per project type)",
    )
    group.add_argument(
        "--integrity",
        choices=["any", "required"],
        help="required: refuse to start a session whose metric the run itself reports (default: any)",
    )
    group.add_argument("--config", metavar="FILE", help="a TOML file to use instead of autoresearch.toml")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="mcp-autoresearch",
        description="An MCP server that runs an autonomous experiment loop on a project, with the rules in code.",
    )
    parser.add_argument("--version", action="version", version=f"mcp-autoresearch {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    serve = sub.add_parser("serve", help="run the MCP server for one project (stdio by default)")
    _add_project(serve)
    serve.add_argument("--transport", choices=["stdio", "http"], default="stdio")
    serve.add_argument("--host", default="127.0.0.1", help="HTTP bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8765, help="HTTP port (default 8765)")
    serve.add_argument(
        "--token", help=f"bearer token required on every HTTP request (better: ${TOKEN_ENV}, see README)"
    )
    serve.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    _add_overrides(serve)

    detect = sub.add_parser("detect", help="show what the server understands of a project")
    _add_project(detect)
    detect.add_argument("--json", action="store_true", help="print the JSON that detect_project returns")
    _add_overrides(detect)

    results = sub.add_parser("results", help="print the current session's results")
    _add_project(results)
    results.add_argument("--status", help="only rows with this status (keep, discard, crash, timeout, ...)")
    results.add_argument("--format", choices=["table", "tsv", "json", "karpathy"], default="table")
    results.add_argument("--session", metavar="TAG", help="another session than the current one")

    status = sub.add_parser("status", help="the session's briefing, for a person")
    _add_project(status)
    status.add_argument("--session", metavar="TAG")

    dashboard = sub.add_parser("dashboard", help="live terminal dashboard of the current session")
    _add_project(dashboard)
    dashboard.add_argument("--session", metavar="TAG")
    dashboard.add_argument("--status", help="only rows with this status in the recent list")
    dashboard.add_argument("--interval", type=float, default=2.0, help="refresh interval in seconds")
    dashboard.add_argument("--once", action="store_true", help="print once and exit")
    dashboard.add_argument("--web", action="store_true", help="serve a live web page instead (read-only)")
    dashboard.add_argument("--host", default="127.0.0.1", help="with --web: bind address (default 127.0.0.1)")
    dashboard.add_argument("--port", type=int, default=8766, help="with --web: port (default 8766)")
    dashboard.add_argument(
        "--token", help=f"with --web: token the page's requests need (better: ${TOKEN_ENV}, see README)"
    )

    plot = sub.add_parser("plot", help="write the progress plot (needs the 'plot' extra)")
    _add_project(plot)
    plot.add_argument("--session", metavar="TAG")
    plot.add_argument("--out", default="progress.png", help="output PNG (default progress.png)")

    finish = sub.add_parser("finish", help="when you are done: the session's summary, and landing its result")
    _add_project(finish)
    finish.add_argument("--session", "--tag", dest="session", metavar="TAG", help="default: the current one")
    finish.add_argument(
        "--land", metavar="BRANCH", help="put the kept commits on BRANCH (fast-forward; created if missing)"
    )
    finish.add_argument("--squash", action="store_true", help="with --land: as one commit")
    finish.add_argument("--message", metavar="TEXT", help="with --squash: the commit message")

    clean = sub.add_parser("clean", help="remove a finished session's branch, refs and files")
    _add_project(clean)
    clean.add_argument("--tag", required=True, metavar="TAG", help="the session to remove")
    clean.add_argument("--yes", action="store_true", help="remove (without it: only say what would go)")

    demo = sub.add_parser("demo", help="run the loop end to end on a bundled example project")
    demo.add_argument(
        "--experiments", type=int, default=12, help="experiments after the baseline (default 12)"
    )
    demo.add_argument("--example", default="tune", help="which bundled example (tune, bundle)")
    demo.add_argument("--keep-dir", metavar="DIR", help="where to put the demo project (kept afterwards)")
    demo.add_argument("--seed", type=int, default=1, help="random seed of the scripted agent")
    demo.add_argument("--slots", type=int, default=1, help="experiments in flight at once (default 1)")
    return parser


def overrides_from(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "target_file": args.target,
        "run_command": args.run_command,
        "eval_command": args.eval_command,
        "metric_name": args.metric,
        "metric_direction": args.direction,
        "time_budget": args.time_budget,
        "max_experiments": args.max_experiments,
        "max_hours": args.max_hours,
        "readonly_files": args.readonly,
        "network": args.network,
        "integrity": args.integrity,
    }


def _fail(message: str) -> int:
    print(f"mcp-autoresearch: error: {message}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; output piped into a reader that stops early (`detect | head`) ends quietly. The
    garbage collector is off until the command has imported what it needs (`_imports_done`)."""
    gc.disable()
    try:
        code = _main(argv)
        sys.stdout.flush()  # here, not at exit, where a closed pipe can only print a traceback
        return code
    except BrokenPipeError:
        # The reader is gone: nothing more can be shown. Point stdout at /dev/null so that the interpreter's
        # own flush at exit cannot fail again, and exit as a process stopped by SIGPIPE would (128 + 13).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    finally:
        gc.enable()


def _imports_done() -> None:
    """What exists now (modules, the SDK's models) lives as long as the process: the collector, off since `main`
    began, stops looking at it and runs again from here. While modules import, the collector ran every 700 new
    objects and walked the growing heap again and again, about a tenth of a server's start (and a full collection
    walked all of it later, a few ms at a time, in the middle of an experiment, and once more at exit)."""
    gc.freeze()
    gc.enable()


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        if args.command == "serve":
            return cmd_serve(args)
        if args.command == "detect":
            return cmd_detect(args)
        if args.command == "dashboard" and args.web:
            return cmd_dashboard_web(args)
        if args.command == "dashboard":
            from ..readers.dashboard import run_dashboard
            from ..readers.report import check_status, open_session_files

            _imports_done()
            # Checked before anything is read: a typo is an error, not an empty list.
            status = check_status(args.status)
            files = open_session_files(args.project, args.session)
            return run_dashboard(files, status, args.interval, args.once)
        if args.command in ("results", "status", "plot"):
            from ..readers import report

            _imports_done()
            return report.run(args)
        if args.command in ("finish", "clean"):
            from ..session import landing

            _imports_done()
            return landing.run(args)
        if args.command == "demo":
            from .demo import run_demo

            _imports_done()
            return run_demo(args.experiments, args.keep_dir, args.example, args.seed, args.slots)
    except AutoresearchError as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        return 130
    return _fail(f"unknown command {args.command}")


def cmd_detect(args: argparse.Namespace) -> int:
    from ..setup.project import load_project
    from ..vcs.readonly import git_problem
    from .prompts import budgets_line

    _imports_done()
    project = load_project(args.project, overrides_from(args), args.config)
    info = project.info
    # Detection works without git, but the loop does not: say so after what was detected, and exit 2.
    problem = git_problem(project.root)
    if args.json:
        print(info.model_dump_json(indent=2))
        return _fail(problem) if problem else 0
    print(f"project:      {info.root} ({info.project_type})")
    print(f"target file:  {info.target_file or '-'}")
    print(f"run command:  {info.run_command or '-'}")
    direction = "lower is better" if info.metric_direction == "lower_is_better" else "higher is better"
    print(f"metric:       {info.metric_name or '-'} ({direction})")
    print(f"  measured:   {info.metric_source}")
    print(f"  source:     {info.provenance.source}: {info.provenance.reason}")
    if info.provenance.fix:
        print(f"  fix:        {info.provenance.fix}")
    if info.integrity != "any":
        print(f"  integrity:  {info.integrity}")
    print(f"time budget:  {info.time_budget:g} s (hard timeout {info.timeout:g} s)")
    print(f"read-only:    {', '.join(info.readonly_files) or '-'}")
    print(f"checks:       {info.checks_command or '-'}")
    if info.eval_command:
        print(
            f"evaluation:   {info.eval_command} (after each run, read-only; only its output gives the metric)"
        )
        if info.hidden:
            print(f"hidden:       {', '.join(info.hidden)} (only the evaluation may read these)")
        if info.holdout:
            print("holdout:      set (run after every keep; its values are never shown)")
    print(f"repeats:      {info.repeats} (runs per experiment; the median decides)")
    print(f"min_delta:    {info.min_delta:g}")
    print(f"run logs:     at most {info.log_limit_mb:g} MB of a command's output kept, its beginning and end")
    print(
        f"writable:     {', '.join(info.writable) or '-'} (a run may write only these, and a private TMPDIR)"
    )
    if info.persistent:
        print(
            f"persistent:   {', '.join(info.persistent)} (kept from run to run: a channel between runs, not trusted)"
        )
    if info.slots > 1 or info.backend != "local":
        print(f"slots:        {info.slots} ({info.backend}), each run in a checkout of its own")
    print(f"isolation:    {info.isolation}")
    print(f"network:      {info.network}")
    print(f"keep rule:    {info.keep_rule}")
    if info.max_experiments is not None or info.max_hours is not None:
        print(f"budget:       {budgets_line(info.max_experiments, info.max_hours)} (the session's)")
    print(f"evidence:     {', '.join(info.evidence) or '-'}")
    print(
        "sources:      "
        + ", ".join(f"{k}={v}" for k, v in info.config_source.items() if not v.startswith("default"))
    )
    for warning in info.warnings:
        print(f"warning:      {warning}")
    if problem:
        return _fail(problem)
    print(info.message)
    return 0


def _listen_problem(host: str, port: int, token: str | None, what: str, why: str) -> str | None:
    """Why `what` must not listen on host:port (None when it may): a non-loopback address needs a token."""
    if host not in LOOPBACK and not token:
        return (
            f"refusing to serve {what} on {host} without a token: {why}. Pass --token or set {TOKEN_ENV}, "
            "or bind 127.0.0.1"
        )
    if not 0 < port < 65536:
        return f"--port {port} is not a valid port"
    return None


def token_from(args: argparse.Namespace) -> str | None:
    """The HTTP token: from the environment, or from --token with a warning (every process of the machine reads
    a command line). Either way it then leaves this process's environment (nothing it starts inherits it) and is
    overwritten in the memory its /proc files show, and the process is made not dumpable (its /proc closed)."""
    from ..sandbox.ownprocess import close_own_proc, scrub_from_proc

    close_own_proc()
    token = args.token or os.environ.get(TOKEN_ENV) or None
    os.environ.pop(TOKEN_ENV, None)
    if args.token:
        print(
            f"mcp-autoresearch: warning: --token puts the token on the command line, where other processes and "
            f"the shell's history can read it; set {TOKEN_ENV} in the server's environment instead",
            file=sys.stderr,
        )
    if token:
        scrub_from_proc(token)
    return token


def cmd_dashboard_web(args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from ..readers.web.app import serve_page
    from ..setup.project import check_project_root, load_project

    _imports_done()
    token = token_from(args)
    problem = _listen_problem(
        args.host, args.port, token, "the dashboard", "it shows the project's code and logs"
    )
    if problem:
        return _fail(problem)
    root = check_project_root(args.project)
    try:
        timeout: float | None = load_project(root).config.timeout
    except ConfigError:
        timeout = None
    return serve_page(root, args.session, timeout, args.host, args.port, token)


LOG_MESSAGE_CHARS = 2000  # the most of one log message shown (a refused 20 KB Host header is logged whole)


class ShownLog(logging.Formatter):
    """The server's log lines made safe to print (`printable`; tracebacks keep their lines), each message cut
    at `LOG_MESSAGE_CHARS`. The MCP SDK logs what a request carries (a refused Host or Origin header, whole):
    any local process could otherwise write escape sequences, or kilobytes a request, to the user's terminal."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        if len(record.message) > LOG_MESSAGE_CHARS:
            more = len(record.message) - LOG_MESSAGE_CHARS
            record.message = f"{record.message[:LOG_MESSAGE_CHARS]}… ({more} more characters)"
        return super().formatMessage(record)

    def format(self, record: logging.LogRecord) -> str:
        from ..terminal_text import printable

        return printable(super().format(record), lines=True)


def cmd_serve(args: argparse.Namespace) -> int:
    from ..sandbox.ownprocess import close_own_proc
    from ..session.workspace import Workspace

    close_own_proc()  # first: runs are processes of the same user, and this process holds the token
    shown = logging.StreamHandler(sys.stderr)
    shown.setFormatter(ShownLog("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=args.log_level, handlers=[shown])
    token = token_from(args)
    if args.transport == "http":
        why = "anyone who reaches it could run commands in this project"
        problem = _listen_problem(args.host, args.port, token, "the server", why)
        if problem:
            return _fail(problem)
    workspace = Workspace(args.project, overrides_from(args), args.config)
    from .server import create_server

    server = create_server(workspace)
    # Frozen with the imports: the server and the project's configuration and detection (no session is read
    # before a client calls), which live as long as the process.
    _imports_done()
    try:
        if args.transport == "stdio":
            server.run()
            return 0
        from ..errors import ConfigError
        from ..readers.web.app import workspace_page
        from ..setup.config import DEFAULTS
        from .http import serve_http

        try:
            timeout = workspace.load().config.timeout
        except ConfigError:  # a bad configuration file: detect_project reports it; the server still starts
            timeout = 2 * float(DEFAULTS["time_budget"])
        page = workspace_page(workspace.root, timeout, args.host, token)
        return serve_http(server, args.host, args.port, token, page)
    finally:
        workspace.shutdown()  # a run still in flight is killed and logged; the project lock is released


if __name__ == "__main__":
    raise SystemExit(main())
