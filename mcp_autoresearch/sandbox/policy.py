"""What a run may write and see, and how it is held to it: the server's side of the confinement.

`confine.py` (the keeper), `landlock.py` and `namespaces.py` are the mechanism; this module is the policy: which
layers confine runs here (`probe_isolation`: Landlock's ABI, and whether a keeper can build the private view, by
building one once), what the keeper is told (`keeper_spec`: the view, the `network` setting, the paths it must
keep showing), which paths a run may write (`writable_paths`: the configured `writable` entries, a private
temporary directory, `/dev/shm` and the device files a GPU run needs), which entries are refused because they
would open the rules to the run (`check_writable`), and the advice given when a run failed on a denied write,
for want of the network or of a Maven artifact (`denied_write_hint`, `network_hint`, `maven_hint`). It runs
nothing itself but that one probe.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from ..names import RESULTS_TSV, RUN_LOG, SERVER_BIN, STATE_DIR
from . import confine, landlock
from .write_grants import granted_paths

# Devices any run may write (the terminal-like ones tools expect) and those a GPU run needs; directories below
# /dev that are per-process scratch space.

SERVER_OWN = (".git", STATE_DIR)
# Inside the server's folder, only these build-output folders may be opened to a run (Go's default binary).
SERVER_OWN_WRITABLE = (SERVER_BIN,)


@dataclass(frozen=True)
class Isolation:
    """How runs are confined on this machine, under the configured `isolation` setting."""

    setting: str  # auto | required | off
    abi: int | None  # the Landlock ABI in use, None when runs are not confined
    reason: str | None  # why they are not
    view_reason: str | None = "not probed"  # why runs get no private view (namespaces); None when they do
    network: str = "on"  # the `network` setting: "off" cuts runs off (only within a view)

    @property
    def confined(self) -> bool:
        return self.abi is not None

    @property
    def namespaces(self) -> bool:
        """Each run gets its private view (`namespaces.py`) around the Landlock rules."""
        return self.view_reason is None

    @property
    def unconfined(self) -> bool:
        """Nothing holds a run's writes here: neither Landlock nor the private view (`isolation = "off"` too)."""
        return not (self.confined or self.namespaces)

    @property
    def complete(self) -> bool:
        """Every layer `isolation = "required"` requires: Landlock and the private view."""
        return self.confined and self.namespaces

    def missing(self) -> str:
        """What `required` misses here, in words (empty when nothing)."""
        gaps = [f"no Landlock: {self.reason}"] if not self.confined else []
        return "; ".join(gaps + ([f"no namespaces: {self.view_reason}"] if not self.namespaces else []))

    def describe(self) -> str:
        """One line: the layers in force, e.g. `namespaces + landlock (ABI 7)`, or what is missing and why."""
        if self.setting == "off":
            return f"none: {self.reason}"
        layers = (["namespaces"] if self.namespaces else []) + (
            [f"landlock (ABI {self.abi})"] if self.confined else []
        )
        line = " + ".join(layers) or "none"
        if not self.confined:
            line += f"; no landlock: {self.reason}"
        if not self.namespaces:
            line += f"; no namespaces: {self.view_reason}"
        if self.network == "off":
            line += "; network off" if self.namespaces else "; network not cut off (needs namespaces)"
        return line


@functools.lru_cache(maxsize=1)
def _kernel_abi() -> tuple[int | None, str | None]:
    try:
        return landlock.probe(), None
    except landlock.ConfineError as exc:
        return None, str(exc)
    except OSError as exc:  # no libc to call (an unusual platform)
        return None, f"the Landlock syscalls cannot be called ({exc})"


@functools.lru_cache(maxsize=1)
def _view_problem() -> str | None:
    """Why this machine cannot give runs a private view (None when it can): a real keeper builds one, network
    off, around `true`, once per server process (where user namespaces are disabled, restricted by AppArmor,
    or refused by a container, or where the server runs under a filter that refuses them, as tests do)."""
    if not keeper_available():
        return f"namespaces are a Linux feature (this is {sys.platform})"
    with tempfile.TemporaryDirectory(prefix="autoresearch-probe-") as scratch:
        spec: confine.KeeperSpec = {"view": True, "network": False, "write": [scratch], "parent": os.getpid()}
        try:
            done = subprocess.run(
                confine.command_line(sys.executable, spec, ["/bin/true"]),
                cwd=scratch,
                capture_output=True,
                text=True,
                timeout=60,
                stdin=subprocess.DEVNULL,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"the probe could not run ({exc})"
    if done.returncode == 0:
        return None
    failure = setup_failure(done.stderr)
    return (
        failure.removeprefix("namespaces: ")
        if failure
        else done.stderr.strip()[-200:] or f"the probe failed ({done.returncode})"
    )


def probe_isolation(setting: str = "auto", network: str = "on") -> Isolation:
    if setting == "off":
        return Isolation(setting, None, 'isolation = "off" in the configuration', "isolation is off", network)
    abi, reason = _kernel_abi()
    return Isolation(setting, abi, reason, _view_problem(), network)


def keeper_available() -> bool:
    """The keeper (subreaper, parent-death signal) needs Linux; elsewhere runs start as plain process groups."""
    return sys.platform.startswith("linux")


def _expand(root: Path, entry: str) -> Path:
    path = Path(os.path.expanduser(entry))
    return Path(os.path.normpath(path if path.is_absolute() else root / path))


def _contains(outer: Path, inner: Path) -> bool:
    return outer == inner or outer in inner.parents


def check_writable(
    root: Path, entries: list[str], protected: dict[str, str], jsonl_path: str, key: str = "writable"
) -> list[str]:
    """Refuse `writable` entries that would let a run change what the rules protect: the project itself, the
    target or a read-only file (`protected`: path -> what it is), `.git`, the server's own files, or a link that
    leads there. Returns the entries as given."""
    root = root.resolve()
    guarded = {root / rel: what for rel, what in protected.items()}
    guarded[root / ".git"] = "the git repository"
    guarded[root / jsonl_path] = "the server's JSONL log"
    for name in (RESULTS_TSV, RUN_LOG):
        guarded[root / name] = f"the server's {name}"
    own = root / STATE_DIR
    for entry in entries:
        lexical = _expand(root, entry)
        try:
            resolved = lexical.resolve()
        except (OSError, RuntimeError):
            resolved = lexical
        if _contains(root, lexical) and not _contains(root, resolved):
            raise ConfigError(
                f"{key} entry '{entry}' is a link that leads out of the project (to {resolved}); "
                "name the real directory instead"
            )
        for path in {lexical, resolved}:
            if _contains(path, own) or (
                _contains(own, path) and not any(_contains(root / ok, path) for ok in SERVER_OWN_WRITABLE)
            ):
                raise ConfigError(
                    f"{key} entry '{entry}' is (or contains) the server's own folder .autoresearch/; "
                    "a run must not write the session's state or logs"
                )
            for protected_path, what in guarded.items():
                if _contains(path, protected_path) or _contains(protected_path, path):
                    raise ConfigError(
                        f"{key} entry '{entry}' would let a run change {what} ({protected_path}); "
                        "list only build output and cache directories"
                    )
    return entries


def writable_paths(root: Path, entries: list[str], tmpdir: str | None) -> list[str]:
    """Every path a run may write beneath: the configured entries, the run's private temporary directory, and
    devices (`write_grants`, the rule a Ray worker applies too)."""
    return granted_paths(str(root), entries, tmpdir)


def keeper_command(
    isolation: Isolation,
    writable: list[str],
    argv: list[str],
    grace_s: float,
    reads: list[str] | None = None,
    hide: list[str] | None = None,
    records: list[str] | None = None,
) -> list[str]:
    """The argv that runs `argv` under the keeper: confined when Landlock or the view is in use, supervised
    either way."""
    spec: confine.KeeperSpec = {
        **keeper_spec(isolation, writable, grace_s, reads, hide, records),
        "parent": os.getpid(),
    }
    return confine.command_line(sys.executable, spec, argv)


def keeper_spec(
    isolation: Isolation,
    writable: list[str],
    grace_s: float,
    reads: list[str] | None = None,
    hide: list[str] | None = None,
    records: list[str] | None = None,
) -> confine.KeeperSpec:
    """What the keeper is told: Landlock and its writable paths, the private view (with `reads`, paths it must
    keep showing, `hide`, paths it covers: the `hidden` data, and `records`, files it shows empty and read-only:
    the server's), the network, the grace."""
    spec: confine.KeeperSpec = {"landlock": isolation.confined, "grace": grace_s}
    spec["write"] = writable if (isolation.confined or isolation.namespaces) else []
    if isolation.namespaces:
        spec["view"] = True
        spec["network"] = isolation.network != "off"
        spec["read"] = view_reads() + list(reads or [])
        if hide:
            spec["hide"] = list(hide)
        if records:
            spec["records"] = list(records)
    return spec


def linked_inputs(root: Path, shared_inputs: list[str]) -> list[str]:
    """Where the shared inputs of a slot checkout lead (they are links to the project's own copies): the view
    shows those places too, read-only, where a hidden directory covers them."""
    found = []
    for entry in shared_inputs:
        path = root / entry
        if path.is_symlink():
            found.append(os.path.realpath(path))
    return found


HIDDEN_ROOTS = ("/tmp", "/var/tmp", "/run", "/var/run", "/dev/shm")


def view_reads() -> list[str]:
    """What a run reads that a hidden directory may cover (the view shows it again, read-only, only there): the
    resolver's configuration where it is a link into /run (systemd-resolved), a home directory beneath /tmp (as
    in some containers and CI jobs), the server's own Python environment and the folders of the user's PATH (a
    virtual environment beneath /tmp whose python the run command names). Never a hidden directory itself."""
    real = os.path.realpath("/etc/resolv.conf")
    home = os.path.expanduser("~")
    found = ([real] if real != "/etc/resolv.conf" else []) + ([home] if home.startswith("/") else [])
    found += [sys.prefix, os.path.dirname(os.path.abspath(sys.executable))]
    found += [entry for entry in os.environ.get("PATH", "").split(os.pathsep) if entry.startswith("/")]
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    roots = {os.path.normpath(root) for root in (*HIDDEN_ROOTS, runtime) if root}
    seen: list[str] = []
    for path in map(os.path.normpath, found):
        if path not in seen and path != "/" and path not in roots:
            seen.append(path)
    return seen


def setup_failure(text: str) -> str | None:
    """The keeper's own message when it could not confine the run (it then runs nothing)."""
    for line in text.splitlines()[:5]:
        if line.startswith(confine.MARK):
            return line[len(confine.MARK) :].strip()
    return None


_DENIED = re.compile(r"(Permission denied|Read-only file system|EACCES|EROFS|Operation not permitted)", re.I)
_QUOTED = re.compile(r"""['"`‘]((?:/|\./|\.\./|~/)?[^'"`’\n]{1,300})['"`’]""")
# `ld: cannot open output file bench: ...` names the file after "output file".
_UNQUOTED = re.compile(
    r"(?:cannot (?:create|touch|open|remove|mkdir)(?: output)?(?: file)?|open|mkdir|unlink|rename) (/?[\w.\-/]+)"
)
# Node prints the error object after the message: `path: 'dist'` (and `dest:` for a rename or link).
_NODE_PATH = re.compile(r"""^\s*(?:path|dest): ['"]([^'"\n]{1,300})['"]""", re.M)
_ERRNO_NAME = re.compile(r"E[A-Z]{2,}")  # a quoted error code (`code: 'EACCES'`) is no path


def _named_path(line: str) -> str | None:
    for match in _QUOTED.finditer(line):
        if not _ERRNO_NAME.fullmatch(match.group(1)):
            return match.group(1)
    found = _UNQUOTED.search(line)
    return found.group(1) if found else None


def denied_write_hint(output_tail: str) -> str | None:
    """When a confined run's output shows a denied write, say once, plainly, which path (where the output
    names one: the message, Node's error object, or any denial line) and which setting allows it."""
    lines = [line for line in output_tail.splitlines() if _DENIED.search(line)]
    if not lines:
        return None
    node = _NODE_PATH.findall(output_tail)
    path = node[-1] if node else next((p for p in map(_named_path, reversed(lines)) if p), None)
    where = f" ({path})" if path else " (the output names no path: look for the file the tool writes)"
    return (
        f"the run was refused a write{where}: runs may write only the paths listed in `writable` and "
        "`persistent` (plus a private TMPDIR and a fresh /tmp). If it must write there, add the directory to "
        "`writable` (a build output) or, for a cache to keep from run to run, to `persistent`, in the "
        "configuration and start a new session; a tool that downloads dependencies during the build can have "
        "them fetched before the session instead"
    )


# Maven failing to add a plugin or a dependency to its local repository, which runs read but never write.
_MAVEN_MISSING = re.compile(
    r"(Could not transfer artifact|could not be resolved|Could not resolve dependencies|has not been downloaded "
    r"from it before|Failed to read artifact descriptor)"
)


def maven_hint(output_tail: str) -> str | None:
    """When Maven failed for want of an artifact its local repository (~/.m2) lacks: say how to fetch it."""
    maven = "[ERROR]" in output_tail or ".m2/repository" in output_tail
    if not maven or not _MAVEN_MISSING.search(output_tail):
        return None
    return (
        "Maven lacks a plugin or dependency in its local repository (~/.m2), which runs may read but never "
        "write (its plugins run in every build), so a run cannot download it: run the run command once yourself "
        "before the session (or `mvn dependency:go-offline`), then run again; adding -o (offline) to run_command "
        "makes Maven say at once which artifact is missing"
    )


_OFFLINE = re.compile(
    r"(Temporary failure in name resolution|Name or service not known|Could not resolve host|getaddrinfo "
    r"(?:ENOTFOUND|EAI_AGAIN)|Network is unreachable|ENETUNREACH|nodename nor servname)",
    re.I,
)


def network_hint(output_tail: str) -> str | None:
    """When a run cut off from the network failed on it, say which setting gives it the network."""
    if not _OFFLINE.search(output_tail):
        return None
    return (
        'the run has no network (network = "off"): fetch what it needs before the session (npm install, '
        'cargo fetch, go mod download, uv sync), or set network = "on" in the configuration and start a new session'
    )
