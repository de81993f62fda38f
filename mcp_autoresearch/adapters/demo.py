"""`mcp-autoresearch demo`: the whole loop on a bundled example, with the real server over stdio and the
scripted agent, so a new user sees it work before handing it a project and an LLM."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from importlib.resources import files
from pathlib import Path
from typing import Any

import anyio
from mcp import Client

from ..errors import AutoresearchError
from ..names import RESULTS_TSV, RUN_LOG, STATE_DIR
from ..records.rows import Row
from ..vcs.identity import FALLBACK_IDENTITY
from .scripted_agent import ScriptedAgent, rows_printer, server_params
from .tree_policy import TreePolicy

EXAMPLES = {
    "tune": "a polynomial sine approximation; metric: RMS error (lower is better)",
    "bundle": "a tiny Node library; metric: bundle size in KB (lower is better), with a test gate",
}
# The demo's agent branches from another node after this many experiments in a row without a keep (one slot).
STALL_AFTER = 3
IGNORE = shutil.ignore_patterns(
    "__pycache__", "*.pyc", "dist", "node_modules", STATE_DIR, RUN_LOG, RESULTS_TSV
)


def example_source(name: str) -> Path:
    if name not in EXAMPLES:
        raise AutoresearchError(f"unknown example '{name}'; choose one of: {', '.join(EXAMPLES)}")
    return Path(str(files("mcp_autoresearch") / "examples" / name))


def prepare(name: str, keep_dir: str | None, slots: int = 1) -> Path:
    """Copy the example into a fresh directory and make it a git repository with one commit."""
    if shutil.which("git") is None:
        raise AutoresearchError(
            "git is not installed; the loop keeps and discards experiments as git commits"
        )
    if name == "bundle" and shutil.which("node") is None:
        raise AutoresearchError("the 'bundle' example needs Node.js (node); try --example tune")
    if keep_dir:
        target = Path(keep_dir).expanduser().resolve()
        if target.exists() and any(target.iterdir()):
            raise AutoresearchError(f"--keep-dir {target} exists and is not empty; name a new directory")
    else:
        target = Path(tempfile.mkdtemp(prefix=f"autoresearch-demo-{name}-")).resolve()
    shutil.copytree(example_source(name), target, ignore=IGNORE, dirs_exist_ok=True)
    config = target / "autoresearch.toml"
    if '"python3 ' in config.read_text():
        # The example runs with this very interpreter, whatever `python3` is (or is not) on the user's PATH.
        config.write_text(config.read_text().replace('"python3 ', f'"{_quote(sys.executable)} '))
    if slots > 1:  # an untracked setting of the user's, as a person would add it
        config.write_text(config.read_text() + f"slots = {slots}\n")
    env = {**os.environ}
    for key, value in FALLBACK_IDENTITY.items():
        env.setdefault(key, value)
    for args in (
        ["init", "-q"],
        ["add", "-A", ":!autoresearch.toml"] if slots > 1 else ["add", "-A"],
        ["commit", "-q", "-m", f"example project: {name}"],
    ):
        subprocess.run(["git", *args], cwd=target, check=True, capture_output=True, env=env)
    return target


def run_demo(
    experiments: int, keep_dir: str | None, example: str = "tune", seed: int = 1, slots: int = 1
) -> int:
    if experiments < 1:
        raise AutoresearchError("--experiments must be at least 1")
    if not 1 <= slots <= 64:
        raise AutoresearchError("--slots must be between 1 and 64")
    project = prepare(example, keep_dir, slots)
    print(f"demo project: {project}  ({EXAMPLES[example]})")
    print("starting the server over stdio and the scripted agent (no LLM)...", flush=True)
    if slots == 1:
        print(
            f"the agent builds on each keep; after {STALL_AFTER} experiments in a row without one it branches\n"
            "from another node of the research tree (branch_from)\n",
            flush=True,
        )
    else:
        print()
    started = time.monotonic()
    try:
        summary = anyio.run(_drive, project, experiments, seed, slots)
    except Exception as exc:  # the server subprocess failed or the connection broke: say so in one line
        raise AutoresearchError(
            f"the demo stopped: {_first_error(exc)} (project left in {project})"
        ) from None
    elapsed = time.monotonic() - started
    from rich.console import Console

    from ..readers.report import open_session_files, results_table

    session = open_session_files(str(project))
    console = Console(soft_wrap=True)  # paths and commands must stay copyable, never wrapped
    console.print()
    console.print(results_table(session, session.journal.rows, notes=False))
    results = summary.results or {}
    best = results.get("best") or {}
    pct = results.get("improvement_pct")
    console.print(
        f"{results.get('total', 0)} experiments in {elapsed:.1f} s: {results.get('counts')}; baseline "
        f"{results.get('baseline')} -> best {best.get('value')}"
        + (f" ({pct:.1f}% better)" if pct is not None else "")
    )
    if slots == 1:
        console.print(tree_line(session.journal.rows, best.get("run_id"), summary.moves))
    tag = session.state.tag
    console.print(f"\n  {RESULTS_TSV}  {project / RESULTS_TSV}")
    console.print(f"  JSONL log    {session.journal.jsonl_path}")
    console.print(f"  branch       autoresearch/{tag} (git -C {project} log --oneline autoresearch/{tag})")
    command = _own_command()
    console.print(f"  dashboard    {command} dashboard --project {project}")
    console.print(f"  plot         {command} plot --project {project} --out progress.png")
    return 0


async def _drive(project: Path, experiments: int, seed: int, slots: int = 1) -> Any:
    extra: list[str] = []  # (the example's configuration names this interpreter: see `prepare`)
    # The slots' checkouts beside the demo project, removed with it (never inside its work tree).
    env = {"AUTORESEARCH_SLOTS_DIR": str(project.parent / f"{project.name}-slots")} if slots > 1 else None
    async with Client(server_params(str(project), extra, env)) as client:
        policy = TreePolicy(stall_after=STALL_AFTER) if slots == 1 else None
        agent = ScriptedAgent(client, log=lambda line: print(line, flush=True), policy=policy)
        # One row per run, under a header (runs number the experiments; `from` is the node each started from).
        return await agent.loop(experiments, seed, None, rows_printer())


def tree_line(rows: list[Row], best: str | None, moves: list[str]) -> str:
    """The research tree in one line: what the agent did besides going deeper, and the best lineage."""
    parents = {row.run_id: row.parent for row in rows}
    lineage: list[str] = []
    while best is not None and best not in lineage:
        lineage.append(best)
        best = parents.get(best)
    done = ", ".join(moves) if moves else "never branched (no stall)"
    return f"research tree: {done}; best lineage {' -> '.join(reversed(lineage))}"


def _own_command() -> str:
    """How to call this CLI again from the user's shell: by name if it is on PATH, else by its full path."""
    found = shutil.which("mcp-autoresearch")
    if found and Path(found).parent == Path(sys.executable).parent:
        return "mcp-autoresearch"
    beside = Path(sys.executable).parent / "mcp-autoresearch"
    return _quote(str(beside)) if beside.exists() else f"{_quote(sys.executable)} -m mcp_autoresearch"


def _first_error(exc: BaseException) -> str:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"


def _quote(path: str) -> str:
    import shlex

    return shlex.quote(path)
