"""``tipml prompts list``."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from tipml.cli.app import prompts_app


@prompts_app.command("list")
def prompts_list() -> None:
    """Show every prompt version with its content hash."""
    from tipml.serving.prompts import VERSIONS

    table = Table("version", "description", "content hash")
    for key, version in sorted(VERSIONS.items()):
        table.add_row(key, version.description, version.content_hash[:16])
    Console().print(table)
