"""Files written by the code under test."""

import os
from typing import Dict, Tuple

from PIL import Image


def relative_file_paths(folder):
    """The paths of every file under ``folder``, relative to it, sorted."""
    return sorted(
        os.path.relpath(os.path.join(d, f), folder)
        for d, _, files in os.walk(folder)
        for f in files
    )


def file_contents(folder) -> Dict[str, bytes]:
    """{path relative to ``folder``: bytes} of every file under ``folder``."""
    contents = {}
    for path in relative_file_paths(folder):
        with open(os.path.join(folder, path), "rb") as f:
            contents[path] = f.read()
    return contents


def sample_size(dataset, split, image_name, png_name) -> Tuple[int, int]:
    """
    The (width, height) of a sample of a synthetic dataset's ``split``, once its files are checked
    to be what a real dataset holds, of one size: a JPEG RGB image, a one-channel label PNG and an
    RGB panoptic PNG.
    """
    image = Image.open(f"{dataset}/images/{split}/{image_name}")
    label = Image.open(f"{dataset}/sem_seg/{split}/{png_name}")
    panoptic = Image.open(f"{dataset}/panoptic/{split}/{png_name}")
    assert (image.format, image.mode) == ("JPEG", "RGB")
    assert (label.format, label.mode) == ("PNG", "L")
    assert (panoptic.format, panoptic.mode) == ("PNG", "RGB")
    assert image.size == label.size == panoptic.size
    return image.size
