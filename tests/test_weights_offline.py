"""
Weights given as URLs without network (maskformer.engine.weights_file.fetch_weights, used by
MaskFormerCheckpointer, so by train_net.py and Predictor): a copy in detectron2's download cache is
used without touching the network; every failed download (HTTP errors, no connection, timeout,
truncated, not a weights file) is a one-line CheckpointError naming the URL and the cache path,
and leaves nothing in the cache; processes sharing the cache download once. Servers here are
http.server instances on 127.0.0.1.
"""

import io
import os
import pickle
import socket
import subprocess
import sys
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from maskformer import Predictor
from maskformer.engine import weights_file
from maskformer.engine.checkpoint import MaskFormerCheckpointer
from maskformer.engine.weights_file import (
    CheckpointError,
    download_cache_path,
    read_weights,
)
from tests.utils.checkpoints import assert_same_weights, small_model
from tests.utils.repo import REPO_ROOT

SEM_CFG = "configs/synthetic/maskformer_R18_sem_seg.yaml"
R50 = "detectron2://ImageNetPretrained/torchvision/R-50.pkl"


def free_port() -> int:
    """A port on 127.0.0.1 nothing listens on: connecting to it is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torch_bytes(model) -> bytes:
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict()}, buffer)
    return buffer.getvalue()


def detectron2_pkl_bytes(model) -> bytes:
    weights = {k: v.numpy() for k, v in model.state_dict().items()}
    return pickle.dumps({"model": weights, "__author__": "test"}, protocol=2)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty download cache folder, the one iopath (so detectron2's PathManager) uses."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("FVCORE_CACHE", str(folder))
    return folder


@pytest.fixture
def server():
    """
    An HTTP server on 127.0.0.1: ``routes[path]`` is (status, body) or a function answering the
    request handler; other paths get 404. ``gets`` lists the paths requested.
    """
    routes, gets = {}, []
    stop = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            gets.append(self.path)
            route = routes.get(self.path, (404, b"<html>Not Found</html>"))
            if callable(route):
                route(self)
            else:
                send(self, *route)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield SimpleNamespace(url=url, routes=routes, gets=gets, stop=stop)
    stop.set()
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def send(handler, status, body, length=None):
    handler.send_response(status)
    handler.send_header("Content-Length", str(len(body) if length is None else length))
    handler.end_headers()
    handler.wfile.write(body)


def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the network was used")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


def assert_one_line_naming(message, *parts):
    assert "\n" not in message, message
    for part in parts:
        assert str(part) in message, (part, message)


def cache_leftovers(cache):
    """Files in the cache other than lock files (a failed download must leave none)."""
    return sorted(
        str(p.relative_to(cache)) for p in cache.rglob("*") if p.is_file() and p.suffix != ".lock"
    )


def test_cache_path_is_iopaths_rule(cache, tmp_path, monkeypatch):
    expected = cache / "detectron2/ImageNetPretrained/torchvision/R-50.pkl"
    assert download_cache_path(R50) == str(expected)
    assert download_cache_path("https://example.com/a/b/model.pth") == str(cache / "a/b/model.pth")
    # iopath itself takes a file there for the URL, without downloading
    expected.parent.mkdir(parents=True)
    expected.write_bytes(b"x")
    no_network(monkeypatch)
    from detectron2.utils.file_io import PathManager

    assert PathManager.get_local_path(R50) == str(expected)
    # without FVCORE_CACHE: ~/.torch/iopath_cache
    monkeypatch.delenv("FVCORE_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert download_cache_path(R50) == str(
        tmp_path / "home/.torch/iopath_cache/detectron2/ImageNetPretrained/torchvision/R-50.pkl"
    )
    with pytest.raises(ValueError, match="not a URL"):
        download_cache_path("model.pth")


def test_a_cached_download_is_used_without_network(cache, monkeypatch):
    model = small_model(seed=1)
    pkl = Path(download_cache_path(R50))
    pkl.parent.mkdir(parents=True)
    pkl.write_bytes(detectron2_pkl_bytes(model))
    url = f"http://127.0.0.1:{free_port()}/weights/model_final.pth"
    pth = Path(download_cache_path(url))
    assert pth == cache / "weights/model_final.pth"
    pth.parent.mkdir(parents=True)
    pth.write_bytes(torch_bytes(model))
    no_network(monkeypatch)
    for path in (R50, url):
        loaded = small_model(seed=2)
        MaskFormerCheckpointer(loaded).load(path)
        assert_same_weights(loaded, model)
        assert read_weights(path).checkpoint["model"].keys() == model.state_dict().keys()


def hang(server):
    def answer(handler):
        server.stop.wait(30)  # until the test ends

    return answer


def truncated(body):
    def answer(handler):
        send(handler, 200, body[: len(body) // 2], length=len(body))
        handler.close_connection = True

    return answer


@pytest.mark.parametrize(
    "route, problem",
    [
        (None, "the server answered HTTP 404 Not Found"),
        ((500, b"oops"), "the server answered HTTP 500 Internal Server Error"),
        ("refused", "no connection ([Errno 111] Connection refused)"),
        ("hang", "timed out"),
        ("truncated", "the download broke off after"),
        ((200, b"<!DOCTYPE html><html>Sign in</html>"), "not a weights file"),
    ],
    ids=["404", "500", "refused", "timeout", "truncated", "html"],
)
def test_failed_downloads_name_url_and_cache_path_and_cache_nothing(
    cache, server, monkeypatch, route, problem
):
    model = small_model(seed=3)
    body = torch_bytes(model)
    url = f"{server.url}/models/model_final.pth"
    if route == "refused":
        url = f"http://127.0.0.1:{free_port()}/models/model_final.pth"
    elif route == "hang":
        monkeypatch.setattr(weights_file, "DOWNLOAD_TIMEOUT_S", 0.5)
        server.routes["/models/model_final.pth"] = hang(server)
    elif route == "truncated":
        server.routes["/models/model_final.pth"] = truncated(body)
    elif route is not None:
        server.routes["/models/model_final.pth"] = route
    with pytest.raises(CheckpointError) as error:
        MaskFormerCheckpointer(small_model()).load(url)
    cached = cache / "models/model_final.pth"
    assert_one_line_naming(str(error.value), url, cached, problem, "MODEL.WEIGHTS")
    assert cache_leftovers(cache) == []
    # once the server sends the file, it is downloaded (nothing broken was kept)
    if route != "refused":
        server.routes["/models/model_final.pth"] = (200, body)
        loaded = small_model()
        MaskFormerCheckpointer(loaded).load(url)
        assert_same_weights(loaded, model)
        assert cached.is_file()


def test_a_corrupt_cached_file_is_named_with_how_to_fix_it(cache, server):
    model = small_model(seed=4)
    body = detectron2_pkl_bytes(model)
    url = f"{server.url}/models/R-50.pkl"
    server.routes["/models/R-50.pkl"] = (200, body)
    cached = Path(download_cache_path(url))
    cached.parent.mkdir(parents=True)
    cached.write_bytes(body[: len(body) // 2])  # e.g. left by a download without a size check
    with pytest.raises(CheckpointError) as error:
        MaskFormerCheckpointer(small_model()).load(url)
    assert_one_line_naming(str(error.value), cached, url, "delete it")
    assert server.gets == []
    cached.unlink()
    loaded = small_model()
    MaskFormerCheckpointer(loaded).load(url)
    assert_same_weights(loaded, model)
    assert server.gets == ["/models/R-50.pkl"]


READ_TOGETHER = """
import os, sys, time
from maskformer.engine.weights_file import read_weights
ready, url = sys.argv[1], sys.argv[2]
open(os.path.join(ready, str(os.getpid())), "w").close()
while len(os.listdir(ready)) < 2:  # both processes imported: they ask for the file together
    time.sleep(0.05)
print(sorted(read_weights(url).checkpoint["model"]))
"""


def test_processes_sharing_the_cache_download_once(cache, server, tmp_path):
    model = small_model(seed=5)
    body = torch_bytes(model)

    def slow(handler):
        server.stop.wait(1)  # the other process asks meanwhile
        send(handler, 200, body)

    server.routes["/models/model_final.pth"] = slow
    url = f"{server.url}/models/model_final.pth"
    ready = tmp_path / "ready"
    ready.mkdir()
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", READ_TOGETHER, str(ready), url],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [worker.communicate(timeout=120) for worker in workers]
    for worker, (out, err) in zip(workers, outputs):
        assert worker.returncode == 0, err[-3000:]
        assert out.strip() == str(sorted(model.state_dict()))
    assert server.gets == ["/models/model_final.pth"]


def test_predictor_names_url_and_cache_path(cache):
    url = f"http://127.0.0.1:{free_port()}/models/model_final.pth"
    opts = ["MODEL.DEVICE", "cpu", "MODEL.MASK_FORMER.DEC_LAYERS", "1"]
    with pytest.raises(CheckpointError) as error:
        Predictor(SEM_CFG, weights=url, opts=opts)
    assert_one_line_naming(str(error.value), url, cache / "models/model_final.pth", "refused")


@pytest.mark.parametrize("mode", [["--eval-only"], ["SOLVER.MAX_ITER", "1"]], ids=["eval", "train"])
def test_train_net_without_network_exits_2_with_one_line(cache, tmp_path, mode):
    url = f"http://127.0.0.1:{free_port()}/models/model_final.pth"
    done = subprocess.run(
        [
            sys.executable,
            "train_net.py",
            "--config-file",
            SEM_CFG,
            *mode,
            "MODEL.WEIGHTS",
            url,
            "OUTPUT_DIR",
            str(tmp_path / "out"),
        ],
        cwd=REPO_ROOT,
        env={
            **os.environ,
            "DETECTRON2_DATASETS": os.environ.get("DETECTRON2_DATASETS", "datasets"),
        },
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr + done.stdout
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, done.stderr[-3000:]
    assert_one_line_naming(errors[0], url, cache / "models/model_final.pth", "MODEL.WEIGHTS")
