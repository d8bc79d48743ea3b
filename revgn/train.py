"""The one training loop, parameterised by its optimiser (`revgn.optimizers`: SGD, Adam, exact GN, the
Moore-Penrose step, Levenberg-Marquardt, iterative linearisation).

    history = train(model, GaussNewton(lr=0.1), train_set, test_set=test_set, loss="ce", epochs=10,
                    batch_size=256)

An optimiser implements `step(model, x, y, loss) -> float`: one update on a batch, returning the batch loss
*before* the update. The loop shuffles with its own seeded generator, evaluates at init and after every
epoch, calls optional metric callbacks, shows a tqdm progress bar and returns a `History`.

Failures leave state as it was. A step is atomic: every optimiser checks its whole update (loss, gradient or
direction) before it changes a parameter, so a step that raises leaves the model bit-identical. A loss or
metric that is not finite, at any step or evaluation, raises `NonFiniteLossError` naming the epoch, the step
and the quantity, with the history so far attached as `err.history`.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from tqdm import tqdm

from .checkpoint import resume, save_checkpoint
from .history import History
from .losses import NonFiniteLossError, accuracy, check_finite, get_loss
from .optimizers import Optimizer
from .solvers import StepRefused
from .utils import check_int


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss, chunk: int = 4096) -> tuple[float, float]:
    """Mean loss and accuracy over a dataset, in chunks to bound memory.

    A non-finite mean loss (NaN inputs, or a model that diverged) raises NonFiniteLossError.
    """
    if len(x) == 0:
        raise ValueError("evaluate needs at least one example")
    total, correct = 0.0, 0.0
    for i in range(0, len(x), chunk):
        out = model(x[i:i + chunk])
        total += loss(out, y[i:i + chunk]).item() * len(out)
        correct += accuracy(out, y[i:i + chunk]) * len(out)
    check_finite(total / len(x), f"evaluation over {len(x)} examples (an input or a parameter is NaN or inf)")
    return total / len(x), correct / len(x)


def _as_xy(data, device) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = (data.x, data.y) if hasattr(data, "x") else data
    if len(x) != len(y):
        raise ValueError(f"inputs ({len(x)}) and targets ({len(y)}) differ in length")
    return x.to(device), y.to(device)


def train(model: nn.Module, optimizer: Optimizer, train_set, *, loss="ce", epochs: int = 1,
          batch_size: int | None = None, test_set=None, seed: int = 0, eval_train_size: int | None = None,
          track_batch_change: bool = False, metrics: dict[str, Callable[[nn.Module], float]] | None = None,
          callbacks: list[Callable[[nn.Module, int], None]] | None = None, eval_every: int = 1,
          progress: bool = True, history: History | None = None, checkpoint: str | Path | None = None,
          config: dict[str, Any] | None = None, stop: Callable[[History], bool] | None = None) -> History:
    """Train `model` in place with `optimizer` and return the `History`.

    Args:
        train_set, test_set: a `revgn.data.Dataset` or an (x, y) pair; y are labels (n,) or targets (n x C).
        loss: "ce", "ce-exact", "mse" or a loss object (see `revgn.losses`).
        batch_size: None for full batch. Batches are drawn without replacement from a permutation made by a
            generator seeded with `seed`; a last batch smaller than `batch_size` is dropped (so every GN step
            sees the same n).
        eval_train_size: evaluate the training loss on the first this many training examples (>= 1; None or more
            than the training set: all of them).
        track_batch_change: also record each batch's loss *after* its update (one more forward pass).
        metrics: name -> f(model), recorded at init and at every evaluation.
        callbacks: f(model, epoch) called at init and at every evaluation (e.g. to take snapshots).
        eval_every: evaluate every this many epochs (and after the last); for long full-batch runs.
        history: continue this history (its epochs are counted on).
        checkpoint: a file. After every evaluation the model, the optimiser's state, the history and the
            shuffling generator are written there atomically. If the file exists when training starts, the run
            resumes from it and continues exactly as if it had not been interrupted (a finished checkpoint
            returns at once). It must come from the same configuration and target epoch, else ValueError.
            The file is a torch archive read with `weights_only=True` (never unpickled), carrying a SHA-256 of
            its content that is verified before use.
        config: more entries for the history's configuration (e.g. the run spec's key); a checkpoint made
            under another configuration is refused.
        stop: f(history) -> bool, asked after every evaluation: True ends training there (e.g. `plateaued`), so
            `epochs` is then the most it trains. A resumed run asks it of the restored history first.
    """
    epochs = check_int("epochs", epochs, 0)
    eval_every = check_int("eval_every", eval_every, 1)
    seed = check_int("seed", seed, 0)
    loss = get_loss(loss)
    device = next(model.parameters()).device
    x, y = _as_xy(train_set, device)
    n_train = len(x)
    batch_size = n_train if batch_size is None else check_int("batch_size", batch_size)
    if not 0 < batch_size <= n_train:
        raise ValueError(f"batch_size must be in 1..{n_train}, got {batch_size}")
    if eval_train_size is not None:
        check_int("eval_train_size", eval_train_size, 1)  # more than the training set means all of it
    test = _as_xy(test_set, device) if test_set is not None else None
    x_eval, y_eval = (x, y) if eval_train_size is None else (x[:eval_train_size], y[:eval_train_size])
    metrics = metrics or {}
    optimizer.setup(model, batch_size)
    hist = history or History(config={"optimizer": optimizer.describe(), "loss": getattr(loss, "name", str(loss)),
                                      "batch_size": batch_size, "seed": seed, "n_train": n_train, **(config or {})})
    start = hist.epochs["epoch"][-1] if hist.epochs["epoch"] else 0
    gen = torch.Generator().manual_seed(seed + 1_000_003 * start)
    last = start + epochs
    if checkpoint is not None:  # with `history` too: a continued run (a switch of optimiser) resumes as well
        checkpoint = Path(checkpoint)
        if checkpoint.exists():
            hist, start = resume(checkpoint, model, optimizer, hist, gen, last)

    def record(epoch: int) -> None:
        where = f"evaluation at epoch {epoch}"
        tr_loss, tr_acc = _evaluated(where, "training set", lambda: evaluate(model, x_eval, y_eval, loss))
        row = {"epoch": epoch, "train_loss": tr_loss, "train_acc": tr_acc}
        if test is not None:
            row["test_loss"], row["test_acc"] = _evaluated(where, "test set", lambda: evaluate(model, *test, loss))
        with torch.no_grad():
            for k, f in metrics.items():
                row[k] = float(f(model))
                if not math.isfinite(row[k]):
                    raise NonFiniteLossError(f"{where}: metric {k!r} is {row[k]}")
        hist.log(hist.epochs, **row)
        if checkpoint is not None and epoch > 0:  # before the callbacks: a failing callback loses no epoch
            save_checkpoint(checkpoint, model, optimizer, hist, gen, epoch, last)
        for f in callbacks or ():
            f(model, epoch)

    per_epoch = n_train // batch_size
    bar = tqdm(total=(last - start) * per_epoch, desc=optimizer.name, disable=not progress, mininterval=2.0,
               leave=False)
    stopped = lambda: stop is not None and len(hist.epochs["epoch"]) > 1 and stop(hist)
    try:
        if start == 0:
            record(0)
        for epoch in range(start + 1, last + 1):
            if stopped():  # checked before an epoch, so a run resumed after its stopping evaluation stops too
                break
            full_batch = batch_size == n_train  # then every step sees all examples: no shuffle needed
            order = None if full_batch else torch.randperm(n_train, generator=gen).to(device)
            for b in range(per_epoch):
                if order is None:
                    xb, yb = x, y
                else:
                    idx = order[b * batch_size:(b + 1) * batch_size]
                    xb, yb = x[idx], y[idx]
                try:
                    before = optimizer.step(model, xb, yb, loss)
                except NonFiniteLossError as err:
                    raise NonFiniteLossError(f"epoch {epoch}, step {b + 1}/{per_epoch}: {err}") from err
                row = {"epoch": epoch, "loss": before, **optimizer.step_info}
                if track_batch_change:
                    with torch.no_grad():
                        row["loss_after"] = check_finite(loss(model(xb), yb), f"epoch {epoch} after step")
                hist.log(hist.steps, **row)
                bar.update()
            if (epoch - start) % eval_every == 0 or epoch == last:
                record(epoch)
                bar.set_postfix(loss=f"{hist.epochs['train_loss'][-1]:.3g}", refresh=False)
    except (NonFiniteLossError, StepRefused) as err:
        err.history = hist  # what was measured before the failure
        raise
    finally:
        bar.close()
    return hist


def _evaluated(where: str, name: str, compute):
    try:
        return compute()
    except NonFiniteLossError as err:
        raise NonFiniteLossError(f"{where}, {name}: {err}") from err
