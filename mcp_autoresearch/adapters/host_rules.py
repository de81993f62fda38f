"""The Host and Origin headers a request to the server's HTTP side may carry (the checks against DNS rebinding),
for the MCP endpoint and the dashboard's page alike.

The MCP endpoint hands these rules to the MCP SDK's own check (`adapters/http.py` `security_for`); the page
applies them itself (`HostRules.refusal`, the same matching and the same answers), so that
`mcp-autoresearch dashboard --web` serves the page without importing the MCP SDK (about 1.3 s of CPU at every
start, two thirds of the command's)."""

from __future__ import annotations

from dataclasses import dataclass

LOOPBACK_HOSTS = ("127.0.0.1:*", "localhost:*", "[::1]:*", "127.0.0.1", "localhost", "[::1]")
LOOPBACK_ORIGINS = ("http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*")
WILDCARDS = ("0.0.0.0", "::")


@dataclass(frozen=True)
class HostRules:
    """`checked`: whether Host and Origin are checked at all; `hosts`, `origins`: the values allowed, where
    `name:*` allows `name` with any port."""

    checked: bool
    hosts: tuple[str, ...] = ()
    origins: tuple[str, ...] = ()

    def refusal(self, host: str | None, origin: str | None) -> tuple[int, str] | None:
        """The status and text a request with these headers is refused with, or None. A request with no Host is
        refused; one with no Origin (not sent by a browser, or same-origin) passes on its Host."""
        if not self.checked:
            return None
        if not host or not _allowed(host, self.hosts):
            return 421, "Invalid Host header"
        if origin and not _allowed(origin, self.origins):
            return 403, "Invalid Origin header"
        return None


def _allowed(value: str, allowed: tuple[str, ...]) -> bool:
    return value in allowed or any(
        pattern.endswith(":*") and value.startswith(pattern[:-1]) for pattern in allowed
    )


def rules_for(host: str, token: str | None = None) -> HostRules:
    """The rules for a server bound to `host`: the loopback's names, and the address bound. A wildcard bind
    (served to other machines, which the CLI allows only with a token) is reached under any name or address of
    the machine: there the token is the check (a rebinding page cannot know it), and Host/Origin are not."""
    if host in WILDCARDS and token:
        return HostRules(checked=False)
    hosts, origins = list(LOOPBACK_HOSTS), list(LOOPBACK_ORIGINS)
    if host not in ("127.0.0.1", "localhost", "::1", *WILDCARDS):
        shown = f"[{host}]" if ":" in host else host
        hosts += [f"{shown}:*", shown]
        origins += [f"http://{shown}:*", f"https://{shown}:*"]
    return HostRules(checked=True, hosts=tuple(hosts), origins=tuple(origins))
