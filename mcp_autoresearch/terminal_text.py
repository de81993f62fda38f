"""Text from the agent (descriptions, notes, the diffs of its edits) and from runs, made safe to print.

A terminal acts on control characters: ESC starts CSI sequences (erase the line, move the cursor up) and OSC
ones (set the window title, write the clipboard with OSC 52), BEL rings, CR returns to the start of the line,
the C1 controls U+0080-U+009F are CSI, OSC and others in one character, and the bidirectional overrides and
isolates (U+202A-U+202E, U+2066-U+2069, with U+200E, U+200F and U+061C) reorder what is shown, so that a line
can read differently from what it holds. Characters that show as nothing hide text in plain sight: the zero-width
space and joiners' kin (U+200B, U+2060, U+FEFF, the soft hyphen), the line and paragraph separators, and the tag
characters U+E0000-U+E007F, which spell out a whole sentence no person sees and an LLM reads (a description
"lower LR" carrying "ignore the rules" to the next agent's briefing). `printable` writes every one of them as a
visible escape (`\\x1b`, `\\u202e`, `\\U000e0069`): nothing is executed and nothing is hidden. The zero-width
joiner and non-joiner and the variation selectors U+FE00-U+FE0F stay: emoji and several scripts need them. It
runs where text is accepted (so what is stored is already safe) and again where it is printed (text stored before
this rule, or written by someone else). It never touches the target's content: only what is shown of it.
"""

from __future__ import annotations

import re
import shlex

# Every C0 control but tab and newline, DEL, every C1 control, and the bidirectional formatting characters.
# Lone surrogates too: text git gives (branch names, subjects) is decoded with surrogateescape, a byte that is not
# UTF-8 becoming U+DC80-U+DCFF, which printing would either write raw or fail on (UnicodeEncodeError).
# And what shows as nothing (see above): format characters, fillers, the separators, the tags.
_INVISIBLE = (
    "\u00ad\u034f\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b\u2028\u2029\u2060-\u2064\u206a-\u206f\u3164"
    "\ufeff\uffa0\ufff9-\ufffb\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0000-\U000e007f"
    "\U000e0100-\U000e01ef"
)
_CONTROLS = "\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff" + _INVISIBLE
_UNSAFE = re.compile("[\x00-\x08\x0a-\x1f" + _CONTROLS + "]")
_UNSAFE_IN_LINES = re.compile("[\x00-\x08\x0b-\x1f" + _CONTROLS + "]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    if 0xDC80 <= code <= 0xDCFF:  # a byte surrogateescape kept: shown as that byte
        return f"\\x{code - 0xDC00:02x}"
    if code > 0xFFFF:
        return f"\\U{code:08x}"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str, lines: bool = False, mark: str | None = None) -> str:
    """`text` with every character a terminal would act on written as a visible escape (or as `mark`: a run's
    binary output is shown as U+FFFD, one character each, so a bounded tail still shows its text); tabs stay,
    and newlines too when `lines` (notes, diffs), else they are escaped like the rest."""
    return (_UNSAFE_IN_LINES if lines else _UNSAFE).sub(_escape if mark is None else mark, text)


def shell_word(text: str) -> str:
    """`text` as one word that a shell (bash, zsh) reads back as `text` when a person pastes a hint holding it: a
    branch name git accepts may hold `(`, `'`, `;` or `$`. Quoted where it needs to be; one that `printable`
    would escape (bytes that are not UTF-8, a bidirectional control) in the `$'...'` form, whose escapes are
    those shown."""
    if printable(text) == text:
        return shlex.quote(text)
    return "$'" + printable(text.replace("\\", "\\\\").replace("'", "\\'")) + "'"
