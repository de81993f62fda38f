"""The options and environment of every git process the server and its readers start (GitPython's and our own
subprocesses alike); a module of its own, so that a reader that only runs git need not import GitPython."""

from __future__ import annotations

import os

# Options on every call. A run executes with the user's rights and can write .git/config: no setting it plants
# may run a command inside the server's git calls or blind them. (Filter drivers and attributes cannot be
# switched off from here: `gitguard` compares those files after every run, before git runs again.)
GIT_OPTIONS = [
    "core.hooksPath=/dev/null",  # no user hooks: they could edit files or block commits
    "core.fsmonitor=false",  # an fsmonitor hook is a command git runs on every status
    "core.untrackedCache=false",
    "core.commitGraph=false",  # a commit-graph file caches parents: a forged one would rewrite history
    "core.trustctime=true",  # stat checks as strict as git has them: a forged mtime cannot hide an edit
    "core.checkStat=default",
    "core.ignoreStat=false",  # no assume-unchanged for every file
    "submodule.recurse=false",  # never run git (and its config) inside submodules
    "commit.gpgsign=false",  # no signing prompts
    "tag.gpgsign=false",
    "gc.auto=0",  # no background gc daemon: it would outlive the call
    "maintenance.auto=false",
    "advice.graftFileDeprecated=false",  # GIT_GRAFT_FILE=/dev/null would add its hint to every error
    "core.pager=cat",
    "advice.detachedHead=false",
]
# The environment of every call: no replace objects (`git replace` could show the server another tree for the
# same commit), no grafts (`info/grafts` could give a commit other parents; GIT_NO_REPLACE_OBJECTS does not turn
# them off), no system-wide configuration or attributes.
GIT_ENV = {
    "GIT_NO_REPLACE_OBJECTS": "1",
    "GIT_GRAFT_FILE": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_ATTR_NOSYSTEM": "1",
    "GIT_TERMINAL_PROMPT": "0",
    "LC_ALL": "C",
}
