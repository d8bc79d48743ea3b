"""The checkpoint format of a training run: one line `revgn-checkpoint-1 <SHA-256 of the rest>`, then the
model, optimiser, generator and history as a torch archive read with `weights_only` (no arbitrary unpickling).
Written atomically; every failure to read one names the file, says what was wrong and how to go on.

`revgn.train.train` writes one after every evaluation. A run started with the file present resumes from it
and continues exactly as if it had not been interrupted (the shuffling generator is restored too; a finished
checkpoint returns at once); one written under another configuration or target epoch is refused."""
from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import torch

from .history import History
from .utils import atomic_write_bytes


CHECKPOINT_FORMAT = b"revgn-checkpoint-1"


def save_checkpoint(path: Path, model, optimizer, hist: History, gen: torch.Generator, epoch: int, last: int):
    """One line `revgn-checkpoint-1 <SHA-256 of the rest>`, then the state as a torch archive; atomic."""
    buffer = io.BytesIO()
    torch.save({"epoch": epoch, "last": last, "config": json.dumps(hist.config, sort_keys=True, default=str),
                "history": json.dumps(hist.to_dict()), "model": model.state_dict(),
                "optimizer": optimizer.state_dict(), "generator": gen.get_state()}, buffer)
    payload = buffer.getvalue()
    atomic_write_bytes(path, CHECKPOINT_FORMAT + b" " + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload)


def load_checkpoint(path: Path) -> dict:
    """Read and verify a checkpoint: every failure names the file, says what was wrong and how to go on."""
    fix = "delete it to restart the run from scratch"
    raw = path.read_bytes()
    if not raw:
        raise ValueError(f"checkpoint {path} is empty (a write was cut off); {fix}")
    header, _, payload = raw.partition(b"\n")
    fmt, _, digest = header.partition(b" ")
    if fmt != CHECKPOINT_FORMAT or len(digest) != 64:
        raise ValueError(f"checkpoint {path} is not a {CHECKPOINT_FORMAT.decode()} file; {fix}")
    if hashlib.sha256(payload).hexdigest().encode() != digest:
        raise ValueError(f"checkpoint {path} is corrupt: its content does not match its SHA-256; {fix}")
    try:  # weights_only: tensors and plain containers only, never arbitrary pickled objects
        return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"checkpoint {path} cannot be read ({type(err).__name__}: {err}); {fix}") from err


def checkpoint_config(path: str | Path) -> dict:
    """The configuration a checkpoint was written under (verified like any checkpoint read)."""
    return json.loads(load_checkpoint(Path(path))["config"])


def resume(path: Path, model, optimizer, hist: History, gen: torch.Generator, last: int):
    """Load a checkpoint into model, optimiser and generator; return its history and epoch."""
    state = load_checkpoint(path)  # tensors are copied to the model's device by load_state_dict
    config = json.dumps(hist.config, sort_keys=True, default=str)
    if state["config"] != config or state["last"] != last:
        raise ValueError(f"checkpoint {path} is from another run (configuration or epochs differ); delete it to "
                         f"start afresh.\n  stored: {state['config']}, {state['last']} epochs\n  asked:  {config}, "
                         f"{last} epochs")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    gen.set_state(state["generator"])
    d = json.loads(state["history"])
    return History(d["steps"], d["epochs"], d["config"]), state["epoch"]
