"""Build and runtime backends: venv processes (embedded default) and Docker."""
