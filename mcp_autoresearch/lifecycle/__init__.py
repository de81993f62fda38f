"""The life of one run: start, measure, verify, decide, recover, whatever its placement."""
