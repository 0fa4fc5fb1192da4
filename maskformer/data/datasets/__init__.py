"""Dataset registrations (lazy: nothing is read at import)."""

from . import (  # noqa: F401
    register_ade20k_full,
    register_ade20k_panoptic,
    register_coco_stuff_10k,
    register_mapillary_vistas,
    register_synthetic,
)
