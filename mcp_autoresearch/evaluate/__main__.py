"""`python -m mcp_autoresearch.evaluate`: the bundled ML evaluator (see `bpb`)."""

from .bpb import main

raise SystemExit(main())
