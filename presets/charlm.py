"""charlm: a tiny character-level transformer on Python's own docstrings.

The corpus ships with every Python: the docstrings of a fixed list of
standard-library modules and their public classes and functions. Their exact
text differs a little between Python versions, so the vocabulary is fixed
(newline + printable ASCII) and the model's shape never depends on the corpus.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from typing import Any

import torch
from torch import nn

from ._data import generator
from .base import Data, Preset
from .models import TinyGPT

#: Index 0 is the newline, then the printable ASCII characters space..tilde.
VOCAB = "\n" + "".join(chr(c) for c in range(32, 127))
V = len(VOCAB)
_INDEX = {ch: i for i, ch in enumerate(VOCAB)}
CONTEXT = 64
N_TRAIN, N_VAL = 3072, 512
"""Windows of CONTEXT + 1 characters drawn at random offsets (the seed picks them)."""
VAL_EVERY = 10
"""Every 10th docstring goes to the validation text, so both splits mix all modules."""

MODULES = (
    "argparse", "collections", "json", "re", "string", "textwrap", "functools", "itertools",
    "subprocess", "logging", "unittest", "doctest", "inspect", "heapq", "bisect", "datetime",
    "decimal", "fractions", "statistics", "random", "contextlib", "dataclasses", "pathlib", "csv",
    "difflib", "tempfile", "fnmatch", "struct", "hashlib", "uuid", "urllib.parse", "http.client",
    "optparse", "getopt", "ast", "tokenize", "pprint", "operator", "copy", "timeit", "calendar",
    "io", "time", "os", "shutil", "threading", "queue", "builtins",
)
"""Where the text comes from; a module missing from this Python is skipped."""

PROMPT = "Return the "
SAMPLE_CHARS = 80
SAMPLE_SEED = 1234
TEMPERATURE = 0.8


def encode(text: str) -> torch.Tensor:
    """Characters to indices; tabs become spaces, anything outside VOCAB is dropped."""
    text = text.replace("\t", " ")
    return torch.tensor([_INDEX[c] for c in text if c in _INDEX], dtype=torch.long)


def decode(indices: torch.Tensor | list[int]) -> str:
    values = indices.tolist() if isinstance(indices, torch.Tensor) else indices
    return "".join(VOCAB[i] for i in values)


def _docs_of(module_name: str) -> list[str]:
    """The module's docstring, then those of its public classes (and their methods) and functions."""
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return []
    docs = [inspect.getdoc(module) or ""]
    members = vars(module)
    for name in sorted(members):
        obj = members[name]
        if name.startswith("_") or getattr(obj, "__module__", None) != module_name:
            continue
        if inspect.isclass(obj):
            docs.append(inspect.getdoc(obj) or "")
            for attr_name in sorted(vars(obj)):
                attr = vars(obj)[attr_name]
                if isinstance(attr, (classmethod, staticmethod)):
                    attr = attr.__func__
                if not attr_name.startswith("_") and (inspect.isroutine(attr) or isinstance(attr, property)):
                    docs.append(inspect.getdoc(attr) or "")
        elif inspect.isroutine(obj):
            docs.append(inspect.getdoc(obj) or "")
    return docs


@functools.lru_cache(maxsize=1)
def corpus() -> tuple[str, str]:
    """(train text, val text): the distinct docstrings in MODULES order, split every VAL_EVERY-th."""
    seen: set[str] = set()
    unique: list[str] = []
    for module_name in MODULES:
        for doc in _docs_of(module_name):
            if doc and doc not in seen:
                seen.add(doc)
                unique.append(doc)
    train = [d for i, d in enumerate(unique) if i % VAL_EVERY != VAL_EVERY - 1]
    val = [d for i, d in enumerate(unique) if i % VAL_EVERY == VAL_EVERY - 1]
    return "\n\n".join(train), "\n\n".join(val)


def windows(tokens: torch.Tensor, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """n random windows: x = tokens[s:s+T], y = tokens[s+1:s+T+1] (the next character)."""
    starts = torch.randint(0, len(tokens) - CONTEXT, (n,), generator=gen)
    idx = starts.unsqueeze(1) + torch.arange(CONTEXT + 1)
    chunk = tokens[idx]
    return chunk[:, :-1].contiguous(), chunk[:, 1:].contiguous()


def make_data(seed: int) -> Data:
    train_text, val_text = corpus()
    train = windows(encode(train_text), N_TRAIN, generator(seed, 0))
    val = windows(encode(val_text), N_VAL, generator(seed, 1_000_003))
    return Data(train=train, val=val)


def make_model() -> nn.Module:
    return TinyGPT(V, CONTEXT, d_model=64, heads=4, layers=2)


def sample_line(model: nn.Module, device: torch.device | str, *, prompt: str = PROMPT,
                length: int = SAMPLE_CHARS, seed: int = SAMPLE_SEED) -> str:
    """Continue `prompt` to one printable line of at most `length` characters.

    Sampling uses its own generator with a constant seed: the global RNG is
    saved in checkpoints and drives dropout and data, so touching it here
    would make a resumed run differ from an uninterrupted one. The caller has
    the model in eval mode; this does not change it.
    """
    gen = torch.Generator().manual_seed(seed)
    context: int = getattr(model, "context", CONTEXT)
    idx = encode(prompt).to(device).unsqueeze(0)
    out: list[int] = idx[0].tolist()
    with torch.inference_mode():
        while len(out) < length:
            logits = model(idx[:, -context:])[0, :, -1].float().cpu()
            probs = torch.softmax(logits / TEMPERATURE, dim=0)
            nxt = int(torch.multinomial(probs, 1, generator=gen))
            out.append(nxt)
            idx = torch.cat([idx, torch.tensor([[nxt]], device=idx.device)], dim=1)
    return decode(out).replace("\n", " ")[:length]


def on_eval(model: nn.Module, device: torch.device) -> str:
    return sample_line(model, device)


DEFAULTS: dict[str, Any] = {
    "optimizer": "adamw", "lr": 0.005, "weight_decay": 0.01, "batch_size": 32, "epochs": 10,
    "scheduler": "warmup-cosine", "warmup": 0.05, "grad_clip": 1.0,
}

PRESET = Preset(
    name="charlm",
    description="character-level tiny transformer (2 layers, causal attention) on Python's own docstrings",
    task="classification",
    make_data=make_data,
    make_model=make_model,
    defaults=DEFAULTS,
    metric="acc",
    on_eval=on_eval,
    perplexity=True,
    boundary=False,
)
