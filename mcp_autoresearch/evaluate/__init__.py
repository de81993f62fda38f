"""The bundled evaluators an evaluation stage runs (`python -m mcp_autoresearch.evaluate MODEL --data VALIDATION.npz`): they never import the run's code."""
