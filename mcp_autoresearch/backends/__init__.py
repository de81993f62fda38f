"""Where a run's commands execute besides this machine's keeper: a Ray cluster."""
