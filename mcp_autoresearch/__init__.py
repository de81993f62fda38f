"""mcp-autoresearch: an MCP server that runs an autonomous experiment loop with its rules enforced in code."""

__version__ = "0.1.0"
