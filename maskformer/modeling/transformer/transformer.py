"""
DETR's transformer: post-norm (or pre-norm) encoder and decoder layers built on
``nn.MultiheadAttention``. Sequences are (L, B, C) as in ``nn.MultiheadAttention``'s default.
Positional encodings are added to queries and keys at every layer, never to values.

``fused_attention`` selects PyTorch's scaled-dot-product attention kernel (faster, less memory);
off, attention runs the explicit softmax(QK^T)V path, which reproduces the published model's
numbers bit for bit on CPU (the two differ by ~1e-6, enough to flip exact ties in argmax maps).
"""

import copy
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _with_pos(x: Tensor, pos: Optional[Tensor]) -> Tensor:
    return x if pos is None else x + pos


def _clones(module: nn.Module, n: int) -> nn.ModuleList:
    return nn.ModuleList([copy.deepcopy(module) for _ in range(n)])


class TransformerEncoderLayer(nn.Module):
    def __init__(
        self,
        d_model,
        nhead,
        dim_feedforward=2048,
        dropout=0.1,
        normalize_before=False,
        fused_attention=True,
    ):
        super().__init__()
        self.need_weights = not fused_attention
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.normalize_before = normalize_before

    def _attend(self, x, pos, key_padding_mask):
        q = k = _with_pos(x, pos)
        return self.self_attn(
            q, k, value=x, key_padding_mask=key_padding_mask, need_weights=self.need_weights
        )[0]

    def _feedforward(self, x):
        return self.linear2(self.dropout(F.relu(self.linear1(x))))

    def forward(
        self,
        src: Tensor,
        src_key_padding_mask: Optional[Tensor] = None,
        pos: Optional[Tensor] = None,
    ):
        if self.normalize_before:
            src = src + self.dropout1(self._attend(self.norm1(src), pos, src_key_padding_mask))
            return src + self.dropout2(self._feedforward(self.norm2(src)))
        src = self.norm1(src + self.dropout1(self._attend(src, pos, src_key_padding_mask)))
        return self.norm2(src + self.dropout2(self._feedforward(src)))


class TransformerDecoderLayer(nn.Module):
    def __init__(
        self,
        d_model,
        nhead,
        dim_feedforward=2048,
        dropout=0.1,
        normalize_before=False,
        fused_attention=True,
    ):
        super().__init__()
        self.need_weights = not fused_attention
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)
        self.normalize_before = normalize_before

    def _self_attend(self, x, query_pos):
        q = k = _with_pos(x, query_pos)
        return self.self_attn(q, k, value=x, need_weights=self.need_weights)[0]

    def _cross_attend(self, x, memory, memory_key_padding_mask, pos, query_pos):
        return self.multihead_attn(
            query=_with_pos(x, query_pos),
            key=_with_pos(memory, pos),
            value=memory,
            key_padding_mask=memory_key_padding_mask,
            need_weights=self.need_weights,
        )[0]

    def _feedforward(self, x):
        return self.linear2(self.dropout(F.relu(self.linear1(x))))

    def forward(
        self,
        tgt: Tensor,
        memory: Tensor,
        memory_key_padding_mask: Optional[Tensor] = None,
        pos: Optional[Tensor] = None,
        query_pos: Optional[Tensor] = None,
    ):
        if self.normalize_before:
            tgt = tgt + self.dropout1(self._self_attend(self.norm1(tgt), query_pos))
            tgt = tgt + self.dropout2(
                self._cross_attend(self.norm2(tgt), memory, memory_key_padding_mask, pos, query_pos)
            )
            return tgt + self.dropout3(self._feedforward(self.norm3(tgt)))
        tgt = self.norm1(tgt + self.dropout1(self._self_attend(tgt, query_pos)))
        tgt = self.norm2(
            tgt
            + self.dropout2(
                self._cross_attend(tgt, memory, memory_key_padding_mask, pos, query_pos)
            )
        )
        return self.norm3(tgt + self.dropout3(self._feedforward(tgt)))


class TransformerEncoder(nn.Module):
    def __init__(self, encoder_layer: nn.Module, num_layers: int, norm: Optional[nn.Module] = None):
        super().__init__()
        self.layers = _clones(encoder_layer, num_layers)
        self.norm = norm

    def forward(self, src, src_key_padding_mask=None, pos=None):
        for layer in self.layers:
            src = layer(src, src_key_padding_mask=src_key_padding_mask, pos=pos)
        return src if self.norm is None else self.norm(src)


class TransformerDecoder(nn.Module):
    """Returns (num_layers, Q, B, C) normed outputs of every layer when return_intermediate, else (1, Q, B, C)."""

    def __init__(
        self, decoder_layer: nn.Module, num_layers: int, norm: nn.Module, return_intermediate: bool
    ):
        super().__init__()
        self.layers = _clones(decoder_layer, num_layers)
        self.norm = norm
        self.return_intermediate = return_intermediate

    def forward(self, tgt, memory, memory_key_padding_mask=None, pos=None, query_pos=None):
        intermediate = []
        for layer in self.layers:
            tgt = layer(
                tgt,
                memory,
                memory_key_padding_mask=memory_key_padding_mask,
                pos=pos,
                query_pos=query_pos,
            )
            if self.return_intermediate:
                intermediate.append(self.norm(tgt))
        if self.return_intermediate:
            return torch.stack(intermediate)
        return self.norm(tgt).unsqueeze(0)


def _xavier_init(module: nn.Module):
    for p in module.parameters():
        if p.dim() > 1:
            nn.init.xavier_uniform_(p)


def _flatten_image(x: Tensor) -> Tensor:
    """(B, C, H, W) -> (H*W, B, C)"""
    return x.flatten(2).permute(2, 0, 1)


class TransformerEncoderOnly(nn.Module):
    """DETR encoder over a feature map: (B, C, H, W) -> (B, C, H, W)."""

    def __init__(
        self,
        d_model=512,
        nhead=8,
        num_encoder_layers=6,
        dim_feedforward=2048,
        dropout=0.1,
        normalize_before=False,
        fused_attention=True,
    ):
        super().__init__()
        layer = TransformerEncoderLayer(
            d_model, nhead, dim_feedforward, dropout, normalize_before, fused_attention
        )
        self.encoder = TransformerEncoder(
            layer, num_encoder_layers, nn.LayerNorm(d_model) if normalize_before else None
        )
        _xavier_init(self)

    def forward(self, src: Tensor, mask: Optional[Tensor], pos_embed: Tensor) -> Tensor:
        b, c, h, w = src.shape
        mask = None if mask is None else mask.flatten(1)
        memory = self.encoder(
            _flatten_image(src), src_key_padding_mask=mask, pos=_flatten_image(pos_embed)
        )
        return memory.permute(1, 2, 0).reshape(b, c, h, w)


class Transformer(nn.Module):
    """
    DETR encoder-decoder. forward(src (B,C,H,W), mask, query_embed (Q,C), pos_embed (B,C,H,W))
    -> (hs (L, B, Q, C), memory (B, C, H, W)); the decoder starts from zero targets.
    """

    def __init__(
        self,
        d_model=512,
        nhead=8,
        num_encoder_layers=6,
        num_decoder_layers=6,
        dim_feedforward=2048,
        dropout=0.1,
        normalize_before=False,
        return_intermediate_dec=False,
        fused_attention=True,
    ):
        super().__init__()
        enc_layer = TransformerEncoderLayer(
            d_model, nhead, dim_feedforward, dropout, normalize_before, fused_attention
        )
        self.encoder = TransformerEncoder(
            enc_layer, num_encoder_layers, nn.LayerNorm(d_model) if normalize_before else None
        )
        dec_layer = TransformerDecoderLayer(
            d_model, nhead, dim_feedforward, dropout, normalize_before, fused_attention
        )
        self.decoder = TransformerDecoder(
            dec_layer, num_decoder_layers, nn.LayerNorm(d_model), return_intermediate_dec
        )
        _xavier_init(self)

    def forward(self, src: Tensor, mask: Optional[Tensor], query_embed: Tensor, pos_embed: Tensor):
        b, c, h, w = src.shape
        src = _flatten_image(src)
        pos_embed = _flatten_image(pos_embed)
        query_embed = query_embed.unsqueeze(1).repeat(1, b, 1)
        mask = None if mask is None else mask.flatten(1)
        memory = self.encoder(src, src_key_padding_mask=mask, pos=pos_embed)
        hs = self.decoder(
            torch.zeros_like(query_embed),
            memory,
            memory_key_padding_mask=mask,
            pos=pos_embed,
            query_pos=query_embed,
        )
        return hs.transpose(1, 2), memory.permute(1, 2, 0).reshape(b, c, h, w)
