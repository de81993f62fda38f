"""The records: the journal (results.tsv and the JSONL), the session state, the server's own files."""
