"""The package's shape: imports point one way (no cycles, also none hidden in a function or under
TYPE_CHECKING), and the engine never imports MCP."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import mcp_autoresearch

PACKAGE = Path(mcp_autoresearch.__file__).parent
NAME = "mcp_autoresearch"
# The adapters (and the clients built on them) speak MCP; everything else is the engine.
MCP_ALLOWED: set[str] = set()  # and every adapter
READERS = f"{NAME}.readers"
ENGINE_OF_A_SESSION = (f"{NAME}.session", f"{NAME}.lifecycle")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        if "examples" in path.relative_to(PACKAGE).parts:
            continue  # the bundled example projects are the user's code, not the package's
        found[_module_name(path)] = path
    return found


def _imports(name: str, path: Path) -> set[str]:
    """Every module this one imports, wherever the import statement stands (module level, in a function,
    under `if TYPE_CHECKING`). Names are absolute; `from . import x` counts as importing module `x`."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                drop = node.level - 1 if is_package else node.level
                base = base[: len(base) - drop] if drop else base
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {
        name: {m for m in _imports(name, path) if m in modules and m != name}
        for name, path in modules.items()
    }


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_import_graph_has_no_cycle() -> None:
    graph = import_graph()
    assert f"{NAME}.session.session" in graph and f"{NAME}.adapters.server" in graph
    # The graph sees imports inside functions: cli imports the server lazily.
    assert f"{NAME}.adapters.server" in graph[f"{NAME}.adapters.cli"]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_finds_a_cycle_hidden_in_a_function(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from .session import Session\n")
    assert "pkg.session" in _imports("pkg.m", module)
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_engine_never_imports_mcp() -> None:
    offenders = []
    for name, path in _modules().items():
        short = name.removeprefix(f"{NAME}.")
        if short in MCP_ALLOWED or short.startswith("adapters"):
            continue
        mcp = {m for m in _imports(name, path) if m == "mcp" or m.startswith("mcp.")}
        if mcp:
            offenders.append(f"{short}: {', '.join(sorted(mcp))}")
    assert not offenders, offenders


def test_the_server_starts_without_importing_ray() -> None:
    """Ray (an optional extra, slow to import) is imported only inside the Ray backend's functions."""
    code = "import sys, mcp_autoresearch.adapters.server; print(sorted(m for m in sys.modules if m.split('.')[0] == 'ray'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_page_alone_starts_without_importing_the_mcp_sdk() -> None:
    """`dashboard --web` (the CLI and the page's app) imports no MCP SDK module: the SDK's import is about 1.3 s
    of CPU, two thirds of the command's start. The page checks Host and Origin itself (`host_rules`)."""
    code = (
        "import sys, mcp_autoresearch.adapters.cli, mcp_autoresearch.readers.web.app\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('mcp', 'mcp_types')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_each_command_freezes_what_it_imported(tmp_path: Path) -> None:
    """The CLI keeps the garbage collector off while a command imports (each full collection walked the growing
    heap again: about a tenth of a server's start) and then freezes what exists and turns it on again
    (`_imports_done`). A command that skipped it would collect through its imports, and at exit walk the lot."""
    root = tmp_path / "proj"
    root.mkdir()
    (root / "train.py").write_text("print('val_bpb: 1.0')\n")
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    code = (
        "import atexit, gc, sys\n"
        "from mcp_autoresearch.adapters.cli import main\n"
        "atexit.register(lambda: print(gc.get_freeze_count(), gc.isenabled(), file=sys.stderr))\n"
        "sys.exit(main(sys.argv[1:]))"
    )
    for command in (["serve"], ["detect"], ["results"], ["dashboard", "--once"]):
        out = subprocess.run(
            [sys.executable, "-c", code, *command, "--project", str(root)],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=120,
        )
        frozen, enabled = out.stderr.strip().splitlines()[-1].split()
        assert int(frozen) > 10_000 and enabled == "True", (command, out.stderr[-2000:])


def test_the_readers_start_without_importing_gitpython() -> None:
    """`status`, `results`, `dashboard` and the web page read the session's files and run git where they need it:
    GitPython's import (about 0.1 s of a 0.6 s command) is the session's, not theirs."""
    code = (
        "import sys, mcp_autoresearch.readers.report, mcp_autoresearch.readers.dashboard\n"
        "import mcp_autoresearch.readers.web.app\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('git', 'gitdb')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


PHASES = {"starting", "running", "finished", "deciding"}


def _phase_writes(tree: ast.AST) -> list[int]:
    """Lines that assign a run's phase: `x.phase = ...` (plain, annotated or augmented), `phase=` in a call."""
    lines = []
    for node in ast.walk(tree):
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = [t for target in node.targets for t in ast.walk(target)]
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
            targets = [node.target]
        lines += [t.lineno for t in targets if isinstance(t, ast.Attribute) and t.attr == "phase"]
        if isinstance(node, ast.Call):
            lines += [node.lineno for k in node.keywords if k.arg == "phase"]
    return lines


def _phase_collections(tree: ast.AST) -> list[int]:
    """Lines that spell a set of phases out (`("starting", "running")`) instead of naming one of `phases`."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)) and len(node.elts) >= 2:
            values = [e.value for e in node.elts if isinstance(e, ast.Constant)]
            if len(values) == len(node.elts) and set(values) <= PHASES:
                lines.append(node.lineno)
    return lines


def test_only_the_state_machine_moves_a_run_between_phases() -> None:
    found = []
    for name, path in _modules().items():
        if name == f"{NAME}.phases":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        found += [f"{name}:{line} assigns a phase" for line in _phase_writes(tree)]
        found += [f"{name}:{line} spells out a set of phases" for line in _phase_collections(tree)]
    assert not found, "use phases.advance and the named sets of phases.py: " + "; ".join(found)


def test_the_servers_own_file_names_are_spelled_in_one_place() -> None:
    """`names.py` defines them; no other module spells one as a string of its own."""
    own = {".autoresearch", "results.tsv", "run.log", "sessions", "autoresearch/", "refs/autoresearch/"}
    offenders = []
    for name, path in _modules().items():
        if name == f"{NAME}.names":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            text = node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None
            if text is not None and (text in own or text.startswith(".autoresearch/")):
                offenders.append(f"{name}:{node.lineno}: {text!r}")
    assert not offenders, offenders


def test_the_ray_worker_applies_the_rules_local_runs_apply() -> None:
    """One implementation of each rule: the wrapper a Ray worker runs imports the modules the local runner uses
    (shipped beside it, standard library only), and measures and grants nothing by code of its own."""
    from mcp_autoresearch.backends import ray_package, ray_wrapper

    shipped = {module.__name__.rsplit(".", 1)[-1] for module in ray_package.SHIPPED}
    assert {"output_size", "output_checks", "write_grants", "confine", "namespaces"} <= shipped
    source = Path(ray_wrapper.__file__).read_text(encoding="utf-8")
    assert "os.walk(" not in source and "fnmatch" not in source and "os.mkdir(" not in source
    for module in ray_package.SHIPPED:
        path = Path(module.__file__ or "")
        for imported in _imports(module.__name__, path):
            top = imported.split(".")[0]
            if top == NAME:  # a shipped module, a name in one, or a sub-package's docstring-only __init__
                parts = imported.split(".")
                ok = (
                    parts[-1] in shipped
                    or (len(parts) > 2 and parts[-2] in shipped)
                    or (imported in _modules() and len(parts) <= 2)
                )
            else:
                ok = top in sys.stdlib_module_names or top in shipped or top == "__future__"
            assert ok, f"{module.__name__} imports {imported}, which a Ray worker does not have"


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for nxt in graph.get(todo.pop(), set()) - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def test_the_readers_never_import_the_session_or_the_lifecycle() -> None:
    """The read-only views (briefing, report, dashboard, plot, web page) read a session's files; they never
    reach the engine that runs one, not even through another module."""
    graph = import_graph()
    readers = [name for name in graph if name.startswith(READERS)]
    assert f"{READERS}.web.data" in readers and f"{READERS}.report" in readers
    offenders = {
        reader: sorted(m for m in _reachable(graph, reader) if m.startswith(ENGINE_OF_A_SESSION))
        for reader in readers
    }
    assert not {reader: found for reader, found in offenders.items() if found}


def test_every_module_lives_in_a_package_by_concept() -> None:
    """The top of the package holds only the vocabulary every layer shares; the rest is in a sub-package."""
    top = {name.removeprefix(f"{NAME}.") for name in _modules() if name.count(".") == 1}
    assert top <= {"__main__", "errors", "models", "statuses", "phases", "terminal_text", "names"} | {
        "sandbox",
        "vcs",
        "records",
        "measure",
        "setup",
        "session",
        "lifecycle",
        "backends",
        "readers",
        "adapters",
        "evaluate",
    }, top


def test_the_code_is_formatted_by_ruff() -> None:
    """`ruff format` is the style: the package, the tests and the benchmarks are as it writes them."""
    root = PACKAGE.parent
    done = subprocess.run(
        [sys.executable, "-m", "ruff", "format", "--check", "mcp_autoresearch", "tests", "bench"],
        cwd=root,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_link_the_repository_holds_leads_somewhere() -> None:
    """A module moved to another folder leaves no dangling link behind (client_examples/scripted_agent.py)."""
    root = PACKAGE.parent
    listed = subprocess.run(["git", "ls-files", "-s"], cwd=root, capture_output=True, text=True)
    if listed.returncode != 0:
        pytest.skip("not a git checkout (an installed package)")
    links = [line.split("\t", 1)[1] for line in listed.stdout.splitlines() if line.startswith("120000")]
    assert "client_examples/scripted_agent.py" in links
    assert not [link for link in links if not (root / link).exists()]


@pytest.mark.slow  # started first, beside the others: the check takes one core for about 17 s
def test_the_package_type_checks() -> None:
    """mypy, as pyproject.toml configures it (the pydantic plugin, no untyped definitions), over the package."""
    done = subprocess.run([sys.executable, "-m", "mypy"], cwd=PACKAGE.parent, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
