"""Loading of checkpoints saved before the pixel decoder got its own sub-module."""

import logging

logger = logging.getLogger(__name__)


def remap_legacy_pixel_decoder_keys(
    state_dict, prefix: str, head_children=("predictor", "pixel_decoder")
) -> None:
    """
    Move ``{prefix}X`` to ``{prefix}pixel_decoder.X`` for every X that is not one of the head's
    own children. Released checkpoints of the old layout store e.g. ``sem_seg_head.adapter_1.weight``
    where the current layout has ``sem_seg_head.pixel_decoder.adapter_1.weight``. In place.
    """
    legacy = [
        k
        for k in state_dict
        if k.startswith(prefix) and k[len(prefix) :].split(".")[0] not in head_children
    ]
    for key in legacy:
        state_dict[prefix + "pixel_decoder." + key[len(prefix) :]] = state_dict.pop(key)
    if legacy:
        logger.warning(
            f"Checkpoint has the legacy head layout: moved {len(legacy)} keys under {prefix}pixel_decoder."
        )


class LegacyCheckpointMixin:
    """nn.Module mixin: accept legacy-layout head weights transparently on load."""

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        remap_legacy_pixel_decoder_keys(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
