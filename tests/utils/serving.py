"""
The inference service (maskformer.serving) in this process for the tests: a tiny model's Predictor,
a server on a free loopback port and a client of it, and the images sent. Needs the serve extra.
"""

import contextlib
import http.client
import json
import re
import socket
import threading

import cv2
import numpy as np
import uvicorn

from maskformer.predictor import Predictor
from maskformer.serving import Service, ServiceOptions, create_app
from tests.utils.inputs import block_images
from tests.utils.processes import wait_until
from tests.utils.run_folders import save_tiny_run

SIZES = ((60, 80), (90, 70), (64, 64), (100, 120))  # of block_test_images


def tiny_predictor(task, folder, opts=()) -> Predictor:
    """A tiny model of the synthetic config whose results vary over the image, from a run folder."""
    save_tiny_run(folder, task)
    return Predictor.from_folder(str(folder), opts=list(opts))


def png_bytes(image_bgr: np.ndarray) -> bytes:
    return cv2.imencode(".png", image_bgr)[1].tobytes()


def block_test_images():
    """(H, W, 3) BGR uint8 block images of several sizes."""
    return [np.ascontiguousarray(x.permute(1, 2, 0).numpy()) for x in block_images(7, SIZES)]


class Client:
    """Requests to a server at 127.0.0.1:``port``, one connection each."""

    def __init__(self, port: int):
        self.port = port

    def request(self, method, path, body=None, headers=None, timeout=120):
        """-> (status, headers dict (lower-case names), decoded JSON or text)."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            data = response.read()
            found = {k.lower(): v for k, v in response.getheaders()}
        finally:
            connection.close()
        is_json = found.get("content-type", "").startswith("application/json")
        return response.status, found, json.loads(data) if is_json else data.decode()

    def predict(self, body: bytes, content_type="application/octet-stream"):
        return self.request("POST", "/predict", body, {"Content-Type": content_type})

    def metric(self, name: str) -> float:
        _, _, text = self.request("GET", "/metrics")
        return float(re.search(rf"^maskformer_{name} (\S+)$", text, re.M).group(1))

    def raw(self, head: bytes, body_parts=(), timeout=30) -> bytes:
        """Sends ``head`` and ``body_parts`` on one socket, then reads until the server closes."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as s:
            s.sendall(head)
            for part in body_parts:
                s.sendall(part)
            received = b""
            while b"\r\n\r\n" not in received or not _complete(received):
                chunk = s.recv(65536)
                if not chunk:
                    break
                received += chunk
        return received


def _complete(response: bytes) -> bool:
    head, _, body = response.partition(b"\r\n\r\n")
    length = re.search(rb"content-length: (\d+)", head, re.I)
    return length is not None and len(body) >= int(length.group(1))


@contextlib.contextmanager
def serving(load, options: ServiceOptions):
    """An app on a free loopback port, served by uvicorn in a thread; yields (Client, Service)."""
    service = Service(load, options)
    sock = socket.create_server(("127.0.0.1", 0))
    config = uvicorn.Config(create_app(service), log_config=None, timeout_graceful_shutdown=10)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    client = Client(sock.getsockname()[1])
    try:
        yield client, service
    finally:
        server.should_exit = True
        thread.join(60)


def ready(client: Client):
    wait_until(lambda: client.request("GET", "/health")[0] == 200, what="/health 200")
    return client
