"""The ``tipml`` command: one module per command group, registered on ``cli.app.app``."""

from __future__ import annotations

from tipml.cli import (  # noqa: F401 - registers the commands
    demo,
    events,
    experiments,
    features,
    learn,
    loadtest,
    prompts,
    serve,
)
from tipml.cli.app import app


def main() -> None:
    app()
