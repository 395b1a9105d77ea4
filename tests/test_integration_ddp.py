"""The framework callbacks under torchrun: a DDP fit (Lightning) or train() (Hugging Face) on two gloo
ranks is one run, steered as one.

Each rank writes the LR its optimizer used at every step (a step pre-hook registered after
attach's), so the test can prove that set LR, pause and stop took effect on both ranks at the
same step.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from conftest import wait_until  # noqa: E402
from group_helpers import lrs, steps_taken, torchrun  # noqa: E402
from integration_helpers import connect, events  # noqa: E402
from tuitrain.engine.commands import Pause, Resume, SetLR, Stop  # noqa: E402

SCRIPT = textwrap.dedent('''
    import json, math, os, sys
    import torch
    from torch import nn
    import lightning.pytorch as pl
    from tuitrain.integrations.lightning import TuitrainCallback

    RANK = int(os.environ["RANK"])
    trace = open(os.path.join(os.environ["TRACE_DIR"], f"rank{RANK}.jsonl"), "a", buffering=1)
    trace.write(json.dumps({"pid": os.getpid()}) + "\\n")


    class Rings(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 2))
            self.n = 0

        def training_step(self, batch, batch_idx):
            x, y = batch
            return nn.functional.cross_entropy(self.net(x), y)

        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=0.1)
            sched = torch.optim.lr_scheduler.StepLR(opt, step_size=50, gamma=0.9)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

        def on_train_start(self):
            def hook(opt, args, kwargs):
                self.n += 1
                trace.write(json.dumps({"n": self.n, "lr": opt.param_groups[0]["lr"]}) + "\\n")
            self.trainer.optimizers[0].register_step_pre_hook(hook)


    g = torch.Generator().manual_seed(0)
    label = torch.randint(0, 2, (512,), generator=g)
    radius = torch.where(label == 1, 0.5, 1.0) + 0.08 * torch.randn(512, generator=g)
    angle = 2 * math.pi * torch.rand(512, generator=g)
    data = torch.utils.data.TensorDataset(torch.stack([radius * angle.cos(), radius * angle.sin()], 1), label)
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=100000, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[TuitrainCallback(run_dir=sys.argv[1], log_interval=0.05)])
    trainer.fit(Rings(), torch.utils.data.DataLoader(data, batch_size=16))
    trace.write(json.dumps({"end": trainer.global_step}) + "\\n")
    # Leave together (README: gloo can abort a rank that tears its group down while another still works).
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
''')


HF_SCRIPT = textwrap.dedent('''
    import json, os, sys
    import torch
    import transformers
    from tuitrain.integrations.hf import TuitrainCallback

    RANK = int(os.environ["RANK"])
    trace = open(os.path.join(os.environ["TRACE_DIR"], f"rank{RANK}.jsonl"), "a", buffering=1)
    trace.write(json.dumps({"pid": os.getpid()}) + "\\n")


    class Counting(torch.utils.data.Dataset):
        def __init__(self, n):
            g = torch.Generator().manual_seed(0)
            self.ids = (torch.randint(0, 64, (n, 1), generator=g) + torch.arange(16)) % 64

        def __len__(self):
            return len(self.ids)

        def __getitem__(self, i):
            return {"input_ids": self.ids[i], "labels": self.ids[i]}


    class Tap(transformers.TrainerCallback):
        n = 0

        def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
            opt = getattr(optimizer, "optimizer", optimizer)

            def hook(o, a, k):
                Tap.n += 1
                trace.write(json.dumps({"n": Tap.n, "lr": o.param_groups[0]["lr"]}) + "\\n")
            opt.register_step_pre_hook(hook)


    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64,
                                                                  n_positions=32))
    args = transformers.TrainingArguments(output_dir=sys.argv[2], per_device_train_batch_size=8, learning_rate=1e-3,
                                          lr_scheduler_type="linear", max_steps=100000, logging_strategy="no",
                                          save_strategy="no", report_to="none", use_cpu=True, disable_tqdm=True,
                                          ddp_backend="gloo", seed=0)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=Counting(4096),
                                   callbacks=[TuitrainCallback(run_dir=sys.argv[1], log_interval=0.05), Tap()])
    trainer.train()
    trace.write(json.dumps({"end": trainer.state.global_step}) + "\\n")
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
''')


@pytest.mark.parametrize("framework", ["lightning", "hf"])
def test_a_ddp_fit_on_two_ranks_is_steered_as_one_run(tmp_path: Path, framework: str) -> None:
    pytest.importorskip("lightning.pytorch" if framework == "lightning" else "transformers")
    (tmp_path / "traces").mkdir()
    script = tmp_path / "fit.py"
    script.write_text(SCRIPT if framework == "lightning" else HF_SCRIPT)
    R = tmp_path / "R"
    proc = torchrun(tmp_path, str(R), str(tmp_path / "out"), script=str(script))
    try:
        client = connect(R)
        wait_until(lambda: steps_taken(tmp_path, 1) >= 30, timeout=120, what="both ranks fitting")
        client.send(Pause())
        paused = wait_until(lambda: events(R, "paused"), what="paused")[0]
        wait_until(lambda: steps_taken(tmp_path, 0) == steps_taken(tmp_path, 1) == paused["step"],
                   what="both ranks held at the paused step")
        client.send(SetLR(0.02))
        change = wait_until(lambda: events(R, "lr_changed"), what="lr_changed")[0]
        assert steps_taken(tmp_path, 0) == steps_taken(tmp_path, 1) == paused["step"]
        client.send(Resume())
        wait_until(lambda: min(steps_taken(tmp_path, 0), steps_taken(tmp_path, 1)) > paused["step"] + 30,
                   what="steps after resuming")
        client.send(Stop(reason="enough"))
        out, err = proc.communicate(timeout=120)
        client.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err[-3000:]
    summary = json.loads((R / "summary.json").read_text())
    assert summary["status"] == "stopped" and summary["world_size"] == 2
    assert steps_taken(tmp_path, 0) == steps_taken(tmp_path, 1) == summary["steps"]
    used = [lrs(tmp_path, rank) for rank in (0, 1)]
    assert used[0] == used[1], "every step used the same LR on both ranks"
    first = change["step"]
    assert used[0][first] == pytest.approx(0.02, rel=0.05) and used[0][first - 1] != pytest.approx(0.02, rel=0.05)
