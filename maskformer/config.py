"""Config keys of MaskFormer, added on top of detectron2's defaults and the DeepLab keys."""

from dataclasses import dataclass, fields
from typing import ClassVar, Dict

from detectron2.config import CfgNode as CN
from detectron2.projects.deeplab import add_deeplab_config


def add_maskformer_config(cfg):
    """
    Add every key the published MaskFormer configs use (with the published defaults) plus this
    project's own options. Also adds detectron2's DeepLab keys (poly LR, crop constraint,
    DeepLab ResNet stem) when they are missing, since every published config relies on them.
    """
    if not hasattr(cfg.SOLVER, "POLY_LR_POWER"):
        add_deeplab_config(cfg)

    # data
    cfg.INPUT.DATASET_MAPPER_NAME = "mask_former_semantic"
    cfg.INPUT.COLOR_AUG_SSD = False
    cfg.INPUT.SIZE_DIVISIBILITY = -1
    # An image with an EXIF orientation whose annotation carries none: was the annotation drawn on
    # the image as displayed or as stored? "refuse" (refused where its size cannot tell),
    # "annotations_displayed" or "annotations_stored"; see maskformer.data.reading.EXIF_ORIENTATIONS
    cfg.INPUT.EXIF_ORIENTATION = "refuse"
    # Images (and annotation files) with more pixels are refused before they are decoded, naming
    # the file and this key: PIL's decompression-bomb limit by default; 0 reads any size (a
    # 30000x30000 mosaic, with MODEL.MASK_FORMER.TEST.SLIDING_WINDOW to keep inference bounded).
    cfg.INPUT.MAX_IMAGE_PIXELS = 89478485

    # solver
    cfg.SOLVER.WEIGHT_DECAY_EMBED = 0.0
    cfg.SOLVER.OPTIMIZER = "ADAMW"
    cfg.SOLVER.BACKBONE_MULTIPLIER = 0.1
    # iterations between two lines of the console log, metrics.json and TensorBoard (losses are
    # still medians over the last 20 iterations)
    cfg.SOLVER.LOG_PERIOD = 20

    # mask_former model
    cfg.MODEL.MASK_FORMER = CN()
    cfg.MODEL.MASK_FORMER.DEEP_SUPERVISION = True
    cfg.MODEL.MASK_FORMER.NO_OBJECT_WEIGHT = 0.1
    cfg.MODEL.MASK_FORMER.DICE_WEIGHT = 1.0
    cfg.MODEL.MASK_FORMER.MASK_WEIGHT = 20.0
    # transformer
    cfg.MODEL.MASK_FORMER.NHEADS = 8
    cfg.MODEL.MASK_FORMER.DROPOUT = 0.1
    cfg.MODEL.MASK_FORMER.DIM_FEEDFORWARD = 2048
    cfg.MODEL.MASK_FORMER.ENC_LAYERS = 0
    cfg.MODEL.MASK_FORMER.DEC_LAYERS = 6
    cfg.MODEL.MASK_FORMER.PRE_NORM = False
    cfg.MODEL.MASK_FORMER.HIDDEN_DIM = 256
    cfg.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES = 100
    cfg.MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE = "res5"
    cfg.MODEL.MASK_FORMER.ENFORCE_INPUT_PROJ = False
    # padding of the batch inside the model; -1 uses the backbone's size_divisibility
    cfg.MODEL.MASK_FORMER.SIZE_DIVISIBILITY = 32
    # Point-sampled mask loss (this project's option): 0 keeps the paper's full-resolution loss;
    # N > 0 computes focal + dice on N points per mask, picked by uncertainty as in PointRend.
    cfg.MODEL.MASK_FORMER.TRAIN_NUM_POINTS = 0
    cfg.MODEL.MASK_FORMER.OVERSAMPLE_RATIO = 3.0
    cfg.MODEL.MASK_FORMER.IMPORTANCE_SAMPLE_RATIO = 0.75

    # inference
    cfg.MODEL.MASK_FORMER.TEST = CN()
    cfg.MODEL.MASK_FORMER.TEST.PANOPTIC_ON = False
    cfg.MODEL.MASK_FORMER.TEST.OBJECT_MASK_THRESHOLD = 0.0
    cfg.MODEL.MASK_FORMER.TEST.OVERLAP_THRESHOLD = 0.0
    cfg.MODEL.MASK_FORMER.TEST.SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE = False
    # This project's instance output (top-k query x class pairs, mask-score weighted) for COCO AP.
    cfg.MODEL.MASK_FORMER.TEST.INSTANCE_ON = False
    # Speed options of this project's inference. On by default, as their outputs stay within
    # tolerance of the published model's (see EXACT): SEM_SEG_FAST marginalises the semantic scores
    # at mask resolution and resizes the K class maps once (slightly different scores; the
    # published argmax but where a final resize mixes pixels), on inputs large enough for that to
    # pay (kernels.semantic_at_mask_resolution.fast_path_applies); FOLD_MASK_EMBED folds the mask
    # embeddings into the pixel decoder's last convolution (Q output channels, no dot products;
    # pixel decoders that do not declare mask_features_foldable keep the plain products);
    # RESIZE_BY_MATMUL resizes mask logits by two matrix products where that is faster on the CPU
    # (small masks: kernels.bilinear_by_matmul.matmul_resize_pays; equal up to float rounding).
    # Opt-in, as its precision is lower: AMP autocasts backbone and head to SOLVER.AMP.DTYPE.
    cfg.MODEL.MASK_FORMER.TEST.SEM_SEG_FAST = True
    cfg.MODEL.MASK_FORMER.TEST.RESIZE_BY_MATMUL = True
    cfg.MODEL.MASK_FORMER.TEST.AMP = False
    cfg.MODEL.MASK_FORMER.TEST.FOLD_MASK_EMBED = True
    # EXACT True turns off every speed option (SpeedSettings, below), whatever its
    # own value: the published computation order, for bit-level comparisons with the published
    # release. That includes FUSED_ATTENTION and CHANNELS_LAST, so also in training. The opt-in
    # options (TEST.AMP, COMPILE, SOLVER.AMP) are left as set.
    cfg.MODEL.MASK_FORMER.TEST.EXACT = False
    # Sliding-window inference (large images): windows of SIZE x SIZE pixels of the test-resized
    # image (0: the training crop INPUT.CROP.SIZE), STRIDE apart (0: two thirds of SIZE), run
    # BATCH_SIZE at a time (more use more memory; on a GPU they pay); their outputs are combined
    # into the whole image's results without holding the (K, H, W) scores of the whole image
    # (maskformer/modeling/sliding_window.py).
    cfg.MODEL.MASK_FORMER.TEST.SLIDING_WINDOW = CN()
    cfg.MODEL.MASK_FORMER.TEST.SLIDING_WINDOW.ENABLED = False
    cfg.MODEL.MASK_FORMER.TEST.SLIDING_WINDOW.SIZE = 0
    cfg.MODEL.MASK_FORMER.TEST.SLIDING_WINDOW.STRIDE = 0
    cfg.MODEL.MASK_FORMER.TEST.SLIDING_WINDOW.BATCH_SIZE = 2

    # pixel decoder
    cfg.MODEL.SEM_SEG_HEAD.MASK_DIM = 256
    cfg.MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS = 0
    cfg.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME = "BasePixelDecoder"

    # swin transformer backbone
    cfg.MODEL.SWIN = CN()
    cfg.MODEL.SWIN.PRETRAIN_IMG_SIZE = 224
    cfg.MODEL.SWIN.PATCH_SIZE = 4
    cfg.MODEL.SWIN.EMBED_DIM = 96
    cfg.MODEL.SWIN.DEPTHS = [2, 2, 6, 2]
    cfg.MODEL.SWIN.NUM_HEADS = [3, 6, 12, 24]
    cfg.MODEL.SWIN.WINDOW_SIZE = 7
    cfg.MODEL.SWIN.MLP_RATIO = 4.0
    cfg.MODEL.SWIN.QKV_BIAS = True
    cfg.MODEL.SWIN.QK_SCALE = None
    cfg.MODEL.SWIN.DROP_RATE = 0.0
    cfg.MODEL.SWIN.ATTN_DROP_RATE = 0.0
    cfg.MODEL.SWIN.DROP_PATH_RATE = 0.3
    cfg.MODEL.SWIN.APE = False
    cfg.MODEL.SWIN.PATCH_NORM = True
    cfg.MODEL.SWIN.OUT_FEATURES = ["res2", "res3", "res4", "res5"]

    # Scaled-dot-product attention kernels in the transformers (faster, ~1e-6 different numerics),
    # in inference and training; off (or EXACT) reproduces the published model's outputs exactly.
    cfg.MODEL.MASK_FORMER.FUSED_ATTENTION = True

    # Model and input in NHWC (faster convolutions on CPU and GPU), in inference and training;
    # off by EXACT. COMPILE (torch.compile of backbone and head) is opt-in: it needs a compiler.
    cfg.MODEL.CHANNELS_LAST = True
    cfg.MODEL.COMPILE = False
    cfg.SOLVER.AMP.DTYPE = "float16"  # or "bfloat16"; used when SOLVER.AMP.ENABLED

    # robustness: skip samples that fail to load or map (logged and counted) instead of stopping
    cfg.DATALOADER.SKIP_BAD_SAMPLES = False

    # a user's own datasets: spec files (YAML: dataset name -> type and folders) registered when
    # the data loaders are built; see maskformer/data/datasets/custom.py, docs/custom_datasets.md
    cfg.DATASETS.CUSTOM = ()
    # class names that come with a checkpoint (a converted hub model's id2label) as a
    # metadata-only dataset, registered when the config is loaded; see maskformer/interop
    cfg.DATASETS.METADATA_FILE = ""


@dataclass(frozen=True)
class SpeedSettings:
    """
    The speed options: each computes what the published model computes in a faster order, within
    the float tolerance that tests/utils/decision_margins.py checks. On by default, in the config
    and in every constructor that takes one; ``from_config`` is the one place that reads them (and
    EXACT, which turns them all off). ``MaskFormer.from_config`` reads them once and hands them to
    the modules it builds (``modeling.build``); a module built on its own from a config reads them
    from it. A new option is a field here, its config key in ``CONFIG_KEYS`` and its default in
    ``add_maskformer_config``.

    - sem_seg_fast: semantic scores marginalised at mask resolution
      (``kernels.semantic_at_mask_resolution``);
    - resize_by_matmul: mask logits resized by two matrix products where that is faster
      (``kernels.bilinear_by_matmul``);
    - fold_mask_embed: mask embeddings folded into the pixel decoder's last convolution where it
      declares that it can be (``kernels.folded_masks``);
    - fused_attention: scaled-dot-product attention kernels in the transformers and Swin;
    - channels_last: model and input in NHWC.
    """

    sem_seg_fast: bool = True
    resize_by_matmul: bool = True
    fold_mask_embed: bool = True
    fused_attention: bool = True
    channels_last: bool = True

    #: field -> its config key
    CONFIG_KEYS: ClassVar[Dict[str, str]] = {
        "sem_seg_fast": "MODEL.MASK_FORMER.TEST.SEM_SEG_FAST",
        "resize_by_matmul": "MODEL.MASK_FORMER.TEST.RESIZE_BY_MATMUL",
        "fold_mask_embed": "MODEL.MASK_FORMER.TEST.FOLD_MASK_EMBED",
        "fused_attention": "MODEL.MASK_FORMER.FUSED_ATTENTION",
        "channels_last": "MODEL.CHANNELS_LAST",
    }

    @classmethod
    def from_config(cls, cfg) -> "SpeedSettings":
        """The options as the config sets them; all off with MODEL.MASK_FORMER.TEST.EXACT."""
        if cfg.MODEL.MASK_FORMER.TEST.EXACT:
            return cls.exact()
        values = {}
        for name, key in cls.CONFIG_KEYS.items():
            value = cfg
            for part in key.split("."):
                value = value[part]
            values[name] = bool(value)
        return cls(**values)

    @classmethod
    def exact(cls) -> "SpeedSettings":
        """Every option off: the published computation order."""
        return cls(**{f.name: False for f in fields(cls)})


#: Config keys of the speed options, which MODEL.MASK_FORMER.TEST.EXACT turns off.
SPEED_OPTIONS = tuple(SpeedSettings.CONFIG_KEYS.values())
