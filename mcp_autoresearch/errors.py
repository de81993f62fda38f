"""Errors the engine raises. Each message says what was wrong, where, and what to do instead.

The MCP adapter turns these into `ToolError` (the agent reads the message); the CLI prints the message as one
line and exits with code 2. Anything else that escapes is a bug.
"""


class AutoresearchError(Exception):
    """Base class: a refusal or failure whose message is meant for the agent or the user."""


class ConfigError(AutoresearchError):
    """The configuration (a file, a command-line flag, or the project itself) is unusable."""


class RuleViolation(AutoresearchError):
    """The agent asked for something the loop's rules forbid (another file, a stale view, a skipped step)."""


class SessionError(AutoresearchError):
    """The session cannot do this now (no session, busy, wrong branch, locked by another server)."""
