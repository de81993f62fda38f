"""A complete autoresearch agent without an LLM: hill-climbing over the target's numeric constants.

It talks to the server exactly as an LLM agent would: over stdio, with the official MCP client, through the
tools only. Teams use the same pattern to drive the loop from CI jobs or classic search strategies.

    python -m mcp_autoresearch.adapters.scripted_agent --project DIR --experiments 20

Each experiment perturbs one numeric constant of the target (or, now and then, deletes a line: the loop's
"deleting code is best" rule), runs it, lets the server decide, and logs a note. Two policies: `greedy` (every
candidate starts from the best: the classic loop) and `tree` (`tree_policy.py`: after `--stall-after`
experiments without a keep it branches from another node with `branch_from`, and now and then `combine`s two).
"""

from __future__ import annotations

import argparse
import os
import random
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
from mcp import Client, StdioServerParameters
from mcp.types import TextContent

from .tree_policy import Branch, Combine, TreePolicy

# `NAME = 1.25` at the start of a line: the tunable constants, karpathy-style.
CONSTANT = re.compile(
    r"^(?P<name>[A-Z][A-Z0-9_]*)(?P<eq>\s*=\s*)(?P<value>-?\d+(?:\.\d+)?(?:[eE]-?\d+)?)", re.MULTILINE
)
WAIT_S = 20.0


class ToolFailed(Exception):
    pass


@dataclass
class Proposal:
    old: str
    new: str
    description: str


@dataclass
class Summary:
    experiments: int = 0
    decisions: dict[str, int] = field(default_factory=dict)
    results: dict[str, Any] | None = None
    session: dict[str, Any] | None = None
    moves: list[str] = field(default_factory=list)  # the tree policy's: "branch_from r5", "combine r3 + r6"


def propose(content: str, rng: random.Random) -> Proposal | None:
    """One small change: scale a numeric constant, or delete one line (a comment or blank is never chosen)."""
    constants = list(CONSTANT.finditer(content))
    if constants and rng.random() < 0.85:
        match = rng.choice(constants)
        value = float(match.group("value"))
        is_int = re.fullmatch(r"-?\d+", match.group("value")) is not None
        step = rng.gauss(0, 0.15)
        new_value: float = value * (1 + step) if value else step
        if is_int:
            new_value = int(round(new_value)) or (1 if value > 0 else -1)
            if new_value == value:
                new_value = int(value) + rng.choice((-1, 1))
            text = str(new_value)
        else:
            text = f"{new_value:.6g}"
        old_line = match.group(0)
        new_line = f"{match.group('name')}{match.group('eq')}{text}"
        return Proposal(old_line, new_line, f"{match.group('name')} {match.group('value')} -> {text}")
    lines = [
        line
        for line in content.splitlines(keepends=True)
        if line.strip() and not line.lstrip().startswith(("#", "//", "/*", "*", '"""'))
    ]
    candidates = [line for line in lines if content.count(line) == 1]
    if not candidates:
        return None
    line = rng.choice(candidates)
    return Proposal(line, "", f"delete line: {line.strip()[:60]}")


Proposer = Callable[[str, random.Random], "Proposal | None"]


class ScriptedAgent:
    def __init__(
        self,
        client: Client,
        log: Callable[[str], None] = print,
        policy: TreePolicy | None = None,
        proposer: Proposer = propose,
    ) -> None:
        """`policy` None: the greedy loop. A `TreePolicy`: branch and combine when the line stalls (one slot)."""
        self.client = client
        self.log = log
        self.policy = policy
        self.proposer = proposer
        self.moves: list[str] = []

    async def call(self, tool: str, **args: Any) -> dict[str, Any]:
        result = await self.client.call_tool(tool, args)
        if result.is_error:
            first = result.content[0] if result.content else None
            raise ToolFailed(first.text if isinstance(first, TextContent) else f"{tool} failed")
        return result.structured_content or {}

    async def run(self, description: str) -> dict[str, Any]:
        """run_experiment, then poll while 'running'."""
        run = await self.call("run_experiment", description=description, wait_s=WAIT_S)
        while run["status"] == "running":
            run = await self.call("wait_experiment", run_id=run["run_id"], wait_s=WAIT_S)
        return run

    async def run_and_decide(self, description: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """run_experiment, poll while 'running', then let the server decide. Every status ends in a decision:
        crash, timeout, metric_error, checks_failed and tampered are logged as crashes."""
        run = await self.run(description)
        decision = await self.call("commit_or_reset", run_id=run["run_id"])
        return run, decision

    async def loop(
        self,
        experiments: int,
        seed: int,
        tag: str | None,
        on_experiment: Callable[[int, dict[str, Any], dict[str, Any]], None] | None = None,
    ) -> Summary:
        rng = random.Random(seed)
        summary = Summary()
        info = await self.call("detect_project")
        self.log(
            f"project: {info['project_type']}, target {info['target_file']}, metric {info['metric_name']} "
            f"({info['metric_direction']})"
        )
        if self.policy is not None:
            self.policy.lower_is_better = info["metric_direction"] == "lower_is_better"
        summary.session = await self.call("start_session", **({"tag": tag} if tag else {}))
        if summary.session.get("pending_run"):
            await self.call("commit_or_reset", run_id=summary.session["pending_run"])
        if summary.session.get("best_value") is not None:
            await self._seed_policy()
        else:
            run, decision = await self.run_and_decide("baseline")
            self._count(summary, decision)
            self._record(run, decision)
            if on_experiment:
                on_experiment(0, run, decision)
            if decision["decision"] != "keep":
                self.log(f"the baseline failed ({run['status']}: {run.get('error')}); fix the project first")
                summary.results = await self.call("query_results", limit=50)
                return summary
        if info.get("slots", 1) > 1:
            if self.policy is not None:
                self.log("with slots the agent keeps every slot busy from the best (greedy): no branching")
            await self._slots_loop(info["slots"], experiments, rng, summary, on_experiment)
            summary.results = await self.call("query_results", limit=50)
            return summary
        await self._serial_loop(experiments, rng, summary, on_experiment)
        await self._end_on_best()
        summary.moves = list(self.moves)
        summary.results = await self.call("query_results", limit=50)
        return summary

    async def _serial_loop(
        self,
        experiments: int,
        rng: random.Random,
        summary: Summary,
        on_experiment: Callable[[int, dict[str, Any], dict[str, Any]], None] | None,
    ) -> None:
        """One run at a time: `experiments` decided candidates (a content measured before is not one)."""
        number = attempts = 0
        while number < experiments and attempts < 3 * experiments:
            attempts += 1
            candidate = await self._next_candidate(rng)
            if candidate is None:
                self.log("nothing left to change")
                return
            description, before = candidate
            try:
                run = await self.run(description)
            except ToolFailed as exc:
                # A refusal (max_experiments, a rule): put the target back and stop cleanly.
                self.log(f"stopped: {exc}")
                await self.call("apply_edit", content=before)
                return
            if run.get("already_measured"):  # nothing ran: go back to where this candidate started
                self.log(f"      {description}: measured before, as {run['run_id']}; trying another")
                await self._back_to(before, combined=description.startswith("combine "))
                continue
            decision = await self.call("commit_or_reset", run_id=run["run_id"])
            number += 1
            self._count(summary, decision)
            self._record(run, decision)
            outcome = (
                f"{run['status']}: value {run.get('value')}, best before {run.get('best_value')}; "
                f"decision {decision['decision']} ({decision['reason']})"
            )
            await self.call(
                "log_result",
                run_id=run["run_id"],
                notes=f"hypothesis: {description} helps; result: {outcome}",
            )
            if on_experiment:
                on_experiment(number, run, decision)

    async def _next_candidate(self, rng: random.Random) -> tuple[str, str] | None:
        """Put the next candidate in the target: (its description, the target's content before), or None."""
        move = self.policy.next_move() if self.policy else None
        described = await self._move(move) if move else None
        view = await self.call("read_target")
        if described is not None:
            return described, view["content"]
        proposal = self.proposer(view["content"], rng)
        if proposal is None:
            return None
        await self.call(
            "apply_edit",
            edits=[{"old_text": proposal.old, "new_text": proposal.new}],
            expected_sha256=view["sha256"],
        )
        return proposal.description, view["content"]

    async def _back_to(self, before: str, combined: bool) -> None:
        if combined and self.policy is not None and self.policy.current is not None:
            await self.call("branch_from", run_id=self.policy.current)
        else:
            await self.call("apply_edit", content=before)

    async def _slots_loop(
        self,
        slots: int,
        experiments: int,
        rng: random.Random,
        summary: Summary,
        on_experiment: Callable[[int, dict[str, Any], dict[str, Any]], None] | None,
    ) -> None:
        """With slots: keep every slot busy (edit and start while one is free), else decide the first run to
        finish. A candidate merged onto a newer best runs again (decision `rerun`) and is waited for again."""
        in_flight: dict[str, Proposal] = {}
        started = decided = 0
        while decided < started or started < experiments:
            if len(in_flight) < slots and started < experiments:
                view = await self.call("read_target")
                proposal = propose(view["content"], rng)
                if proposal is None:
                    experiments = started
                    continue
                await self.call(
                    "apply_edit",
                    edits=[{"old_text": proposal.old, "new_text": proposal.new}],
                    expected_sha256=view["sha256"],
                )
                try:
                    run = await self.call("run_experiment", description=proposal.description)
                except ToolFailed as exc:
                    self.log(f"stopped starting runs: {exc}")
                    await self.call("apply_edit", content=view["content"])
                    experiments = started
                    continue
                if run["status"] == "running":
                    in_flight[run["run_id"]] = proposal
                    started += 1
                continue  # content measured before: the earlier result answered; nothing runs
            run = await self.call("wait_experiment", wait_s=WAIT_S)
            while run["status"] == "running":
                run = await self.call("wait_experiment", wait_s=WAIT_S)
            decision = await self.call("commit_or_reset", run_id=run["run_id"])
            if decision["decision"] == "rerun":
                continue
            proposal = in_flight.pop(run["run_id"], None)
            decided += 1
            self._count(summary, decision)
            await self.call(
                "log_result",
                run_id=run["run_id"],
                notes=f"hypothesis: {proposal.description if proposal else 'this'} helps; result: "
                f"{run['status']}, value {run.get('value')}; decision {decision['decision']} ({decision['reason']})",
            )
            if on_experiment:
                on_experiment(decided, run, decision)

    async def _move(self, move: Branch | Combine) -> str | None:
        """Branch from another node (None: propose an edit from there), or combine two (the candidate's
        description). A refused move is logged and the agent goes on from where it is."""
        assert self.policy is not None
        if isinstance(move, Combine):
            try:
                answer = await self.call("combine", run_a=move.run_a, run_b=move.run_b)
            except ToolFailed as exc:  # a conflict, or nothing to combine: branch instead
                self.log(f"      could not combine {move.run_a} + {move.run_b}: {exc}")
                branch = self.policy.branch_point()
                return await self._move(branch) if branch else None
            self.log(f"      combine: {move.run_a} + {move.run_b} ({move.why}), onto {answer['parent']}")
            self.policy.moved_to(answer["parent"])
            self.moves.append(f"combine {move.run_a} + {move.run_b}")
            return f"combine {move.run_a} + {move.run_b}"
        try:
            await self.call("branch_from", run_id=move.run_id)
        except ToolFailed as exc:
            self.log(f"      could not branch from {move.run_id}: {exc}")
            return None
        self.log(
            f"      branch: no keep in {self.policy.stall_after} experiments; "
            f"branching from {move.run_id} ({move.why})"
        )
        self.policy.moved_to(move.run_id)
        self.moves.append(f"branch_from {move.run_id}")
        return None

    async def _end_on_best(self) -> None:
        """The tree policy may end on another node: put the best's target back in the work tree."""
        policy = self.policy
        if policy is not None and policy.best is not None and policy.current != policy.best:
            await self.call("branch_from", run_id=policy.best)
            self.log(f"      back to the best, {policy.best}: the work tree holds its target")
            policy.moved_to(policy.best)

    async def _seed_policy(self) -> None:
        """A resumed session: the tree policy learns the tree so far from the rows (its last 500)."""
        if self.policy is None:
            return
        rows = (await self.call("query_results", limit=500))["rows"]
        for row in reversed(rows):
            kept = row["status"] == "keep"
            self.policy.record(
                row["run_id"], row.get("parent"), row.get("value"), kept, bool(row.get("best"))
            )

    def _record(self, run: dict[str, Any], decision: dict[str, Any]) -> None:
        """Tell the tree policy what the server decided (its parent and best when the server names them)."""
        if self.policy is None:
            return
        kept = decision["decision"] == "keep"
        parent = decision.get("parent", run.get("parent", self.policy.current))
        is_best = decision.get("best", kept)
        self.policy.record(run["run_id"], parent, run.get("value"), kept, bool(is_best))

    @staticmethod
    def _count(summary: Summary, decision: dict[str, Any]) -> None:
        summary.experiments += 1
        summary.decisions[decision["decision"]] = summary.decisions.get(decision["decision"], 0) + 1


def server_params(
    project: str, extra_args: list[str] | None = None, extra_env: dict[str, str] | None = None
) -> StdioServerParameters:
    """The server as a client configuration would start it: `python -m mcp_autoresearch serve --project DIR`."""
    keep = (
        "PATH",
        "HOME",
        "LANG",
        "LC_ALL",
        "TMPDIR",
        "GIT_AUTHOR_NAME",
        "GIT_AUTHOR_EMAIL",
        "GIT_COMMITTER_NAME",
        "GIT_COMMITTER_EMAIL",
        "VIRTUAL_ENV",
        "PYTHONPATH",
        "AUTORESEARCH_SLOTS_DIR",
    )
    env = {name: os.environ[name] for name in keep if name in os.environ} | (extra_env or {})
    return StdioServerParameters(
        command=sys.executable,
        args=["-m", "mcp_autoresearch", "serve", "--project", project, *(extra_args or [])],
        env=env,
        cwd=project,
    )


def print_experiment(number: int, run: dict[str, Any], decision: dict[str, Any]) -> None:
    """One line per experiment, numbered by its run id (r1 is the baseline), as every other view numbers it,
    with the node it started from (its parent: `-` for the baseline)."""
    value = run.get("value")
    shown = "-" if value is None else f"{value:.6g}"
    parent = decision.get("parent") or run.get("parent") or "-"
    print(
        f"{run['run_id']:<5} {parent:<5} {run['status']:<13} {shown:>12}  {decision['decision']:<8} "
        f"{decision['reason']}",
        flush=True,
    )


HEADER = f"{'run':<5} {'from':<5} {'status':<13} {'value':>12}  {'decision':<8} reason"


def rows_printer() -> Callable[[int, dict[str, Any], dict[str, Any]], None]:
    """print_experiment with HEADER above the first row, so that the lines the agent prints before it (the
    project) do not come between the header and its rows."""
    started = False

    def on_experiment(number: int, run: dict[str, Any], decision: dict[str, Any]) -> None:
        nonlocal started
        if not started:
            print(HEADER, flush=True)
            started = True
        print_experiment(number, run, decision)

    return on_experiment


async def amain(args: argparse.Namespace) -> int:
    async with Client(server_params(args.project)) as client:
        policy = TreePolicy(stall_after=args.stall_after) if args.policy == "tree" else None
        agent = ScriptedAgent(client, policy=policy)
        summary = await agent.loop(args.experiments, args.seed, args.tag, rows_printer())
    results = summary.results or {}
    best = results.get("best") or {}
    print(
        f"{results.get('total', 0)} experiments, counts {results.get('counts')}, baseline "
        f"{results.get('baseline')}, best {best.get('value')} ({best.get('description')})"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", default=".", help="project directory (a git repository)")
    parser.add_argument("--experiments", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--tag", default=None)
    parser.add_argument(
        "--policy",
        choices=("greedy", "tree"),
        default="greedy",
        help="tree: branch_from and combine on stalls",
    )
    parser.add_argument(
        "--stall-after", type=int, default=8, help="tree: experiments without a keep, then branch"
    )
    args = parser.parse_args(argv)
    args.project = os.path.abspath(args.project)
    try:
        return anyio.run(amain, args)
    except Exception as exc:  # a refusal or a broken connection: one line, not a traceback
        first: BaseException = exc
        while isinstance(first, BaseExceptionGroup) and first.exceptions:
            first = first.exceptions[0]
        print(f"scripted agent stopped: {first}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
