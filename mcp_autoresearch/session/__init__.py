"""The session: opening and resuming it, the target, the queries, and landing the results."""
