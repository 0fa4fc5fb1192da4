"""
COCO-Stuff class facts: the 171 classes with annotations (the 80 COCO thing classes, ids 1-90
with gaps, then the 91 stuff classes, ids 92-182) and the 182-id to contiguous-id mapping.
"""

from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

from .utils import distinct_colors

__all__ = ["COCO_STUFF_171_CATEGORIES", "COCO_STUFF_ID_TO_CONTIGUOUS"]

# fmt: off
_STUFF_NAMES = [
    "banner", "blanket", "branch", "bridge", "building-other", "bush", "cabinet", "cage",
    "cardboard", "carpet", "ceiling-other", "ceiling-tile", "cloth", "clothes", "clouds",
    "counter", "cupboard", "curtain", "desk-stuff", "dirt", "door-stuff", "fence",
    "floor-marble", "floor-other", "floor-stone", "floor-tile", "floor-wood", "flower", "fog",
    "food-other", "fruit", "furniture-other", "grass", "gravel", "ground-other", "hill",
    "house", "leaves", "light", "mat", "metal", "mirror-stuff", "moss", "mountain", "mud",
    "napkin", "net", "paper", "pavement", "pillow", "plant-other", "plastic", "platform",
    "playingfield", "railing", "railroad", "river", "road", "rock", "roof", "rug", "salad",
    "sand", "sea", "shelf", "sky-other", "skyscraper", "snow", "solid-other", "stairs",
    "stone", "straw", "structural-other", "table", "tent", "textile-other", "towel", "tree",
    "vegetable", "wall-brick", "wall-concrete", "wall-other", "wall-panel", "wall-stone",
    "wall-tile", "wall-wood", "water-other", "waterdrops", "window-blind", "window-other",
    "wood",
]
# fmt: on


def _categories():
    # COCO panoptic colours where the class exists there, reproducible ones otherwise
    panoptic_colors = {c["id"]: list(c["color"]) for c in COCO_CATEGORIES}
    fallback = distinct_colors(len(_STUFF_NAMES), seed=171)
    things = [
        {"id": c["id"], "name": c["name"], "color": list(c["color"]), "isthing": 1}
        for c in COCO_CATEGORIES
        if c["isthing"]
    ]
    stuff = [
        {"id": i, "name": name, "color": panoptic_colors.get(i, fallback[i - 92]), "isthing": 0}
        for i, name in enumerate(_STUFF_NAMES, start=92)
    ]
    return things + stuff


COCO_STUFF_171_CATEGORIES = _categories()
# COCO-Stuff id (1-182) -> contiguous id (0-170); the 11 unused thing ids are absent.
COCO_STUFF_ID_TO_CONTIGUOUS = {c["id"]: i for i, c in enumerate(COCO_STUFF_171_CATEGORIES)}
assert len(COCO_STUFF_171_CATEGORIES) == 171
