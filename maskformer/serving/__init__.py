"""
The inference service of ``tools/serve.py`` (the ``serve`` extra: ``pip install -e .[serve]``):
HTTP prediction with dynamic batching over model replicas, and a page to try it in a browser.
Nothing in the core imports this package. See docs/deployment.md.
"""

from .batching import BatchQueue, Overloaded
from .payload import RequestError, decode_image, prediction_json
from .service import Service, ServiceOptions, build_replicas, create_app

__all__ = [
    "BatchQueue",
    "Overloaded",
    "RequestError",
    "Service",
    "ServiceOptions",
    "build_replicas",
    "create_app",
    "decode_image",
    "prediction_json",
]
