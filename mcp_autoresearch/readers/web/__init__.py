"""The live web dashboard: a read-only page over a session's files, served alone or next to `/mcp`."""
