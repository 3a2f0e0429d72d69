"""The ``serve`` command: a trained model behind an HTTP endpoint (:mod:`headstart.serve`)."""

from __future__ import annotations

import typer

from headstart.cli.app import app, user_errors


@app.command("serve")
@user_errors
def serve_command(
    model: str = typer.Argument(..., help="A stage folder, run folder or comparison's best/ folder, or a zoo name."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on; 0.0.0.0 opens it to every interface."),
    port: int = typer.Option(8000, min=0, max=65535, help="TCP port (0: a free one, printed)."),
    weights: str = typer.Option("imagenet", help="For a zoo name: imagenet, none, or a weights file."),
    top: int = typer.Option(5, min=1, help="Labels answered per image."),
    max_batch: int = typer.Option(16, "--max-batch", min=1, help="Most images the network runs at once."),
    max_wait_ms: float = typer.Option(
        5.0, "--max-wait-ms", min=0, help="How long a batch waits for more images after its first, in ms."
    ),
    max_upload_mb: float = typer.Option(20.0, "--max-upload-mb", min=0.001, help="Largest request body, in MB."),
    max_files: int = typer.Option(16, "--max-files", min=1, help="Most images in one request."),
    timeout: float = typer.Option(30.0, "--timeout", min=0.001, help="Longest a request may take, in seconds."),
    device: str = typer.Option("auto", help="cpu, cuda, or auto (the GPU when there is one)."),
    access_log: bool = typer.Option(False, "--access-log", help="Log every request on stderr."),
) -> None:
    """Serve a model over HTTP: POST /predict (multipart field 'file' or 'files'), GET /health, GET /metadata.

    Requests are batched dynamically. A bad request gets a 4xx with {"error": "..."}; the server keeps serving.
    """
    from headstart.serve import ServeOptions, serve

    options = ServeOptions(
        host=host,
        port=port,
        top=top,
        max_batch=max_batch,
        max_wait_ms=max_wait_ms,
        max_upload_mb=max_upload_mb,
        max_files=max_files,
        timeout_s=timeout,
        device=device,
    )
    serve(model, options, weights=weights, access_log=access_log, log_level="info" if access_log else "warning")
