"""The readers: read-only views of a session's files (briefing, report, dashboard, plot, web page). They never import the session or the lifecycle."""
