"""
Parameter names of transformers' ``MaskFormerForInstanceSegmentation`` <-> this project's.

The two models have the same tensors except that transformers keeps Swin's query/key/value and the
decoder's q/k/v projections as three tensors where ours (and the published release) keep one
``qkv`` / ``in_proj_*`` tensor: :func:`hf_to_ours` concatenates them along dim 0,
:func:`ours_to_hf` splits them. Dropped on the way in: Swin's final ``encoder.model.layernorm``
(transformers computes it, MaskFormer never uses it) and BatchNorm's ``num_batches_tracked``
(our ResNet uses frozen BatchNorm); on the way out they are written (the layernorm as identity,
the counters as 0) so that transformers loads the folder with no missing key.

Files written by ``save_pretrained`` name the decoder's attention outputs and MLP
``self_attn.out_proj`` / ``layers.N.fc1``; transformers 5 names them ``o_proj`` / ``mlp.fc1`` in
memory. Both are read; the file spelling is written.
"""

import re
from typing import Dict, List, NamedTuple, Optional, Tuple

import torch

__all__ = ["HFNameError", "hf_to_ours", "ours_to_hf", "normalize_hf_names"]

_SWIN = "model.pixel_level_module.encoder.model."
_SWIN_NORMS = "model.pixel_level_module.encoder.hidden_states_norms."
_RESNET = "model.pixel_level_module.encoder."
_FPN = "model.pixel_level_module.decoder."
_TRANSFORMER = "model.transformer_module."
_BLOCK = _SWIN + "encoder.layers.{l}.blocks.{b}."
_OUR_BLOCK = "backbone.layers.{l}.blocks.{b}."
_STAGE = _RESNET + "encoder.stages.{s}.layers.{l}."
_OUR_STAGE = "backbone.res{s+2}.{l}."
_PIXEL_DECODER = "sem_seg_head.pixel_decoder."
_DEC_LAYER = _TRANSFORMER + "decoder.layers.{n}."
_OUR_DEC_LAYER = "sem_seg_head.predictor.transformer.decoder.layers.{n}."

# Swin's last layer norm (unused by MaskFormer) and BatchNorm step counters (frozen BatchNorm here)
_DROPPED = re.compile(
    r"^model\.pixel_level_module\.encoder\.model\.layernorm\.|num_batches_tracked$"
)

# in-memory transformers 5 names -> the names save_pretrained writes
_HF_SPELLINGS = [
    (
        re.compile(r"^(model\.transformer_module\.decoder\.layers\.\d+\.\w+)\.o_proj\."),
        r"\1.out_proj.",
    ),
    (re.compile(r"^(model\.transformer_module\.decoder\.layers\.\d+)\.mlp\.(fc[12])\."), r"\1.\2."),
]


class _Rule(NamedTuple):
    """
    ``hf`` and ``ours`` are name prefixes; ``{x}`` is a layer index, written ``{x+2}`` or ``{3-x}``
    on our side where the numbering differs. With ``parts``, ``{part}`` in ``hf`` takes each of
    them in turn and the tensors are concatenated along dim 0 on our side.
    """

    hf: str
    ours: str
    parts: Tuple[str, ...] = ()


def _under(hf: str, ours: str, *rules: _Rule) -> List[_Rule]:
    """``rules`` for the members of one module, named relative to its prefixes ``hf`` / ``ours``."""
    return [rule._replace(hf=hf + rule.hf, ours=ours + rule.ours) for rule in rules]


def _conv_norm(hf: str, ours: str, conv: str, norm: str) -> List[_Rule]:
    """
    A convolution and the norm after it: transformers' modules ``hf + conv`` and ``hf + norm``,
    our convolution ``ours`` holding its norm as ``ours + "norm."``. The norm's rule comes first:
    our convolution's prefix would take the norm's tensors too.
    """
    return [_Rule(hf + norm + ".", ours + "norm."), _Rule(hf + conv + ".", ours)]


# transformers' ResNetConvLayer and the FPN's nn.Sequential(conv, GroupNorm): (conv, norm) names
_RESNET_CONV = ("convolution", "normalization")
_FPN_CONV = ("0", "1")

# The first rule whose prefix matches a name maps it: a prefix that extends another comes first.
_RULES = [
    # Swin backbone
    _Rule(_SWIN + "embeddings.patch_embeddings.projection.", "backbone.patch_embed.proj."),
    _Rule(_SWIN + "embeddings.norm.", "backbone.patch_embed.norm."),
    *_under(
        _BLOCK,
        _OUR_BLOCK,
        _Rule("layernorm_before.", "norm1."),
        _Rule("layernorm_after.", "norm2."),
        _Rule("attention.self.relative_position_", "attn.relative_position_"),
        _Rule("attention.self.{part}.", "attn.qkv.", ("query", "key", "value")),
        _Rule("attention.output.dense.", "attn.proj."),
        _Rule("intermediate.dense.", "mlp.fc1."),
        _Rule("output.dense.", "mlp.fc2."),
    ),
    _Rule(_SWIN + "encoder.layers.{l}.downsample.", "backbone.layers.{l}.downsample."),
    _Rule(_SWIN_NORMS + "{i}.", "backbone.norm{i}."),
    # ResNet backbone
    *_conv_norm(_RESNET + "embedder.embedder.", "backbone.stem.conv1.", *_RESNET_CONV),
    *_conv_norm(_STAGE + "shortcut.", _OUR_STAGE + "shortcut.", *_RESNET_CONV),
    *_conv_norm(_STAGE + "layer.{i}.", _OUR_STAGE + "conv{i+1}.", *_RESNET_CONV),
    # FPN pixel decoder: transformers counts its lateral layers from the coarsest one
    *_conv_norm(_FPN + "fpn.stem.", _PIXEL_DECODER + "layer_4.", *_FPN_CONV),
    *_conv_norm(_FPN + "fpn.layers.{t}.proj.", _PIXEL_DECODER + "adapter_{3-t}.", *_FPN_CONV),
    *_conv_norm(_FPN + "fpn.layers.{t}.block.", _PIXEL_DECODER + "layer_{3-t}.", *_FPN_CONV),
    _Rule(_FPN + "mask_projection.", _PIXEL_DECODER + "mask_features."),
    # DETR decoder and heads
    _Rule(_TRANSFORMER + "queries_embedder.", "sem_seg_head.predictor.query_embed."),
    _Rule(_TRANSFORMER + "input_projection.", "sem_seg_head.predictor.input_proj."),
    *_under(
        _DEC_LAYER,
        _OUR_DEC_LAYER,
        _Rule("self_attn.{part}_proj.", "self_attn.in_proj_", tuple("qkv")),
        _Rule("self_attn.out_proj.", "self_attn.out_proj."),
        _Rule("encoder_attn.{part}_proj.", "multihead_attn.in_proj_", tuple("qkv")),
        _Rule("encoder_attn.out_proj.", "multihead_attn.out_proj."),
        _Rule("self_attn_layer_norm.", "norm1."),
        _Rule("encoder_attn_layer_norm.", "norm2."),
        _Rule("final_layer_norm.", "norm3."),
        _Rule("fc1.", "linear1."),
        _Rule("fc2.", "linear2."),
    ),
    _Rule(_TRANSFORMER + "decoder.layernorm.", "sem_seg_head.predictor.transformer.decoder.norm."),
    _Rule("class_predictor.", "sem_seg_head.predictor.class_embed."),
    _Rule("mask_embedder.{i}.0.", "sem_seg_head.predictor.mask_embed.layers.{i}."),
    _Rule("criterion.", "criterion."),
]

# "{x}", "{x+2}" or "{3-x}": our index = sign * hf index + offset
_INDEX = re.compile(r"\{(?:(\d+)-)?([a-z])(?:\+(\d+))?\}")


class HFNameError(ValueError):
    """A tensor name of one side that the other side has no place for."""


class _Template:
    """One side of a rule as a regex, and the way to write a name of it from index values."""

    def __init__(self, prefix: str, parts: Tuple[str, ...]):
        self.prefix = prefix
        pattern, last = "", 0
        for m in _INDEX.finditer(prefix):
            pattern += re.escape(prefix[last : m.start()]) + rf"(?P<{m.group(2)}>\d+)"
            last = m.end()
        pattern += re.escape(prefix[last:])
        if parts:
            part = "(?P<part>" + "|".join(parts) + ")"
            pattern = pattern.replace(re.escape("{part}"), part)
        self.regex = re.compile("^" + pattern + r"(?P<rest>.*)$")

    def indices(self, match: re.Match) -> Dict[str, int]:
        """The index values of a match of this (hf-side) template."""
        return {m.group(2): int(match.group(m.group(2))) for m in _INDEX.finditer(self.prefix)}

    def hf_indices(self, match: re.Match) -> Dict[str, int]:
        """The hf-side index values of a match of this (our-side) template."""
        values = {}
        for m in _INDEX.finditer(self.prefix):
            offset, name, plus = m.group(1), m.group(2), m.group(3)
            ours = int(match.group(name))
            values[name] = int(offset) - ours if offset else ours - int(plus or 0)
        return values

    def format(self, indices: Dict[str, int], part: str = "", rest: str = "") -> str:
        """This side's name for hf-side ``indices``."""

        def value(m):
            offset, name, plus = m.group(1), m.group(2), m.group(3)
            i = indices[name]
            return str(int(offset) - i if offset else i + int(plus or 0))

        return _INDEX.sub(value, self.prefix).replace("{part}", part) + rest


_COMPILED = [(rule, _Template(rule.hf, rule.parts), _Template(rule.ours, ())) for rule in _RULES]


def normalize_hf_names(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The state dict with in-memory transformers 5 names changed to those of the saved files."""
    out = {}
    for name, value in state_dict.items():
        for pattern, replacement in _HF_SPELLINGS:
            name = pattern.sub(replacement, name)
        out[name] = value
    return out


def hf_to_ours(
    state_dict: Dict[str, torch.Tensor], source: str = "the checkpoint"
) -> Dict[str, torch.Tensor]:
    """
    Args:
        state_dict: a ``MaskFormerForInstanceSegmentation`` state dict (either spelling).
        source: what to name in errors (the file).
    Returns:
        the same tensors under this project's names, q/k/v concatenated.
    Raises:
        HFNameError: listing the names no rule maps, or q/k/v groups with a member missing.
    """
    out, groups, unmapped = {}, {}, []
    for name, value in normalize_hf_names(state_dict).items():
        if _DROPPED.search(name):
            continue
        for rule, hf, ours in _COMPILED:
            m = hf.regex.match(name)
            if m is None:
                continue
            target = ours.format(hf.indices(m), rest=m.group("rest"))
            if rule.parts:
                groups.setdefault(target, {})[m.group("part")] = (rule.parts, value)
            else:
                out[target] = value
            break
        else:
            unmapped.append(name)
    for target, members in groups.items():
        order = next(iter(members.values()))[0]
        missing = [p for p in order if p not in members]
        if missing:
            unmapped.append(f"{target} (no {', '.join(missing)} tensor to concatenate)")
            continue
        out[target] = torch.cat([members[p][1] for p in order], dim=0)
    if unmapped:
        raise HFNameError(
            f"{source}: {len(unmapped)} tensors are not part of a MaskFormer this project can "
            f"build: " + ", ".join(unmapped[:10]) + (" ..." if len(unmapped) > 10 else "")
        )
    return out


def ours_to_hf(
    state_dict: Dict[str, torch.Tensor], source: str = "the checkpoint"
) -> Dict[str, torch.Tensor]:
    """
    The inverse of :func:`hf_to_ours`, in the spelling of ``save_pretrained``'s files, plus the
    tensors transformers has and we do not (Swin's unused final layer norm as identity, BatchNorm
    step counters as 0). Raises :class:`HFNameError` listing the names transformers has no place for.
    """
    out, unmapped = {}, []
    for name, value in state_dict.items():
        for rule, hf, ours in _COMPILED:
            m = ours.regex.match(name)
            if m is None:
                continue
            indices = ours.hf_indices(m)
            if rule.parts:
                for part, chunk in zip(rule.parts, value.chunk(len(rule.parts), dim=0)):
                    out[hf.format(indices, part, m.group("rest"))] = chunk
            else:
                out[hf.format(indices, rest=m.group("rest"))] = value
            break
        else:
            unmapped.append(name)
    if unmapped:
        raise HFNameError(
            f"{source}: transformers' MaskFormer has no place for {len(unmapped)} tensors: "
            + ", ".join(unmapped[:10])
            + (" ..." if len(unmapped) > 10 else "")
        )
    for name in list(out):
        if name.endswith(".normalization.running_mean"):
            out[name.replace("running_mean", "num_batches_tracked")] = torch.tensor(0)
    last_norm = _last_swin_norm(out)
    if last_norm is not None:
        width = out[last_norm + "weight"].shape[0]
        out[_SWIN + "layernorm.weight"] = torch.ones(width)
        out[_SWIN + "layernorm.bias"] = torch.zeros(width)
    return out


def _last_swin_norm(hf_state_dict: Dict[str, torch.Tensor]) -> Optional[str]:
    stages: List[int] = [
        int(m.group(1))
        for m in (re.match(re.escape(_SWIN_NORMS) + r"(\d+)\.weight$", k) for k in hf_state_dict)
        if m
    ]
    return f"{_SWIN_NORMS}{max(stages)}." if stages else None
