"""
The inference service (tools/serve.py) under load on loopback: images/s and p50 / p95 / p99
latency at several concurrencies, with batching on (--max-batch-size 8) and off (1), with 1 and 2
replicas, for the built-in R18 (synthetic panoptic config, 160x128 JPEGs) and the R50 ADE20K-150
model (512x512 JPEGs), both with random weights. Each setting is a fresh server process; each
concurrency level is a closed loop of --requests requests (at most --max-seconds of sending), after
one untimed request per client. Prints one Markdown row per level.

    python -m benchmarks.serving [--threads 2] [--requests 64] [--models r18 r50]
    python -m benchmarks.serving --models r18 --concurrency 1 4 --requests 8   # a quick look
"""

import argparse
import concurrent.futures
import http.client
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from typing import Dict, List

import cv2
import numpy as np
import torch

from benchmarks.common import R50_ADE20K_CONFIG, REPO_ROOT, voronoi_labels

MODELS = {
    "r18": (REPO_ROOT / "configs" / "synthetic" / "maskformer_R18_panoptic.yaml", (128, 160)),
    "r50": (R50_ADE20K_CONFIG, (512, 512)),
}
HEADER = (
    "| model | image | batching | replicas | concurrency | images/s | p50 ms | p95 ms | p99 ms "
    "| errors |\n|---|---|---|---|---|---|---|---|---|---|"
)


def jpeg_image(size, seed: int = 0) -> bytes:
    """A JPEG of coloured segments with a little noise: photo-like in size and content."""
    generator = torch.Generator().manual_seed(seed)
    labels = voronoi_labels(12, size, generator).numpy()
    colours = torch.randint(0, 256, (12, 3), generator=generator).numpy().astype(np.uint8)
    noise = np.random.default_rng(seed).integers(-8, 9, (*size, 3))
    image = np.clip(colours[labels].astype(int) + noise, 0, 255).astype(np.uint8)
    return cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()


class Server:
    """tools/serve.py in a process of its own, on a free loopback port; stopped with SIGTERM."""

    def __init__(self, config, max_batch_size: int, replicas: int, threads: int, device: str):
        self.log = tempfile.NamedTemporaryFile("w+", suffix=".log", prefix="serve-")
        command = [sys.executable, str(REPO_ROOT / "tools" / "serve.py"), "--port", "0"]
        command += ["--config-file", str(config), "--random-weights", "--replicas", str(replicas)]
        command += ["--max-batch-size", str(max_batch_size), "--max-pending", "1000"]
        command += ["--opts", "MODEL.DEVICE", device]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        self.process = subprocess.Popen(
            command, cwd=REPO_ROOT, stdout=self.log, stderr=subprocess.STDOUT, env=env
        )
        self.port = int(self._wait_for(r"Serving on http://127\.0\.0\.1:(\d+)"))
        while post(self.port, "GET", "/health")[0] != 200:
            time.sleep(0.2)

    def _wait_for(self, pattern: str, timeout: float = 300) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(pattern, open(self.log.name).read())
            if found:
                return found.group(1)
            if self.process.poll() is not None:
                break
            time.sleep(0.2)
        raise RuntimeError(f"the server did not start:\n{open(self.log.name).read()[-3000:]}")

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(120)
        self.log.close()


def post(port: int, method: str, path: str, body: bytes = None):
    """-> (status, seconds); status 0 for a connection error."""
    start = time.perf_counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    try:
        connection.request(method, path, body=body, headers={"Content-Type": "image/jpeg"})
        response = connection.getresponse()
        response.read()
        status = response.status
    except OSError:
        status = 0
    finally:
        connection.close()
    return status, time.perf_counter() - start


def load(port: int, body: bytes, concurrency: int, requests: int, max_seconds: float) -> Dict:
    """``requests`` POST /predict from ``concurrency`` clients, each sending its next when answered."""
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(lambda _: post(port, "POST", "/predict", body), range(concurrency)))
        stop_sending = time.monotonic() + max_seconds
        remaining = iter(range(requests))

        def client() -> List:
            results = []
            for _ in remaining:  # the shared iterator bounds the total count
                if time.monotonic() > stop_sending:
                    break
                results.append(post(port, "POST", "/predict", body))
            return results

        start = time.perf_counter()
        results = [r for rs in pool.map(lambda _: client(), range(concurrency)) for r in rs]
        wall = time.perf_counter() - start
    latencies = np.array([seconds for status, seconds in results if status == 200]) * 1000
    p50, p95, p99 = np.percentile(latencies, [50, 95, 99]) if len(latencies) else [np.nan] * 3
    return {
        "images/s": len(latencies) / wall,
        "p50": p50,
        "p95": p95,
        "p99": p99,
        "errors": sum(status != 200 for status, _ in results),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["r18", "r50"])
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 4, 16])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[8, 1], help="1: off")
    parser.add_argument("--replicas", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--requests", type=int, default=64, help="per concurrency level")
    parser.add_argument("--max-seconds", type=float, default=120, help="of sending, per level")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of each server")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs, {args.threads} torch threads per server, device {args.device}")
    print(HEADER)
    for name in args.models:
        config, size = MODELS[name]
        body = jpeg_image(size)
        for batch_size in args.batch_sizes:
            for replicas in args.replicas:
                server = Server(config, batch_size, replicas, args.threads, args.device)
                try:
                    for concurrency in args.concurrency:
                        row = load(server.port, body, concurrency, args.requests, args.max_seconds)
                        batching = f"up to {batch_size}" if batch_size > 1 else "off"
                        print(
                            f"| {name.upper()} | {size[1]}x{size[0]} | {batching} | {replicas} "
                            f"| {concurrency} | {row['images/s']:.2f} | {row['p50']:.0f} "
                            f"| {row['p95']:.0f} | {row['p99']:.0f} | {row['errors']} |",
                            flush=True,
                        )
                finally:
                    server.stop()


if __name__ == "__main__":
    main()
