"""The one project a server is bound to: its configuration, its lock, and its session (loaded lazily).

The MCP server and the CLI talk to a `Workspace`; the loop's rules live in `session.Session`.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

from ..errors import ConfigError, SessionError
from ..measure.sequential import keep_rule_summary
from ..models import StartResult
from ..readers.briefing import stored_briefing
from ..records.state import ProjectLock, SessionState, load_state
from ..sandbox import run_tmpdirs
from ..sandbox.ownprocess import close_own_proc
from ..setup.project import Project, ProjectInfo, load_project
from ..vcs.repo import Repo
from .session import Session, current_session

log = logging.getLogger("mcp_autoresearch")


class Workspace:
    """The one project a server is bound to: its configuration, its lock, and its session (loaded lazily)."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        overrides: dict[str, Any] | None = None,
        config_file: str | os.PathLike[str] | None = None,
    ) -> None:
        close_own_proc()  # this process runs the session: its /proc files are closed to the runs (same user)
        for path in run_tmpdirs.sweep():  # the runs' TMPDIRs of servers killed before they could remove them
            log.info("removed %s, left by a server that is gone", path)
        self.overrides = overrides or {}
        self.config_file = config_file
        # What the user typed fails at once (the CLI exits 2). A bad configuration *file* must not stop the
        # server: the client would only see "failed to connect". It is reported by detect_project and by every
        # tool that needs the configuration, and a corrected file is read on the next call.
        if config_file is not None and not Path(config_file).expanduser().is_file():
            raise ConfigError(f"--config {config_file}: no such file")
        self.root = load_project(root, self.overrides, config_file, files=False).root
        try:
            self.load()
        except ConfigError as exc:
            log.warning("%s (serving anyway: detect_project reports it until the file is fixed)", exc)
        self._lock = threading.RLock()
        self._project_lock = ProjectLock(self.root)
        self._session: Session | None = None
        self._shutdowns = 0  # times `shutdown` ran: a start_session that waited through one starts nothing

    def load(self) -> Project:
        return load_project(self.root, self.overrides, self.config_file)

    def detect(self) -> ProjectInfo:
        project = self.load()
        info = project.info
        session = self._session
        state: SessionState | None = session.state if session is not None else None
        config = session.config if session is not None else project.config
        if (
            session is None
        ):  # a server that has not opened the session yet: its files, read only (as `briefing`)
            try:
                tag = current_session(self.root)
                state = load_state(self.root, tag) if tag is not None else None
            except SessionError as exc:  # the project is still described; opening the session will refuse
                info.warnings.append(f"the current session: {exc}")
        if state is not None and state.keep_rule:  # the rule the baseline's noise chose, not how it will be
            info.keep_rule = f"session {state.tag}: " + keep_rule_summary(state, config)
        return info

    @property
    def session(self) -> Session:
        """The active session; after a server restart, the one whose branch is checked out is resumed."""
        with self._lock:
            if self._session is None:
                tag = current_session(self.root)
                if tag is None:
                    self.load()  # a broken configuration file is the first thing to fix
                    raise SessionError("no session is active: call start_session first")
                self.start_session(tag)
            assert self._session is not None
            return self._session

    def briefing(self) -> str | None:
        """The current session's briefing, without opening it when this server has not yet (a prompt must not
        switch branches or take the project's lock); None when no session branch is checked out."""
        session = self._session
        if session is not None:
            return session.briefing()
        tag = current_session(self.root)
        return stored_briefing(self.root, tag) if tag is not None else None

    def start_session(self, tag: str | None = None, budget: dict[str, Any] | None = None) -> StartResult:
        """Open (create or resume) a session; `budget`: start_session's max_experiments and max_hours. The
        session open now is held meanwhile (its lock): a step of it under way (an edit, a run being started) ends
        before its runs are looked at, so a run it starts is seen, and refuses the switch. That wait is made
        without the workspace's lock, which every other call takes first: a step of minutes (a one-call
        experiment) held every other call of the agent with it; the server's shutdown may go first meanwhile, and
        then nothing is started."""
        shutdowns = self._shutdowns
        while True:
            with self._lock:
                if self._shutdowns != shutdowns:
                    raise SessionError(
                        "the server was stopped while start_session waited for a step of the open session to "
                        "end: no session was started or resumed; call start_session again once it is back"
                    )
                current = self._session
                if current is None or current.lock.acquire(blocking=False):
                    try:
                        return self._start_session(tag, budget)
                    finally:
                        if current is not None:
                            current.lock.release()
            with current.lock:  # the step under way ends; then the workspace is looked at again
                pass

    def _start_session(self, tag: str | None, budget: dict[str, Any] | None) -> StartResult:
        if tag is None:
            tag = current_session(self.root)  # None: today's session (see Session.open)
        if self._session is not None:
            if tag is None or tag == self._session.state.tag:
                self._session.settle_budget(budget or {})
                return self._session.describe(resumed=True)
            pending = self._session.state.pending or next(iter(self._session.state.inflight), None)
            if pending is not None:
                raise SessionError(
                    f"run {pending.run_id} of session '{self._session.state.tag}' is {pending.phase}; "
                    f"finish it (wait_experiment, commit_or_reset) before starting another session"
                )
        project = self.load()
        config = project.config
        missing = [k for k in ("target_file", "run_command", "metric_name") if getattr(config, k) is None]
        if missing:
            raise ConfigError(f"cannot start: {', '.join(missing)} unknown. {project.info.message}")
        repo = Repo(self.root)
        if not repo.has_commits():
            raise SessionError(
                "the repository has no commits yet; a person must commit the project first (git add, git commit)"
            )
        self._project_lock.acquire()
        session = Session.open(self.root, project, repo, tag, budget)
        if self._session is not None:  # a call that took it before the switch is refused, never run there
            self._session.replaced_by = (
                f"session '{self._session.state.tag}' was left for session '{session.state.tag}' (start_session) "
                "while this call was made; nothing was done: call again, it goes to the current session"
            )
        self._session = session
        return session.describe(resumed=session.resumed)

    def interrupt(self) -> None:
        """The server is leaving (SIGTERM): a stage running inside a call is cancelled at once, so that the
        call ends and `shutdown` can run; no lock is taken (the call holds them)."""
        session = self._session
        if session is not None:
            session.interrupt()

    def shutdown(self) -> None:
        """Stop a run in flight (its tree is killed and it is logged as a crash) and release the lock."""
        with self._lock:
            self._shutdowns += 1
            if self._session is not None:
                self._session.shutdown()
            self._project_lock.release()
