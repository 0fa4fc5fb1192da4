"""Model inputs: images and training targets."""

import torch
from detectron2.structures import Instances


def block_images(seed=0, sizes=((90, 120), (70, 100))):
    """uint8 (3, H, W) images of a 3x3 grid of random colours plus a little noise."""
    generator = torch.Generator().manual_seed(seed)
    images = []
    for h, w in sizes:
        colours = torch.randint(0, 256, (3, 3, 3), generator=generator)
        grid = colours[:, (torch.arange(h) * 3 // h)[:, None], (torch.arange(w) * 3 // w)[None, :]]
        noise = torch.randint(-10, 11, (3, h, w), generator=generator)
        images.append((grid + noise).clamp(0, 255).to(torch.uint8))
    return images


def random_image(h, w, seed=0):
    """A uint8 (3, H, W) image of uniform random pixels."""
    return torch.randint(
        0, 256, (3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed)
    )


def box_instances(h, w, classes, boxes):
    """Training targets of an (h, w) image: one mask per class in ``classes``, the (y0, y1, x0, x1)
    box of ``boxes``."""
    inst = Instances((h, w))
    masks = torch.zeros(len(classes), h, w, dtype=torch.bool)
    for m, (y0, y1, x0, x1) in zip(masks, boxes):
        m[y0:y1, x0:x1] = True
    inst.gt_classes = torch.tensor(classes, dtype=torch.int64)
    inst.gt_masks = masks
    return inst
