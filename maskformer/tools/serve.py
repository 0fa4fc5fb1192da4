"""
The inference service: ``POST /predict`` (the image file as the body, or as the multipart field
``file``), ``GET /health``, ``GET /metrics`` and a page to try it at ``GET /``. Needs the serve
extra (``pip install -e .[serve]``); endpoints, limits and deployment: docs/deployment.md.

``python tools/serve.py`` in a clone, the ``maskformer-serve`` command once installed:

    python tools/serve.py --config-file CONFIG --weights model_final.pth [--port 8000]
    python tools/serve.py --model-dir output/my_run --max-batch-size 8 --replicas 2
    python tools/serve.py --exported export/model.onnx [--config-file CONFIG]
    python tools/serve.py --config-file configs/synthetic/maskformer_R18_panoptic.yaml --random-weights

Binds 127.0.0.1 unless --host says otherwise; --port 0 takes a free port (logged). The weights
options are demo.py's. SIGTERM (or Ctrl-C) stops taking connections, answers the requests already
in, and exits 0. User errors (bad option, config or weights, a port that cannot be bound) print
their message alone, exit code 2 (--debug: the traceback too).
"""

import argparse
import logging
import signal
import socket
import sys
from typing import List, Optional

from detectron2.config import CfgNode
from detectron2.utils.logger import setup_logger

from ..engine.cli import USER_ERROR_EXIT_CODE, exit_on_user_error
from ..engine.config_loading import ConfigError
from . import arguments

try:
    import uvicorn

    from ..serving import Service, ServiceOptions, build_replicas, create_app
except ImportError as e:  # the serve extra is missing
    print(
        f"error: {e}; the service needs the serve extra: pip install -e .[serve]", file=sys.stderr
    )
    sys.exit(USER_ERROR_EXIT_CODE)

logger = logging.getLogger("maskformer.serve")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.strip().split("\n\n")[0])
    arguments.add_model_arguments(
        parser, random_weights_use="for trying the service only", exported=True
    )
    parser.add_argument("--weights", metavar="FILE", help="trained weights (MODEL.WEIGHTS)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=arguments.at_least(0), default=8000, help="0: any free port")
    defaults = ServiceOptions()
    parser.add_argument(
        "--max-batch-size",
        type=arguments.at_least(1),
        default=defaults.max_batch_size,
        help="images of concurrent requests run together (1: no batching)",
    )
    parser.add_argument(
        "--batch-timeout-ms",
        type=arguments.at_least(0, float),
        default=defaults.batch_timeout * 1000,
        help="how long a batch waits for more images after its first",
    )
    parser.add_argument(
        "--max-pending",
        type=arguments.at_least(1),
        default=defaults.max_pending,
        help="images waiting or running; more requests are answered 503 with Retry-After",
    )
    parser.add_argument(
        "--max-body-mb",
        type=arguments.at_least(0.001, float),
        default=defaults.max_body_bytes / 2**20,
        help="larger request bodies are answered 413 (pixels: --opts INPUT.MAX_IMAGE_PIXELS N)",
    )
    parser.add_argument(
        "--replicas", type=arguments.at_least(1), default=1, help="model replicas on each device"
    )
    parser.add_argument(
        "--devices", nargs="+", metavar="DEVICE", help="e.g. cuda:0 cuda:1 (default MODEL.DEVICE)"
    )
    parser.add_argument(
        "--graceful-timeout",
        type=arguments.at_least(0, float),
        default=30.0,
        metavar="SECONDS",
        help="at shutdown, how long the requests in flight may take before they are cancelled",
    )
    arguments.add_debug(parser)
    arguments.add_opts(parser)
    return parser


def setup_cfg(args) -> CfgNode:
    """The frozen config of the options (demo.py's rules), checked before the server starts."""
    if args.exported and args.weights:
        raise ConfigError("--exported holds its weights: drop --weights")
    cfg = arguments.model_config(args, ["MODEL.WEIGHTS", args.weights] if args.weights else [])
    cfg.freeze()
    return cfg


def service_options(args) -> ServiceOptions:
    """The ServiceOptions of the options, in the fields' units."""
    return ServiceOptions(
        max_batch_size=args.max_batch_size,
        batch_timeout=args.batch_timeout_ms / 1000,
        max_pending=args.max_pending,
        max_body_bytes=int(args.max_body_mb * 2**20),
    )


def listen(host: str, port: int) -> socket.socket:
    """A listening socket, bound before the model loads: a taken port is a user error at once."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        return socket.create_server((host, port), family=family, backlog=2048)
    except OSError as e:
        raise ConfigError(
            f"--host {host} --port {port}: cannot listen there ({e.strerror or e})"
        ) from e


def _exit_cleanly(signum, frame):
    raise SystemExit(0)


def serve(args) -> int:
    cfg = setup_cfg(args)
    options = service_options(args)
    sock = listen(args.host, args.port)
    host, port = sock.getsockname()[:2]

    def load():
        return build_replicas(
            cfg, args.exported, args.devices or (), args.replicas, args.random_weights
        )

    def stop():
        server.should_exit = True

    service = Service(load, options, on_load_failure=stop)
    config = uvicorn.Config(
        create_app(service),
        host=host,
        port=port,
        timeout_graceful_shutdown=args.graceful_timeout,
        log_config=None,  # the loggers set up by main
    )
    server = uvicorn.Server(config)
    url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    logger.info(f"Serving on {url} (page: {url}/, health: {url}/health); the model is loading")
    # uvicorn answers SIGTERM / SIGINT by draining, then raises the signal again with the handler
    # found before it: this one, which ends the process with exit code 0
    previous = {s: signal.signal(s, _exit_cleanly) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.run(sockets=[sock])
    finally:
        for stop_signal, handler in previous.items():
            signal.signal(stop_signal, handler)
    if service.load_error is not None:
        raise service.load_error
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    args = get_parser().parse_args(argv)
    for name in ("fvcore", "detectron2", "maskformer", "uvicorn"):
        setup_logger(name=name)
    with exit_on_user_error(args.debug):
        return serve(args)
