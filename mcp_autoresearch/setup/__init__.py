"""Configuration: the keys, their sources, and the detection of project types."""
