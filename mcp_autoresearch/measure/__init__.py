"""Measuring and deciding: reading numbers out of a run, the statistics and the keep rule."""
