"""
The inference service (maskformer.serving, tools/serve.py) over loopback HTTP: answers with the
content demo.py --save-masks writes, every bad-request class as a JSON error, dynamic batching
under 32 concurrent requests, refusal when overloaded, /health while loading, SIGTERM with
requests in flight, and the command line's user errors. Servers run in this process (a thread)
with tiny models, except for SIGTERM, which needs a process of its own.
"""

import base64
import concurrent.futures
import io
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import zlib

import cv2
import numpy as np
import pytest
from panopticapi.utils import rgb2id
from PIL import Image

pytest.importorskip("fastapi", reason="the serve extra is installed by scripts/setup_env.sh")

from maskformer.prediction_files import MaskWriter  # noqa: E402
from maskformer.serving import ServiceOptions  # noqa: E402
from tests.utils.configs import CONFIGS, tiny_opts  # noqa: E402
from tests.utils.processes import wait_until  # noqa: E402
from tests.utils.repo import REPO_ROOT, load_script  # noqa: E402
from tests.utils.serving import (  # noqa: E402
    SIZES,
    Client,
    block_test_images,
    png_bytes,
    ready,
    serving,
    tiny_predictor,
)

# the limits of the `limited` server
MAX_BODY = 50_000  # bytes
MAX_PIXELS = 20_000


@pytest.fixture(scope="module")
def panoptic(tmp_path_factory):
    """(Client, Predictor) of a tiny panoptic + instances model, default options."""
    predictor = tiny_predictor("panoptic", tmp_path_factory.mktemp("panoptic"))
    with serving(lambda: [predictor], ServiceOptions()) as (client, _):
        yield ready(client), predictor


@pytest.fixture(scope="module")
def limited(tmp_path_factory):
    """A tiny semantic model behind small limits; a batch waits 1.5 s for its images."""
    folder = tmp_path_factory.mktemp("semantic")
    predictor = tiny_predictor("semantic", folder, ["INPUT.MAX_IMAGE_PIXELS", str(MAX_PIXELS)])
    options = ServiceOptions(
        max_batch_size=8, batch_timeout=1.5, max_pending=2, max_body_bytes=MAX_BODY
    )
    with serving(lambda: [predictor], options) as (client, _):
        yield ready(client)


def decode_png(text: str, flags=cv2.IMREAD_UNCHANGED) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(base64.b64decode(text), np.uint8), flags)


def test_answer_is_what_save_masks_writes(panoptic, tmp_path):
    client, predictor = panoptic
    image = block_test_images()[0]
    status, _, answer = client.predict(png_bytes(image), "image/png")
    assert status == 200, answer
    assert (answer["width"], answer["height"]) == (80, 60)
    assert [c["name"] for c in answer["classes"]] == predictor.class_names

    # the same image predicted here, written by the demo's --save-masks writer
    writer = MaskWriter(str(tmp_path), predictor)
    writer.add("image", "image.png", predictor(image, format="BGR"))
    writer.close()
    files = {
        "sem_seg": tmp_path / "sem_seg" / "image.png",
        "panoptic_seg": tmp_path / "panoptic" / "image.png",
    }
    for key, path in files.items():
        assert base64.b64decode(answer[key]) == path.read_bytes(), key
    panoptic_json = json.loads((tmp_path / "panoptic.json").read_text())
    assert answer["classes"] == panoptic_json["categories"]
    assert answer["segments_info"] == panoptic_json["annotations"][0]["segments_info"]
    instances = json.loads((tmp_path / "instances.json").read_text())["annotations"]
    assert answer["instances"] == [
        {k: v for k, v in a.items() if k not in ("id", "image_id")} for a in instances
    ]
    assert len(answer["segments_info"]) >= 2  # the tiny model's results vary over the image
    ids = rgb2id(decode_png(answer["panoptic_seg"])[:, :, ::-1])
    assert set(np.unique(ids).tolist()) - {0} == {s["id"] for s in answer["segments_info"]}


def test_multipart_and_formats(panoptic):
    client, _ = panoptic
    image = block_test_images()[0]
    _, _, raw = client.predict(png_bytes(image), "image/png")
    boundary = "sep4213"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="note"\r\n\r\nhello\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n'
            f"Content-Type: image/png\r\n\r\n"
        ).encode()
        + png_bytes(image)
        + f"\r\n--{boundary}--\r\n".encode()
    )
    status, _, multipart = client.predict(body, f"multipart/form-data; boundary={boundary}")
    assert status == 200
    assert multipart == raw

    # read as files are: EXIF orientation applied (a quarter turn swaps width and height)
    buffer = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(image[:, :, ::-1]).save(buffer, "JPEG", exif=exif)
    status, _, answer = client.predict(buffer.getvalue(), "image/jpeg")
    assert status == 200 and (answer["width"], answer["height"]) == (60, 80)
    # 16-bit grayscale keeps its high byte
    buffer = io.BytesIO()
    Image.fromarray((np.arange(60 * 80).reshape(60, 80) * 13).astype(np.uint16)).save(buffer, "PNG")
    status, _, answer = client.predict(buffer.getvalue())
    assert status == 200 and (answer["width"], answer["height"]) == (80, 60)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG claiming (width, height) in its header, whose pixel data stops after 10 bytes."""
    header = b"IHDR" + struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", 13) + header + struct.pack(">I", zlib.crc32(header))
    return b"\x89PNG\r\n\x1a\n" + chunk + struct.pack(">I", 1000) + b"IDAT" + bytes(10)


def _gif_of_two_frames() -> bytes:
    buffer = io.BytesIO()
    frames = [Image.new("RGB", (40, 30), c) for c in ("red", "blue")]
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:])
    return buffer.getvalue()


def _float_tiff() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.ones((30, 40), np.float32)).save(buffer, "TIFF")
    return buffer.getvalue()


@pytest.mark.parametrize(
    "body, content_type, status, message",
    [
        (b"", "image/png", 400, "empty body"),
        (b"hello, not an image", "image/png", 400, "not an image file of a format PIL reads"),
        (png_bytes(np.zeros((60, 80, 3), np.uint8))[:60], "image/png", 400, "cannot read image"),
        (_gif_of_two_frames(), "image/gif", 400, "2 frames"),
        (_float_tiff(), "image/tiff", 400, "mode F is not read"),
        (b"--x\r\nContent-Disposition: form-data; name=\"other\"; filename=\"a.png\"\r\n\r\n"
         b"abc\r\n--x--\r\n", "multipart/form-data; boundary=x", 400, "without a file field 'file'"),
        (png_bytes(np.zeros((150, 150, 3), np.uint8)), "image/png", 413, "22,500 pixels"),
        (_png_header_only(1000, 1000), "image/png", 413, "1,000,000 pixels"),
        (_png_header_only(100_000, 100_000), "image/png", 413, "10,000,000,000 pixels"),
        (os.urandom(MAX_BODY + 1), "image/png", 413, f"limit of {MAX_BODY:,}"),
    ],
)  # fmt: skip
def test_bad_requests_are_json_errors(limited, body, content_type, status, message):
    answered, headers, answer = limited.predict(body, content_type)
    assert answered == status, answer
    assert headers["content-type"] == "application/json"
    assert message in answer["error"]


def test_oversized_body_is_refused_unread(limited):
    """Content-Length over the limit: 413 without asking for the body (Expect: 100-continue)."""
    head = (
        b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
        b"Content-Length: 10000000000\r\nExpect: 100-continue\r\n\r\n"
    )
    response = limited.raw(head)
    assert response.startswith(b"HTTP/1.1 413"), response[:200]
    assert b"100 Continue" not in response
    # a chunked body is counted as it arrives
    head = b"POST /predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunk = b"%x\r\n" % 30_000 + b"\0" * 30_000 + b"\r\n"
    response = limited.raw(head, [chunk, chunk])
    assert response.startswith(b"HTTP/1.1 413"), response[:200]
    assert b'"error"' in response


def test_other_paths_and_methods(limited):
    assert limited.request("GET", "/nothing")[::2] == (404, {"error": "Not Found"})
    assert limited.request("GET", "/predict")[::2] == (405, {"error": "Method Not Allowed"})
    status, headers, page = limited.request("GET", "/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert 'fetch("/predict"' in page and not re.search("https?://", page)  # nothing fetched


def test_overloaded_is_503_with_retry_after(limited):
    """Two images may wait (max_pending 2, batches held 1.5 s): of 5 at once, 3 are refused."""
    body = png_bytes(block_test_images()[0])
    with concurrent.futures.ThreadPoolExecutor(5) as pool:
        answers = list(pool.map(lambda _: limited.predict(body, "image/png"), range(5)))
    statuses = sorted(status for status, _, _ in answers)
    assert statuses == [200, 200, 503, 503, 503], answers
    for status, headers, answer in answers:
        if status == 503:
            assert int(headers["retry-after"]) >= 1
            assert answer["error"].startswith("overloaded")


def test_32_concurrent_requests_all_answered(panoptic):
    client, _ = panoptic
    images = block_test_images()
    bodies = [png_bytes(images[i % len(images)]) for i in range(32)]
    images_before, batches_before = client.metric("images_total"), client.metric("batches_total")
    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(lambda b: client.predict(b, "image/png"), bodies))
    for i, (status, _, answer) in enumerate(answers):
        assert status == 200, answer
        height, width = SIZES[i % len(SIZES)]
        assert (answer["height"], answer["width"]) == (height, width)
        assert decode_png(answer["sem_seg"]).shape == (height, width)
    assert client.metric("images_total") - images_before == 32
    assert client.metric("batches_total") - batches_before < 32  # some images ran together
    assert client.metric("images_pending") == 0


def test_health_is_503_until_loaded(tmp_path):
    predictor = tiny_predictor("semantic", tmp_path)
    loaded = threading.Event()

    def load():
        loaded.wait(60)
        return [predictor]

    with serving(load, ServiceOptions()) as (client, service):
        wait_until(lambda: _answers(client), what="the server")
        assert client.request("GET", "/health")[::2] == (503, {"status": "loading"})
        status, headers, answer = client.predict(png_bytes(block_test_images()[0]))
        assert (status, headers["retry-after"]) == (503, "5")
        assert "loading" in answer["error"]
        loaded.set()
        ready(client)
        assert client.predict(png_bytes(block_test_images()[0]))[0] == 200


def _answers(client: Client) -> bool:
    try:
        client.request("GET", "/health", timeout=5)
        return True
    except OSError:
        return False


def test_sigterm_answers_requests_in_flight_and_exits_0(tmp_path):
    """Requests held in a batch (2 s batch timeout) when SIGTERM comes are answered; exit code 0."""
    log_path = tmp_path / "serve.log"
    opts = tiny_opts("semantic")
    command = [sys.executable, os.path.join(REPO_ROOT, "tools", "serve.py"), "--port", "0"]
    command += ["--config-file", CONFIGS["semantic"], "--random-weights", "--max-batch-size", "8"]
    command += ["--batch-timeout-ms", "2000", "--opts", *opts]
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: "Serving on" in log_path.read_text() or process.poll() is not None)
        port = int(re.search(r"Serving on http://127.0.0.1:(\d+)", log_path.read_text()).group(1))
        client = ready(Client(port))
        body = png_bytes(block_test_images()[0])
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            answers = [pool.submit(client.predict, body, "image/png") for _ in range(4)]
            wait_until(lambda: client.metric("images_pending") == 4, 30, "4 images in flight")
            process.send_signal(signal.SIGTERM)
            results = [a.result() for a in answers]
        assert process.wait(60) == 0, log_path.read_text()
    finally:
        if process.poll() is None:
            process.kill()
    assert [status for status, _, _ in results] == [200] * 4
    assert all(decode_png(answer["sem_seg"]).shape == (60, 80) for _, _, answer in results)
    with pytest.raises(ConnectionRefusedError):
        client.request("GET", "/health", timeout=5)


@pytest.fixture(scope="module")
def serve_script():
    return load_script("tools/serve.py")


def test_user_errors_exit_2(serve_script, tmp_path, capsys):
    config = CONFIGS["semantic"]
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = str(taken.getsockname()[1])
        cases = {
            "cannot listen there": ["--config-file", config, "--random-weights", "--port", port],
            "does not exist": ["--config-file", config, "--weights", str(tmp_path / "no.pth")],
            "--exported holds its weights": ["--exported", "m.onnx", "--weights", "w.pth"],
            "is required": [],
        }
        for message, argv in cases.items():
            with pytest.raises(SystemExit) as exit_info:
                serve_script.main(argv + (["--port", "0"] if "--port" not in argv else []))
            assert exit_info.value.code == 2
            assert message in capsys.readouterr().err.strip().splitlines()[-2]
