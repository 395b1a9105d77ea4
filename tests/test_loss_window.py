"""The losses kept between two flushes: every step's value comes back in order, at the cost of few
tracked objects (thousands of loose tensors made Python's collector walk a framework's whole heap)."""

from __future__ import annotations

import gc
import math

import torch

from tuitrain.engine.loss_window import PACK, LossWindow


def test_every_steps_loss_comes_back_in_order_through_the_packs() -> None:
    window = LossWindow()
    values = [float(i) / 7 for i in range(5 * PACK + 3)]
    for v in values:
        window.add(torch.tensor(v, requires_grad=True) * 1.0)  # a loss with a graph: kept detached
    assert len(window) == len(values)
    assert window.host() == [torch.tensor(v).item() for v in values]
    window.clear()
    assert len(window) == 0 and window.host() == []


def test_a_loss_is_kept_without_its_graph_and_one_that_has_none_is_not_copied() -> None:
    window = LossWindow()
    with_graph = torch.tensor(1.0, requires_grad=True) * 2.0
    detached = torch.tensor(3.0)  # a framework's loss often arrives like this (Lightning's outputs)
    window.add(with_graph)
    window.add(detached)
    kept = window._loose
    assert kept[0].grad_fn is None and not kept[0].requires_grad, "the graph would live until the flush"
    assert kept[1] is detached, "a second detach is one more tensor op on every step"
    assert window.host() == [2.0, 3.0]


def test_numbers_none_and_losses_of_other_shapes_keep_their_places() -> None:
    window = LossWindow()
    expected: list[float] = []
    for i in range(3 * PACK):
        if i % 50 == 7:
            window.add(None)
            expected.append(math.nan)
        elif i % 50 == 9:
            window.add(2.5)
            expected.append(2.5)
        elif i % 50 == 11:
            window.add(torch.full((4,), float(i)))  # a loss left unreduced: its mean
            expected.append(float(i))
        else:
            window.add(torch.tensor(float(i)))
            expected.append(float(i))
    got = window.host()
    assert len(got) == len(expected)
    assert all((math.isnan(a) and math.isnan(b)) or a == b for a, b in zip(got, expected))
    stacked = window.stacked(torch.device("cpu"))
    assert stacked is not None and stacked.shape == (len(expected),)
    assert torch.equal(stacked.isnan(), torch.tensor([math.isnan(v) for v in expected]))


def test_keeping_a_flush_worth_of_losses_does_not_wake_the_garbage_collector() -> None:
    collections: list[int] = []

    def count(phase: str, info: dict) -> None:
        if phase == "start":
            collections.append(info["generation"])

    def steps(keep: object) -> int:
        gc.collect()
        collections.clear()
        gc.callbacks.append(count)
        try:
            for i in range(12_800):  # a few seconds of a fast loop between two flushes
                keep(torch.tensor(float(i)))  # type: ignore[operator]
        finally:
            gc.callbacks.remove(count)
        return len(collections)

    loose: list[torch.Tensor] = []
    window = LossWindow()
    baseline = steps(lambda t: loose.append(t.detach()))
    packed = steps(window.add)
    assert baseline >= 8, "the comparison needs a baseline that wakes the collector"
    assert packed <= baseline // 4, (packed, baseline)
    assert len(window) == len(loose)
