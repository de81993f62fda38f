"""Whose name the server's own commits and reflog lines carry: the user's git identity, as git itself takes it and
writes it, read once at each session's start; the neutral one where nothing gives a name or an email."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

FALLBACK_IDENTITY = {
    "GIT_AUTHOR_NAME": "autoresearch",
    "GIT_AUTHOR_EMAIL": "autoresearch@localhost",
    "GIT_COMMITTER_NAME": "autoresearch",
    "GIT_COMMITTER_EMAIL": "autoresearch@localhost",
}
# The keys `git config -z --get-regexp` lists for `Identity`: one git process gives both.
USER_KEYS = r"^user\.(name|email)$"
_CRUD = frozenset(".,:;<>\"\\'")  # git's `crud()`, with every byte up to the space


def ident_part(text: str) -> str:
    """A name or email as git writes it into an identity line (`strbuf_addstr_without_crud`): bytes that are not
    UTF-8 (kept by `surrogateescape`) read as Latin-1, as git converts them; trimmed of spaces, control characters
    and `.,:;<>"'\\` at both ends; without newline, `<` or `>` inside, which delimit the line's fields (a value
    holding them would otherwise add lines to our commit objects)."""
    text = "".join(chr(ord(c) - 0xDC00) if "\udc80" <= c <= "\udcff" else c for c in text)
    start, end = 0, len(text)
    while start < end and (text[start] <= " " or text[start] in _CRUD):
        start += 1
    while end > start and (text[end - 1] <= " " or text[end - 1] in _CRUD):
        end -= 1
    return "".join(c for c in text[start:end] if c not in "\n<>")


class Identity:
    """The identity of one repository. `listed` gives `user.name`/`user.email` as `git config -z --get-regexp`
    lists them (one git process, run at most once per `read_again`)."""

    def __init__(self, listed: Callable[[], str]) -> None:
        self._listed = listed
        self._user: dict[str, str] | None = None
        self._lines: dict[str, str] = {}  # `signature`'s, by role

    def read_again(self) -> dict[str, str]:
        """Forget what was read (a session starts); the neutral identity's variables for git's own commits, only
        where neither the environment nor the configuration gives a value."""
        self._user = None
        self._lines = {}
        return {var: value for var, value in FALLBACK_IDENTITY.items() if not self._given(var)}

    def signature(self, role: str = "COMMITTER") -> str:
        """`Name <email> <unix time> <tz offset>` of the author or committer (`role`): the user's, else the
        neutral one."""
        if role not in self._lines:
            name = self._given(f"GIT_{role}_NAME") or FALLBACK_IDENTITY[f"GIT_{role}_NAME"]
            email = self._given(f"GIT_{role}_EMAIL") or FALLBACK_IDENTITY[f"GIT_{role}_EMAIL"]
            self._lines[role] = f"{name} <{email}>"
        offset = -time.timezone if not time.localtime().tm_isdst else -time.altzone
        sign = "+" if offset >= 0 else "-"
        hours, minutes = divmod(abs(offset) // 60, 60)
        return f"{self._lines[role]} {int(time.time())} {sign}{hours:02d}{minutes:02d}"

    def _given(self, var: str) -> str:
        """What git takes for GIT_{AUTHOR,COMMITTER}_{NAME,EMAIL}, as it writes it (`ident_part`): the environment,
        then `user.name`/`user.email`, then (an email) $EMAIL; empty where none gives one."""
        if self._user is None:  # the keys set, each its last value (as `git config KEY` answers)
            self._user = dict(entry.partition("\n")[::2] for entry in self._listed().split("\0") if entry)
        if var.endswith("_NAME"):
            given = [os.environ.get(var), self._user.get("user.name")]
        else:
            given = [os.environ.get(var), self._user.get("user.email"), os.environ.get("EMAIL")]
        return next((part for part in map(ident_part, filter(None, given)) if part), "")
