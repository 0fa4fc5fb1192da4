"""
Swin Transformer backbone (Liu et al., ICCV 2021), in the variant used for dense prediction:
inputs of any size are padded to the patch size and every stage pads its feature map to a
multiple of the window, so that no window is ever shrunk and the shift is always window // 2.
Parameter names follow the released Swin/MaskFormer checkpoints so that they load unchanged.
"""

from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from detectron2.modeling import BACKBONE_REGISTRY, Backbone, ShapeSpec
from torch import nn

from ...config import SpeedSettings

__all__ = ["SwinTransformer", "D2SwinTransformer"]


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth: zero the residual branch of whole samples with probability p."""
    if p == 0.0 or not training:
        return x
    keep = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(1.0 - p)
    return x * keep / (1.0 - p)


class DropPath(nn.Module):
    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x):
        return drop_path(x, self.p, self.training)

    def extra_repr(self):
        return f"p={self.p}"


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden_dim: int, dropout: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x):
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


def window_partition(x: torch.Tensor, window_size: int) -> torch.Tensor:
    """(B, H, W, C), H and W multiples of the window -> (B * nW, window_size**2, C), batch-major."""
    B, H, W, C = x.shape
    w = window_size
    x = x.view(B, H // w, w, W // w, w, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, w * w, C)


def window_reverse(windows: torch.Tensor, window_size: int, H: int, W: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: (B * nW, window_size**2, C) -> (B, H, W, C)."""
    w = window_size
    C = windows.shape[-1]
    x = windows.view(-1, H // w, W // w, w, w, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, H, W, C)


def relative_position_index(window_size: int) -> torch.Tensor:
    """
    (w*w, w*w) long tensor: entry [i, j] indexes the bias table row for the offset between
    tokens i and j of a window (row-major order), (dy + w - 1) * (2w - 1) + (dx + w - 1)
    with (dy, dx) = position(i) - position(j).
    """
    w = window_size
    ys, xs = torch.meshgrid(torch.arange(w), torch.arange(w), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    dy = ys[:, None] - ys[None, :] + w - 1
    dx = xs[:, None] - xs[None, :] + w - 1
    return dy * (2 * w - 1) + dx


def shifted_window_mask(
    Hp: int, Wp: int, window_size: int, shift: int, device=None, dtype=torch.float32
) -> torch.Tensor:
    """
    Attention mask (nW, w*w, w*w) for the cyclically shifted (Hp, Wp) map: after the roll,
    a window may hold pixels from up to 3x3 regions that were not adjacent in the image;
    pairs from different regions get -100 (vanishing after softmax), others 0.
    """

    def region(size):
        # region label along one axis: [0, size-w) -> 0, [size-w, size-shift) -> 1, rest -> 2
        pos = torch.arange(size, device=device)
        return (pos >= size - window_size).long() + (pos >= size - shift).long()

    labels = region(Hp)[:, None] * 3 + region(Wp)[None, :]
    labels = window_partition(labels[None, :, :, None], window_size).squeeze(-1)  # (nW, w*w)
    differs = labels[:, None, :] != labels[:, :, None]
    return torch.zeros(differs.shape, device=device, dtype=dtype).masked_fill_(differs, -100.0)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside a window, with a learned relative position bias."""

    def __init__(
        self,
        dim: int,
        window_size: int,
        num_heads: int,
        qkv_bias: bool = True,
        qk_scale: Optional[float] = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        fused: bool = True,
    ):
        """
        Args:
            fused: compute softmax(q k^T + bias) v with `F.scaled_dot_product_attention`;
                False spells it out step by step (same result up to float rounding).
        """
        super().__init__()
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.fused = fused
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * window_size - 1) ** 2, num_heads)
        )
        # persistent: the released checkpoints contain it
        self.register_buffer("relative_position_index", relative_position_index(window_size))
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """
        Args:
            x: (B * nW, N, C) tokens of N = w*w per window, windows batch-major.
            mask: (nW, N, N) additive mask (0 / -100) for shifted windows, or None.
        Returns:
            (B * nW, N, C)
        """
        B_, N, C = x.shape
        qkv = self.qkv(x).reshape(B_, N, 3, self.num_heads, C // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B_, heads, N, hd)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        bias = bias.view(N, N, -1).permute(2, 0, 1).to(q.dtype)  # (heads, N, N)

        if self.fused:
            hd = C // self.num_heads
            if mask is not None:
                # fold the windows into the head axis, so that the (nW * heads, N, N) bias + mask
                # broadcasts over images instead of being repeated per image
                nW = mask.shape[0]
                bias = (bias[None] + mask[:, None].to(q.dtype)).flatten(0, 1)
                q, k, v = (t.reshape(B_ // nW, nW * self.num_heads, N, hd) for t in (q, k, v))
            drop = self.attn_drop.p if self.training else 0.0
            x = F.scaled_dot_product_attention(q, k, v, bias, dropout_p=drop, scale=self.scale)
            x = x.view(B_, self.num_heads, N, hd)
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1) + bias[None]
            if mask is not None:
                nW = mask.shape[0]
                attn = attn.view(B_ // nW, nW, self.num_heads, N, N) + mask[None, :, None]
                attn = attn.view(B_, self.num_heads, N, N)
            x = self.attn_drop(attn.softmax(dim=-1)) @ v
        x = x.transpose(1, 2).reshape(B_, N, C)
        return self.proj_drop(self.proj(x))


class SwinTransformerBlock(nn.Module):
    """(Shifted) window attention and MLP, each a pre-norm residual branch."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int,
        shift_size: int,
        mlp_ratio: float,
        qkv_bias: bool,
        qk_scale: Optional[float],
        drop: float,
        attn_drop: float,
        drop_path: float,
        fused_attention: bool,
    ):
        super().__init__()
        self.window_size = window_size
        self.shift_size = shift_size
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(
            dim, window_size, num_heads, qkv_bias, qk_scale, attn_drop, drop, fused_attention
        )
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)

    def forward(self, x: torch.Tensor, H: int, W: int, attn_mask: Optional[torch.Tensor]):
        """
        Args:
            x: (B, H*W, C)
            attn_mask: (nW, w*w, w*w) mask of the stage's padded map, used when shifted.
        Returns:
            (B, H*W, C)
        """
        B, L, C = x.shape
        w, s = self.window_size, self.shift_size
        shortcut = x
        x = self.norm1(x).view(B, H, W, C)
        # zero-pad the normalised map on the right/bottom; padded tokens take part in attention
        # (w - n % w) % w rather than -n % w: ONNX integer ops truncate where Python floors
        x = F.pad(x, (0, 0, 0, (w - W % w) % w, 0, (w - H % w) % w))
        Hp, Wp = x.shape[1:3]
        if s > 0:
            x = torch.roll(x, shifts=(-s, -s), dims=(1, 2))
        windows = self.attn(window_partition(x, w), attn_mask if s > 0 else None)
        x = window_reverse(windows, w, Hp, Wp)
        if s > 0:
            x = torch.roll(x, shifts=(s, s), dims=(1, 2))
        x = x[:, :H, :W].reshape(B, H * W, C)

        x = shortcut + self.drop_path(x)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """2x2 neighbourhood -> one token: (B, H*W, C) -> (B, ceil(H/2)*ceil(W/2), 2C)."""

    def __init__(self, dim: int):
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        B, L, C = x.shape
        x = F.pad(x.view(B, H, W, C), (0, 0, 0, W % 2, 0, H % 2))
        # channel order (row, col) offsets (0,0), (1,0), (0,1), (1,1), as in the released weights
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        return self.reduction(self.norm(x.view(B, -1, 4 * C)))


class BasicLayer(nn.Module):
    """One stage: `depth` blocks alternating regular and shifted windows, then optional merging."""

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float,
        qkv_bias: bool,
        qk_scale: Optional[float],
        drop: float,
        attn_drop: float,
        drop_path: List[float],
        downsample: bool,
        fused_attention: bool,
    ):
        super().__init__()
        self.window_size = window_size
        self.shift_size = window_size // 2
        self.blocks = nn.ModuleList(
            SwinTransformerBlock(
                dim,
                num_heads,
                window_size,
                0 if i % 2 == 0 else self.shift_size,
                mlp_ratio,
                qkv_bias,
                qk_scale,
                drop,
                attn_drop,
                drop_path[i],
                fused_attention,
            )
            for i in range(depth)
        )
        self.downsample = PatchMerging(dim) if downsample else None

    def forward(self, x: torch.Tensor, H: int, W: int):
        """
        Returns:
            the stage output (B, H*W, C) and the input of the next stage with its size:
            (B, ceil(H/2)*ceil(W/2), 2C), ceil(H/2), ceil(W/2) (or the output, H, W if last).
        """
        attn_mask = None
        if self.shift_size > 0:
            w = self.window_size
            Hp, Wp = (H + w - 1) // w * w, (W + w - 1) // w * w
            attn_mask = shifted_window_mask(Hp, Wp, w, self.shift_size, x.device, x.dtype)
        for blk in self.blocks:
            x = blk(x, H, W, attn_mask)
        if self.downsample is None:
            return x, x, H, W
        return x, self.downsample(x, H, W), (H + 1) // 2, (W + 1) // 2


class PatchEmbed(nn.Module):
    """Non-overlapping patches -> tokens: (B, 3, H, W) -> (B, C, ceil(H/p), ceil(W/p))."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int, norm: bool):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim) if norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.patch_size
        x = self.proj(F.pad(x, (0, (p - x.shape[-1] % p) % p, 0, (p - x.shape[-2] % p) % p)))
        if self.norm is not None:
            x = self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return x


class SwinTransformer(nn.Module):
    """
    Swin Transformer trunk returning the LayerNorm-ed output of every stage.
    A stage i has `depths[i]` blocks of width embed_dim * 2**i at stride patch_size * 2**i.
    """

    def __init__(
        self,
        pretrain_img_size: int = 224,
        patch_size: int = 4,
        in_chans: int = 3,
        embed_dim: int = 96,
        depths: Tuple[int, ...] = (2, 2, 6, 2),
        num_heads: Tuple[int, ...] = (3, 6, 12, 24),
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: Optional[float] = None,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.2,
        ape: bool = False,
        patch_norm: bool = True,
        fused_attention: bool = True,
    ):
        """
        Args:
            pretrain_img_size: image size the absolute position embedding was trained for
                (only used with `ape`; it is resized to each input).
            qk_scale: overrides the default 1/sqrt(head_dim) query scale.
            drop_path_rate: stochastic depth rate of the last block, rising linearly from 0.
            ape: add a learned absolute position embedding to the patch tokens.
            patch_norm: LayerNorm after the patch embedding.
            fused_attention: window attention through `F.scaled_dot_product_attention`
                (faster, less memory); False computes it step by step.
        """
        super().__init__()
        self.num_layers = len(depths)
        self.num_features = [embed_dim * 2**i for i in range(self.num_layers)]
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim, patch_norm)

        self.absolute_pos_embed = None
        if ape:
            grid = pretrain_img_size // patch_size
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, embed_dim, grid, grid))
            nn.init.trunc_normal_(self.absolute_pos_embed, std=0.02)
        self.pos_drop = nn.Dropout(drop_rate)

        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.layers = nn.ModuleList()
        for i, depth in enumerate(depths):
            first = sum(depths[:i])
            self.layers.append(
                BasicLayer(
                    self.num_features[i],
                    depth,
                    num_heads[i],
                    window_size,
                    mlp_ratio,
                    qkv_bias,
                    qk_scale,
                    drop_rate,
                    attn_drop_rate,
                    rates[first : first + depth],
                    downsample=i < self.num_layers - 1,
                    fused_attention=fused_attention,
                )
            )
        for i, dim in enumerate(self.num_features):
            self.add_module(f"norm{i}", nn.LayerNorm(dim))

        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m):
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        """
        Args:
            x: (B, in_chans, H, W), any H and W
        Returns:
            per stage i, (B, embed_dim * 2**i, ceil(H / (patch_size * 2**i)), same for W)
        """
        x = self.patch_embed(x)
        Wh, Ww = x.shape[-2:]
        if self.absolute_pos_embed is not None:
            x = x + F.interpolate(self.absolute_pos_embed, size=(Wh, Ww), mode="bicubic")
        x = self.pos_drop(x.flatten(2).transpose(1, 2))

        outs = []
        for i, layer in enumerate(self.layers):
            out, x, H, W = layer(x, Wh, Ww)
            out = getattr(self, f"norm{i}")(out)
            outs.append(out.view(-1, Wh, Ww, self.num_features[i]).permute(0, 3, 1, 2).contiguous())
            Wh, Ww = H, W
        return outs


@BACKBONE_REGISTRY.register()
class D2SwinTransformer(SwinTransformer, Backbone):
    """
    Swin Transformer as a detectron2 backbone, configured by cfg.MODEL.SWIN; ``speed``: the model's
    speed options (``fused_attention``), read from ``cfg`` when not given.
    """

    def __init__(self, cfg, input_shape: ShapeSpec, speed: Optional[SpeedSettings] = None):
        c = cfg.MODEL.SWIN
        speed = speed or SpeedSettings.from_config(cfg)
        super().__init__(
            pretrain_img_size=c.PRETRAIN_IMG_SIZE,
            patch_size=c.PATCH_SIZE,
            in_chans=input_shape.channels,
            embed_dim=c.EMBED_DIM,
            depths=c.DEPTHS,
            num_heads=c.NUM_HEADS,
            window_size=c.WINDOW_SIZE,
            mlp_ratio=c.MLP_RATIO,
            qkv_bias=c.QKV_BIAS,
            qk_scale=c.QK_SCALE,
            drop_rate=c.DROP_RATE,
            attn_drop_rate=c.ATTN_DROP_RATE,
            drop_path_rate=c.DROP_PATH_RATE,
            ape=c.APE,
            patch_norm=c.PATCH_NORM,
            fused_attention=speed.fused_attention,
        )
        names = [f"res{i + 2}" for i in range(self.num_layers)]
        self._out_features = list(c.OUT_FEATURES)
        unknown = set(self._out_features) - set(names)
        if unknown:
            raise ValueError(f"MODEL.SWIN.OUT_FEATURES {sorted(unknown)} not in {names}")
        self._out_feature_strides = {n: c.PATCH_SIZE * 2**i for i, n in enumerate(names)}
        self._out_feature_channels = dict(zip(names, self.num_features))

    def forward(self, x: torch.Tensor):
        """
        Args:
            x: (B, C, H, W) normalised images
        Returns:
            dict of the OUT_FEATURES maps "res{i+2}": (B, embed_dim * 2**i, H/stride, W/stride)
        """
        assert x.dim() == 4, f"SwinTransformer takes (B, C, H, W) input, got {tuple(x.shape)}"
        outs = dict(zip(self._out_feature_strides, super().forward(x)))
        return {name: outs[name] for name in self._out_features}

    @property
    def size_divisibility(self):
        return 32
