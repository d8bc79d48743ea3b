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


class _Data:
    """The loop's data, checked and on the model's device: the training set, its evaluated prefix, the test set,
    and the batches of one epoch."""

    def __init__(self, device, train_set, test_set, batch_size: int | None, eval_train_size: int | None):
        self.x, self.y = _as_xy(train_set, device)
        self.n = len(self.x)
        self.batch_size = self.n if batch_size is None else check_int("batch_size", batch_size)
        if not 0 < self.batch_size <= self.n:
            raise ValueError(f"batch_size must be in 1..{self.n}, got {self.batch_size}")
        if eval_train_size is not None:
            check_int("eval_train_size", eval_train_size, 1)  # more than the training set means all of it
        self.test = _as_xy(test_set, device) if test_set is not None else None
        self.train_eval = (self.x, self.y) if eval_train_size is None else \
            (self.x[:eval_train_size], self.y[:eval_train_size])
        self.steps_per_epoch = self.n // self.batch_size

    def batches(self, gen: torch.Generator):
        """One epoch's batches, drawn without replacement by `gen`; the last, smaller one dropped (so every GN
        step sees the same n). Full batch: no permutation is drawn (every step sees all examples)."""
        if self.batch_size == self.n:
            yield from ((self.x, self.y) for _ in range(self.steps_per_epoch))
            return
        order = torch.randperm(self.n, generator=gen).to(self.x.device)
        for b in range(self.steps_per_epoch):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            yield self.x[idx], self.y[idx]


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
        batch_size: None for full batch; batches are drawn without replacement by a generator seeded with `seed`.
        eval_train_size: evaluate the training loss on the first this many training examples (None: all).
        track_batch_change: also record each batch's loss *after* its update (one more forward pass).
        metrics, callbacks: name -> f(model) recorded, and f(model, epoch) called, at init and every evaluation.
        eval_every: evaluate every this many epochs (and after the last).
        history, config: continue this history; more entries for its configuration (e.g. the run spec's key).
        checkpoint: a file (`revgn.checkpoint`) written after every evaluation; if it exists, the run resumes
            from it exactly as if it had not been interrupted (one of another `config` is refused).
        stop: f(history) -> bool, asked before every epoch: True ends training (`epochs` is then the most).
    """
    epochs, eval_every, seed = check_int("epochs", epochs, 0), check_int("eval_every", eval_every, 1), \
        check_int("seed", seed, 0)
    loss = get_loss(loss)
    data = _Data(next(model.parameters()).device, train_set, test_set, batch_size, eval_train_size)
    optimizer.setup(model, data.batch_size)
    hist = history or _new_history(optimizer, loss, data, seed, config)
    start = hist.epochs["epoch"][-1] if hist.epochs["epoch"] else 0
    gen, last = torch.Generator().manual_seed(seed + 1_000_003 * start), start + epochs
    if checkpoint is not None and (checkpoint := Path(checkpoint)).exists():  # continuing a `history` too
        hist, start = resume(checkpoint, model, optimizer, hist, gen, last)

    def evaluation(epoch: int) -> None:
        hist.log(hist.epochs, **_evaluation(model, data, loss, metrics or {}, epoch))
        if checkpoint is not None and epoch > 0:  # before the callbacks: a failing callback loses no epoch
            save_checkpoint(checkpoint, model, optimizer, hist, gen, epoch, last)
        for f in callbacks or ():
            f(model, epoch)

    bar = tqdm(total=(last - start) * data.steps_per_epoch, desc=optimizer.name, disable=not progress,
               mininterval=2.0, leave=False)
    try:
        if start == 0:
            evaluation(0)
        for epoch in range(start + 1, last + 1):
            if stop is not None and len(hist.epochs["epoch"]) > 1 and stop(hist):
                break  # asked before an epoch, so a run resumed after its stopping evaluation stops too
            for b, (xb, yb) in enumerate(data.batches(gen), 1):
                hist.log(hist.steps, epoch=epoch, **_step(optimizer, model, xb, yb, loss, track_batch_change, epoch,
                                                          f"step {b}/{data.steps_per_epoch}"))
                bar.update()
            if (epoch - start) % eval_every == 0 or epoch == last:
                evaluation(epoch)
                bar.set_postfix(loss=f"{hist.epochs['train_loss'][-1]:.3g}", refresh=False)
    except (NonFiniteLossError, StepRefused) as err:
        err.history = hist  # what was measured before the failure
        raise
    finally:
        bar.close()
    return hist


def _new_history(optimizer: Optimizer, loss, data: _Data, seed: int, config: dict | None) -> History:
    """An empty history whose configuration names the optimiser, loss, batch size, seed and n (and `config`)."""
    return History(config={"optimizer": optimizer.describe(), "loss": getattr(loss, "name", str(loss)),
                           "batch_size": data.batch_size, "seed": seed, "n_train": data.n, **(config or {})})


def _step(optimizer: Optimizer, model: nn.Module, xb, yb, loss, track_batch_change: bool, epoch: int,
          step: str) -> dict:
    """One update on a batch: the batch loss before it, the optimiser's `step_info`, and (if tracked) after it."""
    try:
        row = {"loss": optimizer.step(model, xb, yb, loss), **optimizer.step_info}
    except NonFiniteLossError as err:
        raise NonFiniteLossError(f"epoch {epoch}, {step}: {err}") from err
    if track_batch_change:
        with torch.no_grad():
            row["loss_after"] = check_finite(loss(model(xb), yb), f"epoch {epoch} after step")
    return row


def _evaluation(model: nn.Module, data: _Data, loss, metrics: dict, epoch: int) -> dict:
    """One row of the history's evaluations: training (and test) loss and accuracy, then each metric."""
    where = f"evaluation at epoch {epoch}"
    tr_loss, tr_acc = _evaluated(where, "training set", lambda: evaluate(model, *data.train_eval, loss))
    row = {"epoch": epoch, "train_loss": tr_loss, "train_acc": tr_acc}
    if data.test is not None:
        row["test_loss"], row["test_acc"] = _evaluated(where, "test set", lambda: evaluate(model, *data.test, loss))
    with torch.no_grad():
        for k, f in metrics.items():
            row[k] = float(f(model))
            if not math.isfinite(row[k]):
                raise NonFiniteLossError(f"{where}: metric {k!r} is {row[k]}")
    return row


def _evaluated(where: str, name: str, compute):
    try:
        return compute()
    except NonFiniteLossError as err:
        raise NonFiniteLossError(f"{where}, {name}: {err}") from err
