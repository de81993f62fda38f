"""Review 34: what the faster test suite changed. The SDK work the tests do once per process (tests/helpers/
sdk_once.py), `python3` in the tests' commands being the virtual environment's (conftest), ml_dtypes below 0.7
under the bundled evaluator, tests/install-deps.sh, and mypy's check as a test. Real servers, real clients, real
runs, real subprocesses."""

from __future__ import annotations

import inspect
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any

import pytest
from jsonschema import SchemaError
from jsonschema.validators import validator_for
from mcp import Client
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.tools.base import Tool
from pydantic import Field

from mcp_autoresearch.adapters.server import create_server
from mcp_autoresearch.session.workspace import Workspace

from .conftest import PATH_FIRST
from .helpers import sdk_once
from .test_attacks_evaluation import python_reading_user_site
from .test_eval_stage import project as eval_project

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent


# --- The tool cache (sdk_once.build_each_tool_once) -----------------------------------------------------------


def _limited_tool(limit: int) -> Any:
    """A tool of the same code for every server, whose signature is the server's own (a limit from its
    configuration, as `functools.wraps` or a decorator that sets `__signature__` would give it)."""

    def probe(value: int = 0) -> int:
        return value

    probe.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [
            inspect.Parameter(
                "value",
                inspect.Parameter.POSITIONAL_OR_KEYWORD,
                default=0,
                annotation=Annotated[int, Field(le=limit)],
            )
        ],
        return_annotation=int,
    )
    return probe


async def _schema_and_call(server: MCPServer, value: int) -> tuple[dict[str, Any], bool]:
    async with Client(server) as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
        called = await client.call_tool("probe", {"value": value})
    return tools["probe"].input_schema["properties"]["value"], called.is_error


async def test_the_tool_cache_gives_each_server_the_signature_of_its_own_function() -> None:
    """Two servers register functions of the same code, defaults and options whose signatures differ (one allows
    values up to 1, the other up to 100). The cache keyed on the code only: the second server published the first
    one's schema and refused 50, which the SDK (and the product, were it to build a signature per workspace)
    accepts. The tests would then check the cache's tool, not the server's."""
    first, second = MCPServer("first"), MCPServer("second")
    first.tool()(_limited_tool(1))
    second.tool()(_limited_tool(100))
    schema, refused = await _schema_and_call(second, 50)
    assert schema.get("maximum") == 100 and not refused, schema
    schema, refused = await _schema_and_call(first, 50)
    assert schema.get("maximum") == 1 and refused, schema


async def test_the_tool_cache_follows_whether_the_registered_function_is_async() -> None:
    """The same function registered as is in one server and behind an async wrapper (`functools.wraps`, as
    `_engine_errors` makes one) in another: the SDK awaits the wrapper's result only where the wrapper is async;
    a cached `is_async` of the other server's returned a coroutine object as the tool's result."""
    import functools

    def probe(value: int = 0) -> int:
        return value + 1

    @functools.wraps(probe)
    async def wrapped(value: int = 0) -> int:
        return probe(value)

    plain, awaited = MCPServer("plain"), MCPServer("awaited")
    plain.tool()(probe)
    awaited.tool()(wrapped)
    for server in (plain, awaited):
        async with Client(server) as client:
            result = await client.call_tool("probe", {"value": 4})
        assert not result.is_error and result.structured_content == {"result": 5}, result


def _published(server: MCPServer) -> dict[str, Any]:
    return {
        tool.name: (tool.description, tool.parameters, tool.fn_metadata.output_schema, tool.annotations)
        for tool in server._tool_manager.list_tools()
    }


def test_the_products_tools_are_built_by_the_cache_as_the_sdk_builds_them(tmp_path: Path) -> None:
    """The product's eleven tools on two workspaces of different configurations, the second built from the
    cache: each tool is what the SDK builds from that server's own function, and runs that function."""
    roots = [
        eval_project(tmp_path / "a"),
        eval_project(tmp_path / "b", 'isolation = "off"\nmax_experiments = 3\ntimeout = 7\n'),
    ]
    servers = [create_server(Workspace(root)) for root in roots]
    fresh = sdk_once.BUILD_WITHOUT_CACHE
    for server in servers:
        for tool in server._tool_manager.list_tools():
            built = fresh(tool.fn, name=tool.name, description=tool.description, annotations=tool.annotations)
            assert (
                built.parameters,
                built.fn_metadata.output_schema,
                built.is_async,
                built.context_kwarg,
            ) == (
                tool.parameters,
                tool.fn_metadata.output_schema,
                tool.is_async,
                tool.context_kwarg,
            ), tool.name
    first, second = (server._tool_manager.list_tools() for server in servers)
    assert _published(servers[0]) == _published(servers[1])
    assert all(a.fn is not b.fn for a, b in zip(first, second, strict=True))  # each runs its own server's
    assert Tool.from_function is not fresh  # the cache is in force in this process (conftest)


# --- The metaschema check done once (sdk_once.check_each_schema_once) -----------------------------------------


def test_a_schema_that_prints_as_a_valid_one_is_still_checked() -> None:
    """The memo keyed on `json.dumps(schema, default=repr)`: a schema holding a tuple (or a non-string key, or
    an object) prints as a valid schema seen before, and was let through though jsonschema refuses it. (The
    MCP client's schemas come from JSON, so this never reached a client's check; the memo must still never
    change what the check answers.)"""
    check = validator_for({}).check_schema
    check({"type": "object", "required": ["a"]})
    with pytest.raises(SchemaError):
        check({"type": "object", "required": ("a",)})
    with pytest.raises(SchemaError):
        check({"type": "object", "required": ["a"], "minProperties": -1})  # and an invalid one each time
    with pytest.raises(SchemaError):
        check({"type": "object", "required": ["a"], "minProperties": -1})


def test_a_schema_naming_another_draft_is_checked_against_that_draft() -> None:
    """A schema whose "$schema" names draft 7 is checked by draft 7's metaschema (not memoized, and never found
    valid because the default draft's check passed)."""
    draft7 = {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "type": "object",
        "items": [{"type": "string"}],
    }
    validator_for(draft7).check_schema(draft7)  # draft 7: `items` may be a list
    later = dict(draft7, **{"$schema": "https://json-schema.org/draft/2020-12/schema"})
    with pytest.raises(SchemaError):
        validator_for(later).check_schema(later)  # 2020-12: it may not
    with pytest.raises(SchemaError):
        validator_for({}).check_schema({k: v for k, v in later.items() if k != "$schema"})


# --- python3 in the tests' commands -----------------------------------------------------------------------------

PREFIX_OBJECTIVE = """\
import sys
X = 5 if sys.prefix == {prefix!r} else 7
print(X)
"""
PREFIX_SCORER = """\
import sys
answer = float(open(sys.argv[1]).read().split()[0])
print(f"score: {{answer if sys.prefix == {prefix!r} else 9.0:.6f}}")
"""


@pytest.mark.parametrize("isolation", ['isolation = "off"\n', ""], ids=["isolation-off", "isolation-auto"])
async def test_python3_in_a_run_and_in_its_evaluation_is_the_one_conftest_put_first(
    tmp_path: Path, agent_for, isolation: str
) -> None:
    """The runs' `python3` and the evaluation's are the interpreter of the folder conftest put first (the tests'
    virtual environment), also in the runs' private view (which hides /tmp, where a clone's venv may be: the
    view shows the server's PATH folders and sys.prefix again). A run that fell back to another interpreter on
    PATH (pyenv's shim, /usr/bin's) would pass the other tests for a different interpreter than they say."""
    if PATH_FIRST is None:
        pytest.skip("conftest put nothing first on PATH (python3 is the interpreter itself)")
    first = shutil.which("python3", path=PATH_FIRST)
    assert first is not None, PATH_FIRST
    prefix = subprocess.run(
        [first, "-c", "import sys; print(sys.prefix)"], capture_output=True, text=True, check=True
    ).stdout.strip()
    root = eval_project(tmp_path, isolation)
    (root / "objective.py").write_text(PREFIX_OBJECTIVE.format(prefix=prefix))
    (root / "scorer.py").write_text(PREFIX_SCORER.format(prefix=prefix))
    subprocess.run(["git", "commit", "-qam", "probe the interpreter"], cwd=root, check=True)
    async with agent_for(root) as agent:
        await agent.ok("start_session")
        run, _ = await agent.experiment("baseline")
    assert run["status"] == "ok" and run["value"] == 5.0, run


def test_the_usercustomize_attacks_run_a_python3_that_reads_user_site(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The two usercustomize attacks (test_attacks_evaluation.py) hold only if the `python3` they run reads the
    user's site-packages: the venv's does not, so the confined one passed even with nothing confined. The
    positive control: through `python_reading_user_site`, python3 reads it; through conftest's PATH, in a
    venv, it does not (which is why the helper is needed)."""
    probe = [
        "python3",
        "-c",
        "import site, sys; print(bool(site.ENABLE_USER_SITE) and not sys.flags.no_user_site)",
    ]
    if sys.prefix != sys.base_prefix:
        assert subprocess.run(probe, capture_output=True, text=True, check=True).stdout.strip() == "False"
    python_reading_user_site(monkeypatch)
    assert subprocess.run(probe, capture_output=True, text=True, check=True).stdout.strip() == "True"


# --- ml_dtypes below 0.7 under the evaluator --------------------------------------------------------------------


def _exotic_model(dtype: int, logits_type: int) -> Any:
    """The tiny causal model of test_evaluate.py plus a bias held in `dtype`, cast to float and added to the logits
    (or logits of `logits_type`)."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from .test_evaluate import EMBED, PROJECT, VOCAB

    raw = {TensorProto.INT4: 6, TensorProto.FLOAT4E2M1: 6, TensorProto.BFLOAT16: 22}.get(dtype, 11)  # bytes
    bias = helper.make_tensor("bias", dtype, [VOCAB], vals=bytes(range(1, raw + 1)), raw=True)
    nodes = [
        helper.make_node("Gather", ["embed", "tokens"], ["embedded"]),
        helper.make_node("CumSum", ["embedded", "axis"], ["mixed"]),
        helper.make_node("MatMul", ["mixed", "project"], ["projected"]),
        helper.make_node("Cast", ["bias"], ["bias_f"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["projected", "bias_f"], ["summed"]),
        helper.make_node("Cast", ["summed"], ["logits"], to=logits_type),
    ]
    graph = helper.make_graph(
        nodes,
        "exotic",
        [helper.make_tensor_value_info("tokens", TensorProto.INT64, ["batch", "time"])],
        [helper.make_tensor_value_info("logits", logits_type, ["batch", "time", VOCAB])],
        initializer=[
            numpy_helper.from_array(EMBED, "embed"),
            numpy_helper.from_array(PROJECT, "project"),
            numpy_helper.from_array(np.array(1, dtype=np.int64), "axis"),
            bias,
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])
    model.ir_version = 11
    return model


EXOTIC = ["BFLOAT16", "FLOAT8E4M3FN", "FLOAT8E5M2", "INT4", "FLOAT4E2M1"]


@pytest.mark.parametrize("logits", ["FLOAT", "BFLOAT16"])
@pytest.mark.parametrize("dtype", EXOTIC)
def test_a_model_with_weights_of_an_ml_dtypes_type_gets_a_value_or_a_refusal(
    tmp_path: Path, dtype: str, logits: str
) -> None:
    """ml_dtypes defines these types for NumPy; onnx imports it (0.6 here, pinned below 0.7). The evaluator never
    turns a model's tensors into NumPy arrays (the checker and onnxruntime read them), so the ml_dtypes release
    cannot change what it answers: a value for weights of any type onnxruntime reads, a one-line metric_error
    otherwise (bfloat16 logits are refused by name), never a traceback and never a hang."""
    import numpy as np
    from onnx import TensorProto

    from .test_evaluate import ROWS, SEQ, TOKEN_BYTES, VOCAB, evaluate, save

    rows = np.random.default_rng(3).integers(0, VOCAB, size=(ROWS, SEQ + 1)).astype(np.uint16)
    rows[:, 0] = 9
    np.savez(tmp_path / "val.npz", rows=rows, token_bytes=TOKEN_BYTES)
    model = save(
        _exotic_model(getattr(TensorProto, dtype), getattr(TensorProto, logits)), tmp_path / "m.onnx"
    )
    result = evaluate(model, tmp_path / "val.npz")
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stdout.splitlines()[-1] if result.stdout else ""
    if logits == "BFLOAT16":
        assert result.returncode == 3 and last.startswith("metric_error: "), result.stdout + result.stderr
        assert "float logits" in last, last
    else:
        assert (result.returncode, last.split(": ")[0]) in ((0, "val_bpb"), (3, "metric_error")), (
            result.stdout + result.stderr[-2000:]
        )


# --- tests/install-deps.sh ----------------------------------------------------------------------------------------

TOOLS = ("bash", "dirname", "mkdir", "env", "cat", "sleep", "touch", "chmod")


def _install_deps_tree(tmp_path: Path, stubs: dict[str, str]) -> tuple[Path, dict[str, str]]:
    """A copy of install-deps.sh in a tree of its own (it installs into its tree's .ci/), and a PATH holding the
    shell's tools and `stubs` only (programs that record their arguments): nothing outside is installed."""
    tree = tmp_path / "repo"
    (tree / "tests").mkdir(parents=True)
    shutil.copy(ROOT / "tests" / "install-deps.sh", tree / "tests" / "install-deps.sh")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in TOOLS:
        found = shutil.which(tool)
        assert found, tool
        (bin_dir / tool).symlink_to(found)
    for name, body in stubs.items():
        (bin_dir / name).write_text(
            f'#!{shutil.which("bash")}\necho "{name} $*" >> {tmp_path}/calls\n{body}\n'
        )
        (bin_dir / name).chmod(0o755)
    return tree, {"PATH": str(bin_dir), "HOME": str(tmp_path)}


def _install_deps(tree: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [shutil.which("bash") or "bash", str(tree / "tests" / "install-deps.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


NPM_OK = (
    "mkdir -p node_modules/.bin node_modules/sdk-1.22.0 node_modules/sdk-latest\n"
    + "touch node_modules/.bin/mcp-inspector && chmod +x node_modules/.bin/mcp-inspector"
)


def test_install_deps_without_npm_and_a_failing_apt_says_what_is_missing(tmp_path: Path) -> None:
    tree, env = _install_deps_tree(tmp_path, {"apt-get": "exit 100", "id": "echo 0"})
    done = _install_deps(tree, env)
    assert done.returncode == 0, done.stderr
    for package in ("chromium", "bubblewrap", "nodejs", "npm"):
        assert f"could not install {package}" in done.stdout, done.stdout
    assert "no npm: the npm clients are missing" in done.stdout, done.stdout


def test_install_deps_as_a_user_without_sudo_says_what_is_missing(tmp_path: Path) -> None:
    tree, env = _install_deps_tree(tmp_path, {"apt-get": "exit 0", "id": "echo 1000"})
    done = _install_deps(tree, env)
    assert done.returncode == 0, done.stderr
    assert "could not install chromium" in done.stdout and "no npm" in done.stdout, done.stdout
    assert not (tmp_path / "calls").exists() or "apt-get" not in (tmp_path / "calls").read_text()


def test_install_deps_names_the_one_npm_install_that_failed_and_installs_once(tmp_path: Path) -> None:
    """npm present: the inspector's install fails, the SDK's succeeds; each said, exit 0. Run again with both
    installed, it calls neither apt-get nor npm and says nothing."""
    npm = 'case "$*" in *inspector*) exit 1;; esac\n' + NPM_OK
    tree, env = _install_deps_tree(
        tmp_path, {"apt-get": "exit 0", "id": "echo 0", "npm": npm, "chromium": "", "bwrap": ""}
    )
    done = _install_deps(tree, env)
    assert done.returncode == 0, done.stderr
    assert "could not install @modelcontextprotocol/inspector" in done.stdout, done.stdout
    assert "@modelcontextprotocol/sdk" not in done.stdout, done.stdout
    assert (tree / ".ci/tsclient/node_modules/sdk-latest").is_dir()
    (tree / ".ci/inspector/node_modules/.bin").mkdir(parents=True, exist_ok=True)
    (tree / ".ci/inspector/node_modules/.bin/mcp-inspector").write_text("")
    (tree / ".ci/inspector/node_modules/.bin/mcp-inspector").chmod(0o755)
    (tmp_path / "calls").unlink()
    again = _install_deps(tree, env)
    assert again.returncode == 0 and again.stdout == "", again.stdout + again.stderr
    assert not (tmp_path / "calls").exists(), (tmp_path / "calls").read_text()


# --- mypy's check as a test ---------------------------------------------------------------------------------------


def test_the_type_check_fails_without_mypy(tmp_path: Path) -> None:
    """Without mypy importable, test_the_package_type_checks fails (it does not skip), and it checks the
    repository's package (pyproject.toml's [tool.mypy] beside the package the tests import)."""
    (tmp_path / "mypy.py").write_text("raise ImportError('mypy is not installed here')\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:xdist",
            "tests/test_structure.py::test_the_package_type_checks",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1 and "1 failed" in done.stdout, done.stdout[-2000:]
    import mcp_autoresearch

    assert (Path(mcp_autoresearch.__file__).parent.parent / "pyproject.toml").is_file()
