"""Builds: one per build request, its steps, its live and kept logs."""
