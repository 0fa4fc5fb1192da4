"""Training runs' folders written for the tests: a tiny model's model_final.pth and its config.yaml."""

from pathlib import Path
from typing import List, Optional

from detectron2.config import CfgNode
from torch import nn

from maskformer.engine.checkpoint import MaskFormerCheckpointer
from maskformer.engine.config_loading import load_config
from tests.utils.configs import CONFIGS, tiny_opts
from tests.utils.models import build_spread_model


def save_run_folder(
    folder: Path,
    cfg: CfgNode,
    model: nn.Module,
    *,
    weights_in_config: bool = False,
    checkpointables: Optional[dict] = None,
    **data,
) -> None:
    """
    Write the files a training run leaves in ``folder``: model_final.pth (``model``'s weights, the
    states of ``checkpointables`` such as an optimizer, and ``data`` such as the iteration), the
    last_checkpoint that names it, and config.yaml, the dump of ``cfg``. With ``weights_in_config``
    the dumped MODEL.WEIGHTS names model_final.pth, as a config handed on for inference does.
    """
    checkpointer = MaskFormerCheckpointer(model, str(folder), **(checkpointables or {}))
    checkpointer.save("model_final", **data)
    if weights_in_config:
        cfg = cfg.clone()
        cfg.MODEL.WEIGHTS = str(folder / "model_final.pth")
    (folder / "config.yaml").write_text(cfg.dump())


def save_tiny_run(
    folder: Path, task: str, opts: Optional[List[str]] = None, *, weights_in_config: bool = False
) -> nn.Module:
    """
    Save in ``folder`` (save_run_folder) a run of the synthetic config of ``task`` made tiny by
    ``opts`` (tiny_opts(task) by default), whose random weights vary the results over the image
    (build_spread_model, seed 1). Returns the model.
    """
    opts = tiny_opts(task) if opts is None else opts
    cfg = load_config(CONFIGS[task], opts, need_datasets=False)
    model = build_spread_model(cfg, seed=1)
    save_run_folder(folder, cfg, model, weights_in_config=weights_in_config)
    return model
