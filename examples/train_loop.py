"""Your own training loop, watched and steered by tuitrain: two lines added to a plain PyTorch loop.

    python examples/train_loop.py --epochs 20          # records to runs/train_loop-<time>/
    tuitrain watch                                     # from any terminal: watch and steer it
    tuitrain run examples/train_loop.py --epochs 20    # or start it with the dashboard attached

Two rings of points (the circles problem), a small MLP, SGD with a cosine schedule.
"""

from __future__ import annotations

import argparse
import math

import torch
from torch import nn

import tuitrain


def rings(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Points on an inner ring (class 1) and an outer ring (class 0), with noise."""
    label = torch.randint(0, 2, (n,), generator=generator)
    radius = torch.where(label == 1, 0.5, 1.0) + 0.08 * torch.randn(n, generator=generator)
    angle = 2 * math.pi * torch.rand(n, generator=generator)
    return torch.stack([radius * angle.cos(), radius * angle.sin()], 1), label


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--run-dir", default=None, help="default: tuitrain run's, else runs/train_loop-<time>")
    args = parser.parse_args()

    torch.manual_seed(0)
    torch.set_num_threads(1)  # a small model: one thread is fastest and leaves a core for the dashboard
    g = torch.Generator().manual_seed(0)
    x_train, y_train = rings(2048, g)
    x_val, y_val = rings(512, g)
    model = nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 2))
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    steps_per_epoch = math.ceil(len(x_train) / args.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.epochs * steps_per_epoch)
    loss_fn = nn.CrossEntropyLoss()

    with tuitrain.attach(run_dir=args.run_dir, model=model, optimizer=opt, scheduler=sched,
                         total_steps=args.epochs * steps_per_epoch, steps_per_epoch=steps_per_epoch,
                         config=vars(args)) as run:
        for epoch in range(args.epochs):
            model.train()
            order = torch.randperm(len(x_train), generator=g)
            for i in range(0, len(order), args.batch_size):
                batch = order[i:i + args.batch_size]
                loss = loss_fn(model(x_train[batch]), y_train[batch])
                loss.backward()
                opt.step()
                opt.zero_grad()
                sched.step()
                run.step(loss=loss)  # the tensor stays where it is until the flush
                if run.should_stop:
                    break
            model.eval()
            with torch.no_grad():
                out = model(x_val)
                val_loss = loss_fn(out, y_val)
                val_acc = (out.argmax(1) == y_val).float().mean()
            run.evaluate(val_loss=val_loss, val_acc=val_acc)
            print(f"epoch {epoch + 1}: val_loss {val_loss:.4f} val_acc {val_acc:.3f}", flush=True)
            if run.should_stop:
                break


if __name__ == "__main__":
    main()
