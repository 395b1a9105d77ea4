"""The decision boundary of a 2-D classifier: its predicted class on a fixed grid.

Computed on the engine thread (eval mode, inference_mode, one host copy of a
few thousand bytes), because only that thread may touch the model between
steps. The grid and the sample of points are fixed at the start, so every
frame costs the same however long the run.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

#: Grid resolution: 64 columns by 48 rows of cells; with half-block characters
#: that fills a 64x24 panel, and one forward pass of 3072 points is cheap.
GRID_COLS, GRID_ROWS = 64, 48
#: Validation points drawn on top of the grid (a fixed sample, so frames stay small).
MAX_POINTS = 400
#: The grid extends this fraction of the data's range beyond it on every side.
MARGIN = 0.1
#: Class indices are written as chr(48 + c); keep within printable ASCII.
MAX_CLASSES = 64


def boundary_inputs(split: Any, classification: bool) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The (x, y) tensors to draw, when the split is a 2-D classification tensor pair."""
    if not classification or not isinstance(split, tuple) or len(split) != 2:
        return None
    x, y = split
    if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)):
        return None
    if x.dim() != 2 or x.shape[1] != 2 or len(x) == 0 or y.dim() != 1 or not x.is_floating_point():
        return None
    return x, y


class BoundaryProbe:
    """Predicts the class at every cell of a grid covering the validation data."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, device: torch.device, *,
                 cols: int = GRID_COLS, rows: int = GRID_ROWS, max_points: int = MAX_POINTS) -> None:
        x = x.detach().float().cpu()
        y = y.detach().long().cpu()
        finite = torch.isfinite(x).all(1)
        x, y = x[finite], y[finite]
        if len(x) == 0:
            raise ValueError("no finite points to draw")
        lo, hi = x.min(0).values, x.max(0).values
        span = (hi - lo).clamp_min(1e-6)
        lo, hi = lo - MARGIN * span, hi + MARGIN * span
        self.cols, self.rows = cols, rows
        self.x_range = [float(lo[0]), float(hi[0])]
        self.y_range = [float(lo[1]), float(hi[1])]
        self.classes = int(y.max()) + 1 if len(y) else 0
        if not 0 < self.classes <= MAX_CLASSES:
            raise ValueError(f"{self.classes} classes cannot be drawn")
        # Cell centres; row 0 is the top of the picture, so the largest y.
        xs = torch.linspace(lo[0], hi[0], cols * 2 + 1)[1::2]
        ys = torch.linspace(hi[1], lo[1], rows * 2 + 1)[1::2]
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        self.grid = torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=1).to(device)
        # A fixed sample of points, drawn with a private generator: the global
        # RNG must not move, or exact resume would break.
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:max_points]
        self.points = [[round(float(a), 4), round(float(b), 4), int(c)]
                       for (a, b), c in zip(x[order].tolist(), y[order].tolist())]

    def geometry(self) -> dict[str, Any]:
        return {"x_range": self.x_range, "y_range": self.y_range, "cols": self.cols, "rows": self.rows}

    def predict(self, model: nn.Module, autocast: contextlib.AbstractContextManager[Any]) -> str:
        """The predicted class per cell as rows*cols characters (chr(48 + class))."""
        was_training = model.training
        model.eval()
        try:
            with torch.inference_mode(), autocast:
                out = model(self.grid)
            classes = out.argmax(1).clamp_(0, MAX_CLASSES - 1).to(torch.uint8) + 48
            return bytes(classes.cpu().tolist()).decode("ascii")
        finally:
            if was_training:
                model.train()
