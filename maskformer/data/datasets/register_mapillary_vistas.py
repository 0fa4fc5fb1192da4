"""Mapillary Vistas v1.2 semantic segmentation (65 classes; label 65 = unlabeled, ignored)."""

import os

from .utils import datasets_root, register_sem_seg

__all__ = ["MAPILLARY_VISTAS_CLASSES", "MAPILLARY_VISTAS_COLORS", "register_all_mapillary_vistas"]

# (name, colour) of labels 0-64, from the dataset's config_v1.2.json
# fmt: off
_CATEGORIES = [
    ("Bird", (165, 42, 42)), ("Ground Animal", (0, 192, 0)), ("Curb", (196, 196, 196)),
    ("Fence", (190, 153, 153)), ("Guard Rail", (180, 165, 180)), ("Barrier", (90, 120, 150)),
    ("Wall", (102, 102, 156)), ("Bike Lane", (128, 64, 255)),
    ("Crosswalk - Plain", (140, 140, 200)), ("Curb Cut", (170, 170, 170)),
    ("Parking", (250, 170, 160)), ("Pedestrian Area", (96, 96, 96)),
    ("Rail Track", (230, 150, 140)), ("Road", (128, 64, 128)), ("Service Lane", (110, 110, 110)),
    ("Sidewalk", (244, 35, 232)), ("Bridge", (150, 100, 100)), ("Building", (70, 70, 70)),
    ("Tunnel", (150, 120, 90)), ("Person", (220, 20, 60)), ("Bicyclist", (255, 0, 0)),
    ("Motorcyclist", (255, 0, 100)), ("Other Rider", (255, 0, 200)),
    ("Lane Marking - Crosswalk", (200, 128, 128)), ("Lane Marking - General", (255, 255, 255)),
    ("Mountain", (64, 170, 64)), ("Sand", (230, 160, 50)), ("Sky", (70, 130, 180)),
    ("Snow", (190, 255, 255)), ("Terrain", (152, 251, 152)), ("Vegetation", (107, 142, 35)),
    ("Water", (0, 170, 30)), ("Banner", (255, 255, 128)), ("Bench", (250, 0, 30)),
    ("Bike Rack", (100, 140, 180)), ("Billboard", (220, 220, 220)),
    ("Catch Basin", (220, 128, 128)), ("CCTV Camera", (222, 40, 40)),
    ("Fire Hydrant", (100, 170, 30)), ("Junction Box", (40, 40, 40)), ("Mailbox", (33, 33, 33)),
    ("Manhole", (100, 128, 160)), ("Phone Booth", (142, 0, 0)), ("Pothole", (70, 100, 150)),
    ("Street Light", (210, 170, 100)), ("Pole", (153, 153, 153)),
    ("Traffic Sign Frame", (128, 128, 128)), ("Utility Pole", (0, 0, 80)),
    ("Traffic Light", (250, 170, 30)), ("Traffic Sign (Back)", (192, 192, 192)),
    ("Traffic Sign (Front)", (220, 220, 0)), ("Trash Can", (140, 140, 20)),
    ("Bicycle", (119, 11, 32)), ("Boat", (150, 0, 255)), ("Bus", (0, 60, 100)),
    ("Car", (0, 0, 142)), ("Caravan", (0, 0, 90)), ("Motorcycle", (0, 0, 230)),
    ("On Rails", (0, 80, 100)), ("Other Vehicle", (128, 64, 64)), ("Trailer", (0, 0, 110)),
    ("Truck", (0, 0, 70)), ("Wheeled Slow", (0, 0, 192)), ("Car Mount", (32, 32, 32)),
    ("Ego Vehicle", (120, 10, 10)),
]
# fmt: on
MAPILLARY_VISTAS_CLASSES = [name for name, _ in _CATEGORIES]
MAPILLARY_VISTAS_COLORS = [list(color) for _, color in _CATEGORIES]
assert len(_CATEGORIES) == 65


def register_all_mapillary_vistas(root):
    """``mapillary_vistas_sem_seg_{train,val}`` under ``root/mapillary_vistas``."""
    root = os.path.join(root, "mapillary_vistas")
    for name, dirname in (("train", "training"), ("val", "validation")):
        register_sem_seg(
            f"mapillary_vistas_sem_seg_{name}",
            os.path.join(root, dirname, "images"),
            os.path.join(root, dirname, "labels"),
            image_ext="jpg",
            gt_ext="png",
            stuff_classes=MAPILLARY_VISTAS_CLASSES,
            stuff_colors=MAPILLARY_VISTAS_COLORS,
            ignore_label=65,
        )


register_all_mapillary_vistas(datasets_root())
