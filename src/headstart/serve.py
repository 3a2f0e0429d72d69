"""An HTTP endpoint for a trained model: ``POST /predict``, ``GET /health``, ``GET /metadata``.

Framework: FastAPI on uvicorn, at the edge only (:func:`create_app`, :class:`BackgroundServer`,
:func:`serve`). LitServe (Lightning's, which installs here too) would bring dynamic batching, but it
runs the model in separate worker processes fed through queues, each loading its own copy of the
network, and pulls in pyzmq and uvloop; on a CPU machine of a few cores one process holding one
network, with the batching below (about 60 lines), answers with less memory, and leaves full control
over how an upload is read. FastAPI, uvicorn and python-multipart are small and already in the
dependency tree of MLflow's client.

What a request meets, in order:

1. The body is read into memory and never onto disk: at most ``max_upload_mb`` (413 beyond, the rest
   of an oversized body read and dropped so that the answer reaches the client). No request names a
   path the server reads or writes; an upload's file name appears in messages only.
2. ``multipart/form-data`` is parsed in memory (python-multipart's streaming parser): fields ``file``
   (one image) or ``files`` (several, at most ``max_files``); anything else is a 400 naming the field.
3. Each image is decoded by :class:`headstart.inference.ImageDecoder`, i.e.
   :func:`headstart.data.images.read_image_bytes`: EXIF orientation, every Pillow mode, and the pixel
   cap (:data:`headstart.data.images.MAX_PIXELS`) checked from the header before decoding, so a
   decompression bomb costs nothing. A file that is not an image, or is truncated, is a 400.
4. The decoded images join a queue; :class:`Batcher` runs the network on up to ``max_batch`` images
   at a time, waiting at most ``max_wait_ms`` after the first for more (dynamic batching), in one
   thread, while the event loop keeps reading and decoding other requests.
5. The whole request has ``timeout_s`` seconds (503 beyond, the request's images dropped from the queue).

Every refusal is a 4xx with one line of JSON, ``{"error": "..."}``, and the server keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from fastapi import Request  # the routes' annotation, resolved at run time by FastAPI

from headstart.data.images import MAX_PIXELS
from headstart.errors import HeadstartError
from headstart.inference import Predictor, load_model, model_card

__all__ = ["BackgroundServer", "Batcher", "BadRequest", "ServeOptions", "create_app", "parse_uploads", "serve"]

FILE_FIELDS = ("file", "files")
"""Multipart fields an image may arrive in."""
DRAIN_LIMIT = 256 * 1024 * 1024
"""An oversized body is read and dropped up to this many bytes (then the connection is closed)."""


@dataclass(frozen=True)
class ServeOptions:
    """How ``headstart serve`` listens, batches and limits requests."""

    host: str = "127.0.0.1"
    """Address to bind: the local machine only unless told otherwise (``0.0.0.0``: every interface)."""
    port: int = 8000
    """TCP port; 0 picks a free one."""
    top: int = 5
    """Labels answered per image."""
    max_batch: int = 16
    """Most images the network runs at once."""
    max_wait_ms: float = 5.0
    """How long a batch waits for more images after its first (0: run what is queued at once)."""
    max_upload_mb: float = 20.0
    """Largest request body, in MB (10⁶ bytes); 413 beyond."""
    max_files: int = 16
    """Most images in one request."""
    timeout_s: float = 30.0
    """Longest a request may take, from its first byte read to its answer; 503 beyond."""
    device: str = "auto"
    """``cpu``, ``cuda`` or ``auto`` (the GPU when there is one)."""
    decode_threads: int = 2
    """Threads decoding uploads (Pillow releases the GIL while it decodes)."""

    def __post_init__(self) -> None:
        checks = (
            ("max_batch", self.max_batch >= 1),
            ("max_files", self.max_files >= 1),
            ("decode_threads", self.decode_threads >= 1),
            ("max_wait_ms", self.max_wait_ms >= 0),
            ("max_upload_mb", self.max_upload_mb > 0),
            ("timeout_s", self.timeout_s > 0),
            ("port", 0 <= self.port <= 65535),
        )
        for name, good in checks:
            if not good:
                raise HeadstartError(f"{name}={getattr(self, name)!r}: out of range (see headstart serve --help)")

    @property
    def max_upload_bytes(self) -> int:
        """``max_upload_mb`` in bytes."""
        return int(self.max_upload_mb * 1_000_000)


class BadRequest(Exception):
    """A request refused with ``status`` and a one-line reason."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = " ".join(message.split())


# ---------------------------------------------------------------------------------- the request


def _display(name: str | None) -> str:
    """A client's name for a field or file, fit for a message: printable, at most 80 characters.
    It is never used as a path."""
    return re.sub(r"[^\w .,()+=@#-]", "_", name or "")[:80].strip()


def parse_uploads(content_type: str | None, body: bytes, *, max_files: int) -> list[tuple[str, bytes]]:
    """``(name, bytes)`` of each image in a ``multipart/form-data`` body held in memory.

    The name is the upload's file name made printable (``files[1]`` when it has none), for
    answers and messages only. Raises :class:`BadRequest`: 415 for another content type; 400 for
    a malformed body, a field other than ``file``/``files`` or no image at all; 413 for more than
    ``max_files``.
    """
    from python_multipart.multipart import MultipartParseError, MultipartParser, parse_options_header

    kind, params = parse_options_header(content_type or "")
    if kind != b"multipart/form-data" or not params.get(b"boundary"):
        shown = (content_type or "none").split(";")[0][:60]
        raise BadRequest(415, f"content type {shown}: expected multipart/form-data with the image in field 'file'")
    parts: list[dict[str, Any]] = []
    header: dict[str, bytearray] = {}

    def begin() -> None:
        parts.append({"headers": {}, "data": bytearray()})

    def field(data: bytes, start: int, end: int) -> None:
        header.setdefault("field", bytearray()).extend(data[start:end])

    def value(data: bytes, start: int, end: int) -> None:
        header.setdefault("value", bytearray()).extend(data[start:end])

    def header_end() -> None:
        parts[-1]["headers"][bytes(header.get("field", b"")).lower()] = bytes(header.get("value", b""))
        header.clear()

    def part_data(data: bytes, start: int, end: int) -> None:
        parts[-1]["data"].extend(data[start:end])

    callbacks = {
        "on_part_begin": begin,
        "on_header_field": field,
        "on_header_value": value,
        "on_header_end": header_end,
        "on_part_data": part_data,
    }
    parser = MultipartParser(params[b"boundary"], callbacks)  # type: ignore[arg-type]
    try:
        parser.write(body)
        parser.finalize()
    except MultipartParseError as exc:
        raise BadRequest(400, f"malformed multipart body ({str(exc).splitlines()[0][:120]})") from None
    uploads: list[tuple[str, bytes]] = []
    for part in parts:
        _, disposition = parse_options_header(part["headers"].get(b"content-disposition", b""))
        name = disposition.get(b"name", b"").decode("utf-8", "replace")
        if name not in FILE_FIELDS:
            shown = f"field {_display(name)!r}" if _display(name) else "a field without a name"
            raise BadRequest(400, f"{shown} is not read; send the image in field 'file' (several in fields 'files')")
        filename = _display(disposition.get(b"filename", b"").decode("utf-8", "replace"))
        uploads.append((filename or f"{name}[{len(uploads)}]", bytes(part["data"])))
    if not uploads:
        raise BadRequest(400, "no image: send it in multipart field 'file' (several in fields 'files')")
    if len(uploads) > max_files:
        raise BadRequest(413, f"{len(uploads)} images in one request; at most {max_files} (--max-files)")
    return uploads


async def _read_body(request, limit: int) -> bytes:
    """The body, at most ``limit`` bytes; a larger one is drained (up to :data:`DRAIN_LIMIT`) and refused."""
    from starlette.requests import ClientDisconnect

    declared = request.headers.get("content-length")
    too_large = declared is not None and declared.isdigit() and int(declared) > limit
    body = bytearray()
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit:
                too_large = True
                body = bytearray()
                if received > DRAIN_LIMIT:
                    break
            elif not too_large:
                body.extend(chunk)
    except ClientDisconnect:
        raise BadRequest(400, "the client disconnected before the upload ended") from None
    if too_large:
        raise BadRequest(
            413, f"upload of more than {limit / 1e6:g} MB; the limit is {limit / 1e6:g} MB (--max-upload-mb)"
        )
    return bytes(body)


# ---------------------------------------------------------------------------------- the batches


@dataclass
class _Item:
    pixels: torch.Tensor
    future: asyncio.Future


def _power_of_two_chunks(count: int) -> list[int]:
    """``count`` as a sum of distinct powers of two, largest first: 13 → [8, 4, 1]."""
    return [1 << bit for bit in reversed(range(count.bit_length())) if count >> bit & 1]


class Batcher:
    """Dynamic batching: images queued by concurrent requests run through ``classify`` together.

    One task takes the first queued image, then waits up to ``max_wait_ms`` for more until it holds
    ``max_batch``, and runs ``classify`` on their stacked pixels in one dedicated thread (so the
    network always runs on the same thread and the event loop stays free). Images of requests that
    gave up (timeout, client gone) are dropped before the batch runs.

    A batch runs as chunks whose sizes are powers of two, so the network sees at most
    ``log2(max_batch) + 1`` batch shapes. With every size from 1 to 16, glibc's allocator fragments
    and the process kept growing (EfficientNet-Lite0 on the CPU: 780 MB → 2.1 GB after 400 batches
    of random sizes); with sizes 1, 2, 4, 8, 16 it stays within 830-870 MB, and no image is
    computed twice nor padded.
    """

    def __init__(self, classify: Callable[[torch.Tensor], list], *, max_batch: int, max_wait_ms: float) -> None:
        self.classify = classify
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.queue: asyncio.Queue[_Item] = asyncio.Queue()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="headstart-model")
        self.task: asyncio.Task | None = None
        self.batches = 0
        self.images = 0

    def start(self) -> None:
        """Start the batching task on the running event loop."""
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop the batching task and the model's thread."""
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        self.executor.shutdown(wait=True)

    async def submit(self, images: list[torch.Tensor]) -> list:
        """The answers of ``classify`` for each image, once their batches have run."""
        loop = asyncio.get_running_loop()
        items = [_Item(pixels, loop.create_future()) for pixels in images]
        for item in items:
            self.queue.put_nowait(item)
        try:
            return list(await asyncio.gather(*(item.future for item in items)))
        finally:
            for item in items:
                item.future.cancel()  # no-op when answered; drops the rest from their batch

    def _classify(self, images: list[torch.Tensor]) -> list:
        """``classify`` over chunks whose sizes are powers of two (13 images: 8, 4, 1)."""
        answers: list = []
        start = 0
        for size in _power_of_two_chunks(len(images)):
            answers += self.classify(torch.stack(images[start : start + size]))
            start += size
        return answers

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            deadline = loop.time() + self.max_wait
            while len(batch) < self.max_batch:
                if not self.queue.empty():
                    batch.append(self.queue.get_nowait())
                    continue
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), remaining))
                except TimeoutError:
                    break
            live = [item for item in batch if not item.future.done()]
            if not live:
                continue
            try:
                answers = await loop.run_in_executor(self.executor, self._classify, [item.pixels for item in live])
            except Exception as exc:  # the batch's requests answer 500; the server goes on
                for item in live:
                    if not item.future.done():
                        item.future.set_exception(exc)
                continue
            self.batches += 1
            self.images += len(live)
            for item, answer in zip(live, answers, strict=True):
                if not item.future.done():
                    item.future.set_result(answer)


# ------------------------------------------------------------------------------------- the app


def _metadata(predictor: Predictor, source: str, options: ServeOptions, card: dict | None) -> dict[str, Any]:
    network = predictor.network
    return {
        "model": network.model_name,
        "source": Path(source).name or source,
        "labels": predictor.labels,
        "input_size": list(predictor.preprocessing.input_size),
        "preprocessing": predictor.preprocessing.to_dict(),
        "output_kind": network.output_kind,
        "top": predictor.top,
        "device": str(predictor.device),
        "limits": {
            "max_batch": options.max_batch,
            "max_wait_ms": options.max_wait_ms,
            "max_upload_mb": options.max_upload_mb,
            "max_files": options.max_files,
            "timeout_s": options.timeout_s,
            "max_pixels": MAX_PIXELS,
        },
        "model_card": json.loads(json.dumps(card, default=str)) if card is not None else None,
    }


def create_app(
    predictor: Predictor, options: ServeOptions | None = None, *, source: str = "", card: dict | None = None
):
    """The FastAPI application serving ``predictor`` (routes in the module docstring)."""
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    options = options or ServeOptions()
    metadata = _metadata(predictor, source or predictor.network.model_name, options, card)
    decoder = predictor.decoder
    state: dict[str, Any] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app):
        state["batcher"] = Batcher(predictor.classify, max_batch=options.max_batch, max_wait_ms=options.max_wait_ms)
        state["batcher"].start()
        state["decoders"] = ThreadPoolExecutor(
            max_workers=options.decode_threads, thread_name_prefix="headstart-decode"
        )
        yield
        await state["batcher"].stop()
        state["decoders"].shutdown(wait=True)

    app = FastAPI(title=f"headstart: {metadata['model']}", lifespan=lifespan, docs_url=None, redoc_url=None)

    def refuse(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": " ".join(message.split())}, status_code=status)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        reason = exc.detail if isinstance(exc.detail, str) else "refused"
        return refuse(exc.status_code, f"{request.method} {request.url.path}: {reason}")

    @app.exception_handler(Exception)
    async def failed(request: Request, exc: Exception):  # logged by uvicorn; the server goes on
        return refuse(500, f"{request.method} {request.url.path}: internal error ({type(exc).__name__})")

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        return refuse(400, f"{request.method} {request.url.path}: invalid request")

    @app.get("/health")
    async def health():
        batcher = state["batcher"]
        return {"status": "ok", "model": metadata["model"], "batches": batcher.batches, "images": batcher.images}

    @app.get("/metadata")
    async def get_metadata():
        return metadata

    async def answer(request: Request) -> list[dict[str, Any]]:
        body = await _read_body(request, options.max_upload_bytes)
        uploads = parse_uploads(request.headers.get("content-type"), body, max_files=options.max_files)
        del body
        loop = asyncio.get_running_loop()
        pixels = []
        for name, data in uploads:
            try:
                pixels.append(await loop.run_in_executor(state["decoders"], decoder.upload, data, name))
            except HeadstartError as exc:
                raise BadRequest(400, str(exc)) from None
        answers = await state["batcher"].submit(pixels)
        return [
            {"file": name, "predictions": [{"label": label, "probability": p} for label, p in pairs]}
            for (name, _), pairs in zip(uploads, answers, strict=True)
        ]

    @app.post("/predict")
    async def predict(request: Request):
        try:
            async with asyncio.timeout(options.timeout_s):
                return {"results": await answer(request)}
        except BadRequest as exc:
            return refuse(exc.status, exc.message)
        except TimeoutError:
            return refuse(503, f"no answer within {options.timeout_s:g} s (--timeout); try again")

    return app


# ---------------------------------------------------------------------------------- the server


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise HeadstartError(f"--host {host} --port {port}: cannot listen there ({exc.strerror or exc})") from None
    sock.listen(2048)
    return sock


def _server(app, log_level: str, access_log: bool):
    import uvicorn

    config = uvicorn.Config(app, log_level=log_level, access_log=access_log, lifespan="on", timeout_keep_alive=30)
    return uvicorn.Server(config)


class BackgroundServer:
    """Serve ``app`` from a thread of this process on ``host:port`` (0: a free port) — for tests,
    benches and notebooks. ``with BackgroundServer(app) as server: httpx.get(server.url + "/health")``."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, *, log_level: str = "warning") -> None:
        self.socket = _bind(host, port)
        self.server = _server(app, log_level, access_log=False)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)

    @property
    def url(self) -> str:
        """``http://host:port`` of the listening socket."""
        host, port = self.socket.getsockname()[:2]
        return f"http://{f'[{host}]' if ':' in host else host}:{port}"

    def __enter__(self) -> BackgroundServer:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc_info) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.socket.close()


def serve(
    model: str,
    options: ServeOptions | None = None,
    *,
    weights: str | None = "imagenet",
    log_level: str = "warning",
    access_log: bool = False,
    echo: Callable[[str], None] = print,
) -> None:
    """Load ``model`` (a stage, run or ``best/`` folder, or a zoo name: :func:`headstart.inference.load_model`)
    and serve it until Ctrl+C or SIGTERM."""
    options = options or ServeOptions()
    sock = _bind(options.host, options.port)  # a port in use fails before the model loads
    predictor = Predictor(load_model(model, weights=weights), device=options.device, top=options.top)
    card = model_card(model) if Path(model).exists() else None
    app = create_app(predictor, options, source=model, card=card)
    server = _server(app, log_level, access_log)
    host, port = sock.getsockname()[:2]
    echo(
        f"serving {predictor.network.model_name} ({len(predictor.labels or [])} labels, {predictor.device}) on "
        f"http://{host}:{port}: POST /predict (multipart field 'file'), GET /health, GET /metadata; Ctrl+C stops"
    )
    server.run(sockets=[sock])
