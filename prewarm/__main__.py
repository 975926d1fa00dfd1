"""``python -m prewarm`` runs the CLI."""

from prewarm.cli.main import run

run()
