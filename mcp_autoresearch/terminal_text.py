"""Text from the agent (descriptions, notes, the diffs of its edits) and from runs, made safe to print.

A terminal acts on control characters: ESC starts CSI sequences (erase the line, move the cursor up) and OSC
ones (set the window title, write the clipboard with OSC 52), BEL rings, CR returns to the start of the line,
the C1 controls U+0080-U+009F are CSI, OSC and others in one character, and the bidirectional overrides and
isolates (U+202A-U+202E, U+2066-U+2069, with U+200E, U+200F and U+061C) reorder what is shown, so that a line
can read differently from what it holds. `printable` writes every one of them as a visible escape (`\\x1b`,
`\\u202e`): nothing is executed and nothing is hidden. It runs where text is accepted (so what is stored is
already safe) and again where it is printed (text stored before this rule, or written by someone else). It
never touches the target's content: only what is shown of it.
"""

from __future__ import annotations

import re

# Every C0 control but tab and newline, DEL, every C1 control, and the bidirectional formatting characters.
# Lone surrogates too: text git gives (branch names, subjects) is decoded with surrogateescape, a byte that is not
# UTF-8 becoming U+DC80-U+DCFF, which printing would either write raw or fail on (UnicodeEncodeError).
_UNSAFE = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_UNSAFE_IN_LINES = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    if 0xDC80 <= code <= 0xDCFF:  # a byte surrogateescape kept: shown as that byte
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str, lines: bool = False, mark: str | None = None) -> str:
    """`text` with every character a terminal would act on written as a visible escape (or as `mark`: a run's
    binary output is shown as U+FFFD, one character each, so a bounded tail still shows its text); tabs stay,
    and newlines too when `lines` (notes, diffs), else they are escaped like the rest."""
    return (_UNSAFE_IN_LINES if lines else _UNSAFE).sub(_escape if mark is None else mark, text)
