"""prewarm: the application shell (settings, daemon, control API, CLI, simulator)."""

__version__ = "0.1.0"
