"""Layer health: weight norm, gradient norm and update size per parameter tensor.

Taken at one step per log interval, never every step: the norms are fused
`_foreach_norm` kernels on the device, and the caller copies them to the host
together with the flush's losses (one copy). The update needs the weights
from before the optimizer step, so those are cloned at that one step; for
very large models the clone is skipped and the update ratio reported as None.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import torch
from torch import nn

#: Keep a copy of the weights for the update ratio only below this size.
CLONE_LIMIT_BYTES = 256 * 2**20
#: Collections the growth flag compares across (about 2 s at the default 0.25 s interval).
GROWTH_WINDOW = 8
#: A tensor is flagged when its gradient norm grew at least this much over the window.
GROWTH_FLAG = 1.5


def _norms(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    if hasattr(torch, "_foreach_norm"):
        return list(torch._foreach_norm(tensors))
    return [t.norm() for t in tensors]


class LayerHealth:
    """Collects per-tensor statistics around one optimizer step."""

    def __init__(self, model: nn.Module) -> None:
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.names = [n for n, _ in named]
        self.shapes = [list(p.shape) for _, p in named]
        self.params = [p for _, p in named]
        size = sum(p.numel() * p.element_size() for p in self.params)
        self.track_updates = size <= CLONE_LIMIT_BYTES
        self._has_grad: list[bool] = []
        self._grads: list[torch.Tensor] = []
        self._before: list[torch.Tensor] | None = None
        self._recent: deque[list[float | None]] = deque(maxlen=GROWTH_WINDOW)

    def __len__(self) -> int:
        return len(self.params)

    def before_step(self) -> None:
        """After backward (grads unscaled), before clipping and the optimizer step."""
        with torch.no_grad():
            self._has_grad = [p.grad is not None for p in self.params]
            grads = [p.grad.detach() for p in self.params if p.grad is not None]
            self._grads = _norms(grads) if grads else []
            self._before = [p.detach().clone() for p in self.params] if self.track_updates else None

    def after_step(self) -> torch.Tensor:
        """All numbers of this collection in one device tensor (the caller copies it)."""
        with torch.no_grad():
            params = [p.detach() for p in self.params]
            values = list(self._grads) + _norms(params)
            if self._before is not None:
                values += _norms(list(torch._foreach_sub(params, self._before))
                                 if hasattr(torch, "_foreach_sub")
                                 else [a - b for a, b in zip(params, self._before)])
            self._before = None
            return torch.stack([v.float() for v in values])

    def summarize(self, values: list[float]) -> dict[str, Any]:
        """Turn the host copy of after_step() into LayerStats fields."""
        n = len(self.params)
        ngrad = sum(self._has_grad)
        grads_iter = iter(values[:ngrad])
        grad_norm: list[float | None] = [next(grads_iter) if has else None for has in self._has_grad]
        weight_norm = values[ngrad:ngrad + n]
        updates = values[ngrad + n:ngrad + 2 * n] if len(values) >= ngrad + 2 * n else [None] * n
        ratio: list[float | None] = [
            (u / w) if (u is not None and w > 0 and math.isfinite(u) and math.isfinite(w)) else None
            for u, w in zip(updates, weight_norm)]
        present = [g for g in grad_norm if g is not None]
        total = math.sqrt(sum(g * g for g in present)) if present else None
        flagged, growth = self._flag(grad_norm)
        self._recent.append(grad_norm)
        return {"names": self.names, "shapes": self.shapes, "weight_norm": weight_norm,
                "grad_norm": grad_norm, "update_ratio": ratio, "total_grad_norm": total,
                "flagged": flagged, "growth": growth}

    def _flag(self, grad_norm: list[float | None]) -> tuple[str | None, float | None]:
        """The tensor whose gradient norm grew most since the oldest collection in the window."""
        if not self._recent:
            return None, None
        oldest = self._recent[0]
        best, best_growth = None, GROWTH_FLAG
        for i, (now, then) in enumerate(zip(grad_norm, oldest)):
            if now is None or then is None or then <= 0:
                continue
            growth = now / then if math.isfinite(now) else math.inf
            if growth >= best_growth:
                best, best_growth = i, growth
        if best is None:
            return None, None
        return self.names[best], best_growth
