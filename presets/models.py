"""Tiny model builders shared by the built-in presets."""

from __future__ import annotations

import torch
from torch import nn


def mlp(
    in_features: int,
    hidden: int,
    out_features: int,
    depth: int = 2,
    activation: type[nn.Module] = nn.ReLU,
) -> nn.Sequential:
    """A plain MLP with `depth` hidden layers of width `hidden`.

    Small toy datasets need nothing fancier, and a Sequential keeps the model
    easy to print and inspect from the dashboard.
    """
    if depth < 0:
        raise ValueError(f"depth must be >= 0, not {depth}")
    layers: list[nn.Module] = []
    width = in_features
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), activation()]
        width = hidden
    layers.append(nn.Linear(width, out_features))
    return nn.Sequential(*layers)


def small_cnn(in_channels: int, classes: int, size: int, width: int = 16, dropout: float = 0.3) -> nn.Sequential:
    """Two conv blocks (conv, BatchNorm, ReLU, 2x2 max-pool), Dropout, one linear head.

    BatchNorm and Dropout make train and eval mode differ for real, which is
    what an image preset should show; two pools keep it fast on a CPU.
    """
    if size % 4:
        raise ValueError(f"size must be a multiple of 4 (two 2x2 pools), not {size}")
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1, bias=False),
        nn.BatchNorm2d(2 * width),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Dropout(dropout),
        nn.Linear(2 * width * (size // 4) ** 2, classes),
    )


class RandomFlipShift(nn.Module):
    """Training-only augmentation: per-sample horizontal flips, one random shift per batch.

    It draws from the global torch RNG on purpose: the engine saves and
    restores that RNG in checkpoints, so a resumed run sees the same flips. In
    eval mode it is the identity, so validation stays deterministic.
    """

    def __init__(self, max_shift: int = 2) -> None:
        super().__init__()
        self.max_shift = max_shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        flip = torch.rand(x.shape[0], device=x.device) < 0.5
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        s = self.max_shift
        if s <= 0:
            return x
        h, w = x.shape[-2:]
        dy, dx = (int(v) for v in torch.randint(0, 2 * s + 1, (2,)))
        padded = nn.functional.pad(x, (s, s, s, s))
        return padded[..., dy:dy + h, dx:dx + w]


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention where position t only sees positions <= t."""

    def __init__(self, d_model: int, heads: int) -> None:
        super().__init__()
        if d_model % heads:
            raise ValueError(f"d_model {d_model} is not divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, d_model: int, heads: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, heads)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class TinyGPT(nn.Module):
    """A character-level decoder-only transformer (GPT-style, learned positions).

    forward() returns logits as (B, V, T), the class dimension second, so the
    stock nn.CrossEntropyLoss and `out.argmax(1) == y` work on (B, T) targets
    without a custom loss.
    """

    def __init__(self, vocab: int, context: int, d_model: int = 64, heads: int = 4, layers: int = 2) -> None:
        super().__init__()
        self.context = context
        self.tok = nn.Embedding(vocab, d_model)
        self.pos = nn.Embedding(context, d_model)
        self.blocks = nn.Sequential(*(Block(d_model, heads) for _ in range(layers)))
        self.ln = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        t = idx.shape[1]
        if t > self.context:
            raise ValueError(f"sequence of {t} tokens is longer than the context of {self.context}")
        pos = torch.arange(t, device=idx.device)
        h = self.blocks(self.tok(idx) + self.pos(pos))
        return self.head(self.ln(h)).transpose(1, 2)


class ImageBytes(nn.Module):
    """uint8 pixels (0..255) to centred floats, on the model's device: the dataset stays a quarter
    of its float size in memory and on its way to the GPU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() - 127.5) / 64.0


class BasicBlock(nn.Module):
    """ResNet's two-conv residual block; a 1x1 conv on the shortcut where the shape changes."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


def resnet18(in_channels: int, classes: int, width: int = 64) -> nn.Sequential:
    """ResNet-18's layout (four stages of two BasicBlocks, widths w, 2w, 4w, 8w) with a 3x3 stem and
    no stem pooling, as is usual for small images; global average pooling, one linear head."""
    layers: list[nn.Module] = [ImageBytes(), nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
                               nn.BatchNorm2d(width), nn.ReLU()]
    channels = width
    for stage, out in enumerate((width, 2 * width, 4 * width, 8 * width)):
        layers += [BasicBlock(channels, out, stride=1 if stage == 0 else 2), BasicBlock(out, out)]
        channels = out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, classes)]
    return nn.Sequential(*layers)
