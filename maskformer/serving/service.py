"""
The inference service: a FastAPI app over model replicas behind a :class:`BatchQueue`.

- ``GET /health``: 200 once the model is loaded, 503 before (it loads in the background, so that
  the server answers meanwhile); ``GET /metrics``: Prometheus text; ``GET /``: the page.
- ``POST /predict``: the image file as the body, or as the multipart field ``file`` -> JSON
  (:func:`maskformer.serving.payload.prediction_json`).
- Every refusal is JSON ``{"error": "..."}``: 400 not an image, 413 body or pixels over the limits,
  503 overloaded or still loading (with Retry-After), 404 / 405 for other paths and methods.
"""

import asyncio
import collections
import contextlib
import dataclasses
import importlib.resources
import logging
import threading
from typing import Callable, Dict, List, Optional, Sequence

import torch
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from ..prediction_content import PredictionContent
from ..predictor import Predictor
from .batching import BatchQueue, Overloaded
from .payload import RequestError, decode_image, prediction_json, uploaded_file

__all__ = ["ServiceOptions", "Service", "build_replicas", "create_app"]

logger = logging.getLogger(__name__)

# seconds a client is told to wait while the model loads
LOADING_RETRY_AFTER = 5
_PATHS = ("/", "/health", "/metrics", "/predict")


@dataclasses.dataclass
class ServiceOptions:
    """Batching (``max_batch_size`` 1: off) and the limits of what one request may ask."""

    max_batch_size: int = 4
    batch_timeout: float = 0.005  # seconds a batch waits for more images after its first
    max_pending: int = 64  # images waiting or running; more -> 503
    max_body_bytes: int = 20 * 2**20


def build_replicas(
    cfg,
    exported: Optional[str] = None,
    devices: Sequence[str] = (),
    replicas_per_device: int = 1,
    random_weights: bool = False,
) -> List[Predictor]:
    """
    ``replicas_per_device`` Predictors of ``cfg`` (or of the ``exported`` model file) on each of
    ``devices`` (default: MODEL.DEVICE). Random weights are the same in every replica.
    """
    predictors = []
    for device in devices or [cfg.MODEL.DEVICE]:
        for _ in range(replicas_per_device):
            if exported:
                placed = cfg.clone()
                placed.defrost()
                placed.MODEL.DEVICE = device
                predictors.append(Predictor.from_exported(exported, placed))
                continue
            with torch.random.fork_rng(devices=[]):  # the caller's random state is kept
                torch.manual_seed(0)
                predictors.append(Predictor(cfg, device=device, random_weights=random_weights))
    return predictors


class Service:
    """
    The replicas that ``load()`` returns, loaded by ``start()`` in a thread, behind a BatchQueue.
    ``load_error``: why loading failed, after ``on_load_failure()`` was called (the server stops).
    """

    def __init__(
        self,
        load: Callable[[], List[Predictor]],
        options: ServiceOptions,
        on_load_failure: Callable[[], None] = lambda: None,
    ):
        self.options = options
        self.load_error: Optional[BaseException] = None
        self.queue: Optional[BatchQueue] = None  # set once the replicas are loaded, with:
        self.predictor: Optional[Predictor] = None  # the first replica: input format, tasks
        self.content: Optional[PredictionContent] = None
        self.max_pixels = 0
        self.responses: Dict = collections.Counter()  # (path, status) -> count
        self._load = load
        self._on_load_failure = on_load_failure
        self._loader = threading.Thread(target=self._load_replicas, name="model-loader")

    def start(self) -> None:
        self._loader.start()

    def close(self) -> None:
        """After the last request: waits for loading to end, then stops the replicas."""
        self._loader.join()
        if self.queue is not None:
            self.queue.close()

    def _load_replicas(self) -> None:
        try:
            predictors = self._load()
            self.predictor = predictors[0]
            self.content = PredictionContent(self.predictor)
            self.max_pixels = self.predictor.cfg.INPUT.MAX_IMAGE_PIXELS
            options = self.options
            self.queue = BatchQueue(
                predictors, options.max_batch_size, options.batch_timeout, options.max_pending
            )
        except BaseException as e:  # the server stops; the command line reports it
            self.load_error = e
            self._on_load_failure()
            return
        logger.info(
            f"Model loaded: {len(predictors)} replica(s) on {self.predictor.cfg.MODEL.DEVICE}, "
            f"tasks {', '.join(self.predictor.tasks)}; batches of up to {options.max_batch_size}"
        )

    async def predict(self, request: Request) -> Dict:
        if self.queue is None:
            raise RequestError(
                503, "the model is still loading", {"Retry-After": str(LOADING_RETRY_AFTER)}
            )
        body = await _read_body(request, self.options.max_body_bytes)
        image = await run_in_threadpool(self._decode, body, request.headers.get("content-type", ""))
        try:
            future = self.queue.submit(image)
        except Overloaded as e:
            raise RequestError(503, str(e), {"Retry-After": str(e.retry_after)}) from e
        prediction = await asyncio.wrap_future(future)
        return await run_in_threadpool(prediction_json, self.content, prediction)

    def _decode(self, body: bytes, content_type: str):
        return decode_image(uploaded_file(body, content_type), self.predictor, self.max_pixels)

    def health(self) -> JSONResponse:
        if self.queue is None:
            status = "failed to load" if self.load_error else "loading"
            return JSONResponse({"status": status}, 503)
        return JSONResponse(
            {"status": "ok", "tasks": list(self.predictor.tasks), "replicas": self.queue.replicas}
        )

    def metrics(self) -> str:
        """Prometheus text format."""
        lines = [
            "# TYPE maskformer_responses_total counter",
            *(
                f'maskformer_responses_total{{path="{path}",code="{code}"}} {count}'
                for (path, code), count in sorted(self.responses.items())
            ),
            "# TYPE maskformer_model_loaded gauge",
            f"maskformer_model_loaded {int(self.queue is not None)}",
        ]
        if self.queue is not None:
            stats = self.queue.stats
            values = {
                "images_total counter": stats.images,
                "batches_total counter": stats.batches,
                "failed_batches_total counter": stats.failed_batches,
                "inference_seconds_total counter": round(stats.inference_seconds, 6),
                "images_pending gauge": stats.pending,
                "images_waiting gauge": self.queue.waiting,
                "replicas gauge": self.queue.replicas,
            }
            for name_and_type, value in values.items():
                name, kind = name_and_type.split()
                lines += [f"# TYPE maskformer_{name} {kind}", f"maskformer_{name} {value}"]
        return "\n".join(lines) + "\n"


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused (413) past ``limit`` bytes: unread where Content-Length says so."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise RequestError(
            413, f"body of {int(declared):,} bytes, more than this server's limit of {limit:,}"
        )
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"body of more than this server's limit of {limit:,} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


class _CountResponses:
    """ASGI middleware: counts the responses by path and status code into ``counts``."""

    def __init__(self, app, counts: Dict):
        self.app = app
        self.counts = counts

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"] if scope["path"] in _PATHS else "other"

        async def counted_send(message):
            if message["type"] == "http.response.start":
                self.counts[(path, message["status"])] += 1
            await send(message)

        try:
            await self.app(scope, receive, counted_send)
        except Exception:  # answered 500 by the server-error middleware outside this one
            self.counts[(path, 500)] += 1
            raise


def create_app(service: Service) -> FastAPI:
    """The app: ``service`` starts loading when the server starts and closes when it stops."""
    page = importlib.resources.files(__package__).joinpath("static/index.html").read_text("utf-8")

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        service.start()
        yield
        await run_in_threadpool(service.close)

    # no /docs: its page would fetch its scripts from the internet
    app = FastAPI(lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(_CountResponses, counts=service.responses)

    @app.exception_handler(RequestError)
    async def refused(request: Request, e: RequestError):
        return JSONResponse({"error": e.message}, e.status, headers=e.headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException):
        return JSONResponse({"error": str(e.detail)}, e.status_code, headers=e.headers)

    @app.exception_handler(Exception)
    async def failed(request: Request, e: Exception):
        logger.error(f"{request.method} {request.url.path} failed", exc_info=e)
        return JSONResponse({"error": f"internal error ({type(e).__name__}: {e})"}, 500)

    @app.get("/", response_class=HTMLResponse)
    async def index():
        return page

    @app.get("/health")
    async def health():
        return service.health()

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics():
        return service.metrics()

    @app.post("/predict")
    async def predict(request: Request):
        return JSONResponse(await service.predict(request))

    return app
