"""What a training run produced (`History`), and the stop rules that read it (`plateaued`, `reached`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from .utils import check_int


@dataclass
class History:
    """What a run produced. `steps`: one entry per update; `epochs`: one per evaluation (epoch 0 = init)."""

    steps: dict[str, list] = field(default_factory=lambda: {"epoch": [], "loss": []})
    epochs: dict[str, list] = field(default_factory=lambda: {"epoch": []})
    config: dict[str, Any] = field(default_factory=dict)

    def log(self, table: dict[str, list], **values) -> None:
        for k, v in values.items():
            table.setdefault(k, []).append(v)

    def final(self, key: str) -> float:
        return self.epochs[key][-1]

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config, "steps": self.steps, "epochs": self.epochs}



def plateaued(key: str, patience: int) -> Callable[[History], bool]:
    """A `stop` rule for `revgn.train.train`: True once the evaluated `key` (e.g. "val_acc", higher is better) has not
    exceeded its best value for `patience` evaluations in a row. The initial evaluation counts as a value."""
    patience = check_int("patience", patience, 1)

    def stop(hist: History) -> bool:
        values = hist.epochs.get(key)
        if values is None:
            raise KeyError(f"the stop rule watches {key!r}, which is not evaluated (evaluated: {sorted(hist.epochs)})")
        best = max(range(len(values)), key=lambda i: (values[i], -i))  # the first evaluation with the best value
        return len(values) - 1 - best >= patience

    return stop


def reached(key: str, target: float) -> Callable[[History], bool]:
    """A `stop` rule for `revgn.train.train`: True once the evaluated `key` (e.g. "train_loss") is at or below `target`
    (a budget of equal training loss for runs at different step sizes)."""
    def stop(hist: History) -> bool:
        return hist.epochs[key][-1] <= target

    return stop
