"""The MaskFormer meta-architecture: backbone + MaskFormer head, set-prediction loss, and inference."""

import contextlib
import dataclasses
import logging
from typing import Dict, List, Optional, Tuple

import torch
from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.modeling import META_ARCH_REGISTRY, Backbone
from detectron2.structures import BitMasks, ImageList
from torch import nn

from .config import SpeedSettings
from .modeling.build import build_backbone, build_sem_seg_head
from .modeling.criterion import SetCriterion
from .modeling.inference import InferenceSettings, inference
from .modeling.matcher import HungarianMatcher
from .modeling.sliding_window import SlidingWindow, sliding_window_inference
from .utils.cpu_bfloat16 import warn_if_bfloat16_is_emulated

logger = logging.getLogger(__name__)


@META_ARCH_REGISTRY.register()
class MaskFormer(nn.Module):
    """
    Input: a list of dicts, one per image, with "image" (3, H, W) in INPUT.FORMAT, and in training
    "instances" (gt_classes (M,), gt_masks (M, H, W)); optional "height"/"width" for the output size.

    Training returns the weighted loss dict. Inference returns per image {"sem_seg": (K, height, width)}
    (inside ``semantic_labels_only``: {"sem_seg_labels": (height, width)}) plus "panoptic_seg":
    (ids (height, width) int32, segments_info) with PANOPTIC_ON and "instances" with INSTANCE_ON.

    Inference (``maskformer.modeling.inference``) follows ``inference_settings``, built from the
    published constructor's arguments (thing classes from ``metadata``).

    ``speed``: the speed options (``SpeedSettings``; ``from_config`` hands the same object to the
    backbone and head it builds) of which the model applies ``sem_seg_fast`` and ``resize_by_matmul`` (through
    ``inference_settings``) and ``channels_last``; ``SpeedSettings.exact()`` reproduces the
    published outputs. Opt-in: ``inference_amp_dtype`` (autocast of backbone and head in
    inference), ``torch_compile`` (torch.compile of backbone and head, state_dict keys unchanged).
    """

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        sem_seg_head: nn.Module,
        criterion: nn.Module,
        num_queries: int,
        object_mask_threshold: float,
        overlap_threshold: float,
        metadata,
        size_divisibility: int,
        sem_seg_postprocess_before_inference: bool,
        pixel_mean: Tuple[float],
        pixel_std: Tuple[float],
        panoptic_on: bool = False,
        instance_on: bool = False,
        test_topk_per_image: int = 100,
        speed: SpeedSettings = SpeedSettings(),
        inference_amp_dtype: Optional[torch.dtype] = None,
        torch_compile: bool = False,
        sliding_window: Optional[SlidingWindow] = None,
    ):
        super().__init__()
        self.backbone = backbone
        self.sem_seg_head = sem_seg_head
        self.criterion = criterion
        self.num_queries = num_queries
        self.metadata = metadata
        self.size_divisibility = (
            size_divisibility if size_divisibility >= 0 else backbone.size_divisibility
        )
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        thing_ids = getattr(metadata, "thing_dataset_id_to_contiguous_id", None) or {}
        self.inference_settings = InferenceSettings(
            sem_seg_postprocess_before_inference=bool(sem_seg_postprocess_before_inference),
            panoptic_on=bool(panoptic_on),
            instance_on=bool(instance_on),
            object_mask_threshold=float(object_mask_threshold),
            overlap_threshold=float(overlap_threshold),
            test_topk_per_image=int(test_topk_per_image),
            thing_ids=frozenset(int(i) for i in thing_ids.values()),
            sem_seg_fast=speed.sem_seg_fast,
            resize_by_matmul=speed.resize_by_matmul,
        )
        self.inference_amp_dtype = inference_amp_dtype
        self.sliding_window = sliding_window
        self.speed = speed
        self.channels_last = speed.channels_last
        if self.channels_last:
            self.to(memory_format=torch.channels_last)
        if torch_compile:
            # in-place compilation keeps the modules (and so the checkpoint keys) as they are
            self.backbone.compile()
            self.sem_seg_head.compile()

    @classmethod
    def from_config(cls, cfg):
        speed = SpeedSettings.from_config(cfg)
        backbone = build_backbone(cfg, speed)
        sem_seg_head = build_sem_seg_head(cfg, backbone.output_shape(), speed)

        mf = cfg.MODEL.MASK_FORMER
        if mf.TEST.AMP and cfg.MODEL.DEVICE == "cpu" and cfg.SOLVER.AMP.DTYPE == "bfloat16":
            warn_if_bfloat16_is_emulated(logger, "MODEL.MASK_FORMER.TEST.AMP False")
        matcher = HungarianMatcher(
            cost_class=1.0, cost_mask=mf.MASK_WEIGHT, cost_dice=mf.DICE_WEIGHT
        )
        layer_weights = {"loss_ce": 1.0, "loss_mask": mf.MASK_WEIGHT, "loss_dice": mf.DICE_WEIGHT}
        weight_dict = dict(layer_weights)
        if mf.DEEP_SUPERVISION:
            for i in range(mf.DEC_LAYERS - 1):
                weight_dict.update({f"{k}_{i}": v for k, v in layer_weights.items()})
        criterion = SetCriterion(
            sem_seg_head.num_classes,
            matcher=matcher,
            weight_dict=weight_dict,
            eos_coef=mf.NO_OBJECT_WEIGHT,
            num_points=mf.TRAIN_NUM_POINTS,
            oversample_ratio=mf.OVERSAMPLE_RATIO,
            importance_sample_ratio=mf.IMPORTANCE_SAMPLE_RATIO,
        )
        return {
            "backbone": backbone,
            "sem_seg_head": sem_seg_head,
            "criterion": criterion,
            "num_queries": mf.NUM_OBJECT_QUERIES,
            "object_mask_threshold": mf.TEST.OBJECT_MASK_THRESHOLD,
            "overlap_threshold": mf.TEST.OVERLAP_THRESHOLD,
            "metadata": MetadataCatalog.get(cfg.DATASETS.TRAIN[0]) if cfg.DATASETS.TRAIN else None,
            "size_divisibility": mf.SIZE_DIVISIBILITY,
            # panoptic and instance outputs are computed at the output resolution
            "sem_seg_postprocess_before_inference": (
                mf.TEST.SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE
                or mf.TEST.PANOPTIC_ON
                or mf.TEST.INSTANCE_ON
            ),
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "panoptic_on": mf.TEST.PANOPTIC_ON,
            "instance_on": mf.TEST.INSTANCE_ON,
            "test_topk_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
            "speed": speed,
            "inference_amp_dtype": getattr(torch, cfg.SOLVER.AMP.DTYPE) if mf.TEST.AMP else None,
            "torch_compile": cfg.MODEL.COMPILE,
            "sliding_window": SlidingWindow.from_config(cfg),
        }

    @property
    def device(self):
        return self.pixel_mean.device

    def preprocess_image(self, batched_inputs: List[Dict]) -> ImageList:
        images = [
            (x["image"].to(self.device) - self.pixel_mean) / self.pixel_std for x in batched_inputs
        ]
        images = ImageList.from_tensors(images, self.size_divisibility)
        if self.channels_last:
            images = ImageList(
                images.tensor.contiguous(memory_format=torch.channels_last), images.image_sizes
            )
        return images

    def forward(self, batched_inputs: List[Dict]):
        if self.sliding_window is not None and not self.training:
            return [self.sliding_window_inference(x) for x in batched_inputs]
        images = self.preprocess_image(batched_inputs)
        outputs = self.head_outputs(images.tensor)

        if self.training:
            targets = self.prepare_targets([x["instances"] for x in batched_inputs], images)
            losses = self.criterion(outputs, targets)
            weights = self.criterion.weight_dict
            return {k: v * weights[k] for k, v in losses.items() if k in weights}

        return self.postprocess(outputs, batched_inputs, images)

    def head_outputs(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Backbone and head on normalised, padded (B, 3, H, W) images: "pred_logits" (B, Q, K+1),
        "pred_masks" (B, Q, H/4, W/4) and, in training, "aux_outputs"."""
        # Training precision is the trainer's business (its autocast around this forward); this is
        # inference's own switch. No autocast(enabled=False) otherwise: it would turn the
        # trainer's off.
        amp = self.inference_amp_dtype is not None and not self.training
        autocast = (
            torch.autocast(self.device.type, dtype=self.inference_amp_dtype)
            if amp
            else contextlib.nullcontext()
        )
        with autocast:
            return self.sem_seg_head(self.backbone(images))

    def sliding_window_inference(self, batched_input: Dict) -> Dict:
        """One image's results by ``sliding_window`` (``modeling.sliding_window``)."""
        image = batched_input["image"]
        height, width = image.shape[-2:]
        output_size = (batched_input.get("height", height), batched_input.get("width", width))

        def run_windows(crops: List[torch.Tensor]):
            images = self.preprocess_image([{"image": crop} for crop in crops])
            outputs = self.head_outputs(images.tensor)
            return outputs["pred_logits"], outputs["pred_masks"], images.tensor.shape[-2:]

        return sliding_window_inference(
            image, output_size, self.sliding_window, run_windows, self.inference_settings
        )

    def postprocess(
        self, outputs: Dict, batched_inputs: List[Dict], images: ImageList
    ) -> List[Dict]:
        """
        The head's outputs of ``images`` -> per image the results of :func:`inference`, at the
        input's "height" x "width" (default: its size in the batch).
        """
        output_sizes = [
            (x.get("height", h), x.get("width", w))
            for x, (h, w) in zip(batched_inputs, images.image_sizes)
        ]
        return inference(
            outputs["pred_logits"],
            outputs["pred_masks"],
            images.tensor.shape[-2:],
            images.image_sizes,
            output_sizes,
            self.inference_settings,
        )

    @contextlib.contextmanager
    def semantic_labels_only(self):
        """
        Within: inference gives "sem_seg_labels" (height, width) int32, each pixel's best class, in
        place of the "sem_seg" (K, height, width) scores. That argmax is all an evaluator reads,
        and the scores cost time and memory (150 x 512 x 512 floats, 157 MB, per ADE20K image).
        """
        settings = self.inference_settings
        self.inference_settings = dataclasses.replace(settings, semantic_labels_only=True)
        try:
            yield self
        finally:
            self.inference_settings = settings

    def prepare_targets(self, instances, images: ImageList) -> List[Dict[str, torch.Tensor]]:
        """Per image "labels" (M,) and "masks" (M, H_pad, W_pad) zero-padded to the batch size."""
        h_pad, w_pad = images.tensor.shape[-2:]
        targets = []
        for inst in instances:
            masks = inst.gt_masks.tensor if isinstance(inst.gt_masks, BitMasks) else inst.gt_masks
            padded = masks.new_zeros((masks.shape[0], h_pad, w_pad))
            padded[:, : masks.shape[1], : masks.shape[2]] = masks
            targets.append(
                {"labels": inst.gt_classes.to(self.device), "masks": padded.to(self.device)}
            )
        return targets
