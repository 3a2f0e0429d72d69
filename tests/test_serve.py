"""``headstart serve``: good and bad requests against a real server on an ephemeral port, dynamic batching,
the limits, and a short run of the load bench (300 requests, 5% bad) against the command itself."""

from __future__ import annotations

import asyncio
import builtins
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from headstart.cli import app as cli
from headstart.errors import USER_ERROR_EXIT_CODE
from headstart.inference import Predictor, load_model, model_card
from headstart.serve import BackgroundServer, Batcher, ServeOptions, create_app
from helpers import CATS, DIGITS, digit_data, digit_run, grey_image, truncated_jpeg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from bench_serve_load import declared_png  # noqa: E402 - the load bench's decompression bomb, the same bytes

BENCH = Path(__file__).resolve().parent.parent / "bench" / "bench_serve_load.py"
CARD = "---\nlibrary_name: headstart\ntags: [digits]\nmetrics: [{name: accuracy, value: 0.5}]\n---\n# Digits\n"


@pytest.fixture(scope="module")
def best_folder(tmp_path_factory):
    """A ``best/`` folder: a run of ``test_resnet`` trained one epoch on the digits, with a model card."""
    from headstart.config import parse_run
    from headstart.structure import run

    folder = tmp_path_factory.mktemp("comparison") / "best"
    run(parse_run(digit_run(folder, [{"name": "task", "epochs": 1, "batch_size": 50}])))
    (folder / "MODEL_CARD.md").write_text(CARD)
    return folder


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> list[bytes]:
    """Three test digits as PNG bytes."""
    images, _ = digit_data().split("test").as_tensors()
    encoded = []
    for index in range(3):
        buffer = io.BytesIO()
        grey_image(images[index, 0]).save(buffer, format="PNG")
        encoded.append(buffer.getvalue())
    return encoded


@pytest.fixture(scope="module")
def server(best_folder):
    predictor = Predictor(load_model(best_folder), device="cpu", top=3)
    options = ServeOptions(max_files=4, max_wait_ms=2)
    with BackgroundServer(create_app(predictor, options, source=str(best_folder), card=model_card(best_folder))) as up:
        yield up


def _post(server, **kwargs) -> httpx.Response:
    return httpx.post(f"{server.url}/predict", timeout=60, **kwargs)


def _refused(response: httpx.Response, status: int, fragment: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and "\n" not in body["error"] and fragment in body["error"], body


def test_health_and_metadata_describe_the_model_and_its_card(server, best_folder):
    assert httpx.get(f"{server.url}/health").json()["status"] == "ok"
    metadata = httpx.get(f"{server.url}/metadata").json()
    assert metadata["labels"] == DIGITS and metadata["input_size"] == [3, 16, 16]
    assert metadata["preprocessing"]["crop_mode"] == "squash" and metadata["preprocessing"]["mean"] == [0.5] * 3
    assert metadata["model_card"] == {
        "library_name": "headstart",
        "tags": ["digits"],
        "metrics": [{"name": "accuracy", "value": 0.5}],
    }
    assert metadata["source"] == "best" and str(best_folder.parent) not in json.dumps(metadata)
    assert metadata["limits"]["max_upload_mb"] == 20 and metadata["top"] == 3


def test_one_upload_gets_the_networks_top_labels_and_probabilities(server, best_folder, digits, tmp_path):
    response = _post(server, files={"file": ("seven.png", digits[0], "image/png")})
    assert response.status_code == 200, response.text
    (result,) = response.json()["results"]
    path = tmp_path / "digit.png"
    path.write_bytes(digits[0])
    expected = load_model(best_folder).predict([path]).topk(3)
    assert result["file"] == "seven.png"
    assert [p["label"] for p in result["predictions"]] == [DIGITS[i] for i in expected.indices[0].tolist()]
    assert [p["probability"] for p in result["predictions"]] == pytest.approx(expected.values[0].tolist(), abs=1e-5)


def test_several_uploads_are_answered_in_order(server, digits):
    files = [("files", (f"{index}.png", data, "image/png")) for index, data in enumerate(digits)]
    response = _post(server, files=files)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [result["file"] for result in results] == ["0.png", "1.png", "2.png"]
    single = [_post(server, files={"file": ("x.png", data)}).json()["results"][0] for data in digits]
    for together, alone in zip(results, single, strict=True):
        assert [p["label"] for p in together["predictions"]] == [p["label"] for p in alone["predictions"]]


def _bad_request(kind: str, digits: list[bytes], tmp_path: Path) -> dict:
    if kind == "no body":
        return {}
    if kind == "no file":
        return {"content": b"--B--\r\n", "headers": {"content-type": "multipart/form-data; boundary=B"}}
    if kind == "wrong field":
        return {"files": {"image": ("digit.png", digits[0])}}
    if kind == "text field only":
        return {"data": {"note": "hello"}, "files": {"": ("", b"")}}
    if kind == "text file":
        return {"files": {"file": ("notes.jpg", b"these are notes, not a picture")}}
    if kind == "empty file":
        return {"files": {"file": ("empty.png", b"")}}
    if kind == "truncated JPEG":
        truncated_jpeg(tmp_path / "half.jpg")
        return {"files": {"file": ("half.jpg", (tmp_path / "half.jpg").read_bytes())}}
    if kind == "decompression bomb":
        return {"files": {"file": ("bomb.png", declared_png(20_000, 20_000))}}
    if kind == "50 MB of noise":
        noise = np.random.default_rng(0).integers(0, 256, 50_000_000, dtype=np.uint8).tobytes()
        return {"files": {"file": ("noise.bin", noise)}}
    if kind == "too many files":
        return {"files": [("files", (f"{index}.png", digits[0])) for index in range(5)]}
    raise AssertionError(kind)


@pytest.mark.parametrize(
    ("kind", "status", "fragment"),
    [
        ("no body", 415, "expected multipart/form-data"),
        ("no file", 400, "no image: send it in multipart field 'file'"),
        ("wrong field", 400, "field 'image' is not read; send the image in field 'file'"),
        ("text field only", 400, "is not read"),
        ("text file", 400, "notes.jpg: not a readable image"),
        ("empty file", 400, "empty.png: file is empty"),
        ("truncated JPEG", 400, "half.jpg: corrupt or truncated image"),
        ("decompression bomb", 400, "bomb.png: declares more pixels than the limit"),
        ("50 MB of noise", 413, "the limit is 20 MB"),
        ("too many files", 413, "5 images in one request; at most 4"),
    ],
)
def test_a_bad_request_gets_a_4xx_with_one_line_and_the_server_keeps_serving(
    server, digits, tmp_path, kind, status, fragment
):
    _refused(_post(server, **_bad_request(kind, digits, tmp_path)), status, fragment)
    assert _post(server, files={"file": ("digit.png", digits[1])}).status_code == 200


def test_other_routes_and_methods_answer_one_line_of_json(server):
    _refused(httpx.get(f"{server.url}/nowhere"), 404, "GET /nowhere: Not Found")
    _refused(httpx.get(f"{server.url}/predict"), 405, "GET /predict: Method Not Allowed")


def test_no_request_reads_or_writes_a_path_on_the_server(server, digits, tmp_path, monkeypatch):
    """File names are never opened: a name pointing at a real image on the server does not make text an
    image, a name climbing folders is answered as a plain name, and a 5 MB upload opens no file at all
    (no temporary file on disk either)."""
    on_server = tmp_path / "real.png"
    on_server.write_bytes(digits[0])
    _refused(_post(server, files={"file": (str(on_server), b"text, not the file named")}), 400, "not a readable image")
    climbing = _post(server, files={"file": ("../../../etc/passwd", digits[0])})
    assert climbing.status_code == 200 and "/" not in climbing.json()["results"][0]["file"]
    large = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (1200, 1400, 3), dtype=np.uint8)).save(large, "PNG")
    assert len(large.getvalue()) > 4_000_000
    opened: list[str] = []
    real_open, real_os_open = builtins.open, os.open
    monkeypatch.setattr(builtins, "open", lambda file, *a, **k: opened.append(str(file)) or real_open(file, *a, **k))
    monkeypatch.setattr(os, "open", lambda path, *a, **k: opened.append(str(path)) or real_os_open(path, *a, **k))
    for name in ("mkstemp", "mkdtemp", "NamedTemporaryFile", "SpooledTemporaryFile", "TemporaryFile"):
        monkeypatch.setattr(tempfile, name, lambda *a, name=name, **k: opened.append(name) or None)
    response = _post(server, files={"file": ("big.png", large.getvalue())})
    monkeypatch.undo()
    assert response.status_code == 200, response.text
    assert opened == []


def test_the_batcher_joins_concurrent_images_and_runs_power_of_two_chunks():
    sizes: list[int] = []

    def classify(pixels: torch.Tensor) -> list:
        sizes.append(len(pixels))
        return [int(value) for value in pixels.flatten()]

    async def scenario() -> tuple[list, list]:
        batcher = Batcher(classify, max_batch=8, max_wait_ms=200)
        batcher.start()
        try:
            singles = await asyncio.gather(*(batcher.submit([torch.tensor([index])]) for index in range(11)))
            together = await batcher.submit([torch.tensor([index]) for index in range(7)])
        finally:
            await batcher.stop()
        return singles, together

    singles, together = asyncio.run(scenario())
    assert singles == [[index] for index in range(11)] and together == list(range(7))
    assert sizes == [8, 2, 1, 4, 2, 1]  # 11 queued at once: a full batch of 8, then 3 as 2 + 1; then 7 as 4 + 2 + 1


def test_a_request_past_the_timeout_gets_a_503_and_the_server_goes_on(best_folder, digits):
    predictor = Predictor(load_model(best_folder), device="cpu")
    answer = predictor.classify
    slow = {"on": True}

    def classify(pixels):
        if slow["on"]:
            time.sleep(1.0)
        return answer(pixels)

    predictor.classify = classify  # type: ignore[method-assign]
    with BackgroundServer(create_app(predictor, ServeOptions(timeout_s=0.3))) as up:
        _refused(_post(up, files={"file": ("digit.png", digits[0])}), 503, "no answer within 0.3 s")
        slow["on"] = False
        while httpx.get(f"{up.url}/health").json()["batches"] < 1:  # the slow batch ends, its answer dropped
            time.sleep(0.05)
        assert _post(up, files={"file": ("digit.png", digits[0])}).status_code == 200


def test_a_failing_batch_answers_500_in_one_line_and_the_next_one_runs(best_folder, digits):
    predictor = Predictor(load_model(best_folder), device="cpu")
    answer = predictor.classify
    failures = [RuntimeError("out of memory")]

    def classify(pixels):
        if failures:
            raise failures.pop()
        return answer(pixels)

    predictor.classify = classify  # type: ignore[method-assign]
    with BackgroundServer(create_app(predictor)) as up:
        _refused(_post(up, files={"file": ("digit.png", digits[0])}), 500, "internal error (RuntimeError)")
        assert _post(up, files={"file": ("digit.png", digits[0])}).status_code == 200


def test_efficientnet_lite0_with_its_imagenet_weights_says_cat_for_chelsea(lite0):
    from skimage import data

    buffer = io.BytesIO()
    Image.fromarray(data.chelsea()).save(buffer, format="JPEG", quality=95)
    with BackgroundServer(create_app(Predictor(lite0, device="cpu"))) as up:
        response = _post(up, files={"file": ("chelsea.jpg", buffer.getvalue(), "image/jpeg")})
        metadata = httpx.get(f"{up.url}/metadata").json()
    assert response.status_code == 200, response.text
    top = response.json()["results"][0]["predictions"][0]["label"]
    assert top in {"Egyptian cat", "tabby, tabby cat"} and top in CATS
    assert len(metadata["labels"]) == 1000 and metadata["input_size"] == [3, 224, 224]
    assert metadata["model_card"] is None


def test_the_command_refuses_a_port_in_use_in_one_line_before_loading(best_folder):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(cli, ["serve", str(best_folder), "--port", str(port)])
    assert result.exit_code == USER_ERROR_EXIT_CODE, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: --host 127.0.0.1 --port {port}: cannot listen there")
    missing = CliRunner().invoke(cli, ["serve", str(best_folder / "nothing-here")])
    assert missing.exit_code == USER_ERROR_EXIT_CODE and "no such checkpoint" in missing.stderr


def test_the_command_holds_300_requests_with_bad_ones_mixed_in(best_folder, tmp_path):
    """The load bench, short: ``headstart serve`` in its own process, 300 requests (5% bad, six kinds)
    from 8 coroutines. Every good request answered 200 with a stable label, every bad one a 4xx, no
    5xx, no dropped connection, and the server's memory after them within 64 MB of after the warm-up."""
    shutil.copytree(best_folder, tmp_path / "best")
    completed = subprocess.run(
        [sys.executable, str(BENCH), "--model", str(tmp_path / "best"), "--requests", "300", "--concurrency", "8"]
        + ["--warmup", "30", "--json"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    assert report["answered"] == report["scheduled"] == 300 and report["failures"] == {}
    assert report["server_errors"] == report["bad_not_4xx"] == report["good_not_200"] == 0
    assert report["wrong_answers"] == {}
    bad = {kind: codes for kind, codes in report["statuses"].items() if not kind.startswith("good")}
    assert set(bad) == {"no-file", "wrong-field", "text", "truncated", "bomb", "oversize"}
    assert bad["oversize"].keys() == {"413"} and bad["no-file"].keys() == {"415"}
    assert sum(sum(codes.values()) for codes in bad.values()) == 15
    assert report["rss_end_mb"] - report["rss_after_warmup_mb"] < 64, report
    assert report["health"]["images"] >= 300 - 15
