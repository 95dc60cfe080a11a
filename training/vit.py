"""A small, export-friendly Vision Transformer trained from scratch.

Plain ops only (conv patchify, matmul attention with an explicit softmax, LayerNorm, GELU,
mean-pooled tokens, no class token), so ONNX and litert-torch convert it without custom kernels.

Two patch stems: ``patch`` (one ``patch x patch`` stride-``patch`` convolution, the original ViT) and
``conv`` (the default: a stack of 3x3 stride-2 convolutions with BatchNorm and ReLU, then a 1x1
projection; Xiao et al. 2021, "Early Convolutions Help Transformers See Better"). The convolutional
stem makes a ViT trained from scratch on a few thousand photos far easier to optimise; it keeps the
same token grid, so everything after the stem is unchanged.
"""
from __future__ import annotations

import math

import torch
from torch import nn


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = torch.softmax((q * self.scale) @ k.transpose(-2, -1), dim=-1)
        out = (self.drop(attn) @ v).transpose(1, 2).reshape(b, n, c)
        return self.proj(out)


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


STEMS = ("patch", "conv")


def conv_stem(dim: int, patch: int) -> nn.Sequential:
    """3x3 stride-2 conv + BN + ReLU, ``log2(patch)`` times (channels doubling up to ``dim``), then a 1x1 conv."""
    n = patch.bit_length() - 1
    if patch < 2 or 2 ** n != patch:
        raise ValueError(f"the conv stem needs a power-of-two patch size, got {patch}")
    layers: list[nn.Module] = []
    c_in = 3
    for i in range(n):
        c_out = max(dim >> (n - 1 - i), 8)
        layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out),
                   nn.ReLU(inplace=True)]
        c_in = c_out
    layers.append(nn.Conv2d(c_in, dim, 1))
    return nn.Sequential(*layers)


class SmallViT(nn.Module):
    """ViT backbone returning mean-pooled token features of size ``dim``."""

    def __init__(self, image_size: tuple[int, int] = (224, 224), patch: int = 16, dim: int = 192,
                 depth: int = 6, heads: int = 3, mlp_ratio: float = 4.0, dropout: float = 0.0,
                 stem: str = "conv") -> None:
        super().__init__()
        h, w = image_size
        if h % patch or w % patch:
            raise ValueError(f"image size {image_size} is not a multiple of the patch size {patch}")
        if stem not in STEMS:
            raise ValueError(f"stem must be one of {', '.join(STEMS)}, got {stem!r}")
        self.num_features = dim
        self.patch_embed = (conv_stem(dim, patch) if stem == "conv"
                            else nn.Conv2d(3, dim, kernel_size=patch, stride=patch))
        self.pos_embed = nn.Parameter(torch.zeros(1, (h // patch) * (w // patch), dim))
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp_ratio, dropout) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self._init()

    def _init(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        patch_stem = isinstance(self.patch_embed, nn.Conv2d)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Conv2d):
                if patch_stem:
                    nn.init.kaiming_normal_(m.weight, a=math.sqrt(5))
                else:  # conv stem: He init for the ReLUs
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos_embed
        x = self.norm(self.blocks(x))
        return x.mean(dim=1)
