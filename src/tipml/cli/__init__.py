"""The ``tipml`` command: one module per command group, registered on ``cli.app.app``."""

from __future__ import annotations

from tipml.cli import demo, events, features, prompts, serve  # noqa: F401 - registers commands
from tipml.cli.app import app


def main() -> None:
    app()
