"""What every chapter does first (check its parameters, seed, pick a device and a plotting style), `claim`, and
Markdown rendered from records (`markdown`, `table`): the prose numbers and verdicts of a chapter."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

import torch

from .utils import resolve_device, seed_everything

SCALES = ("book", "paper")
T = TypeVar("T")


@dataclass(frozen=True)
class Setup:
    scale: str
    device: torch.device
    seed: int

    def pick(self, book: T, paper: T) -> T:
        """The book-scale or the paper-scale value of a setting."""
        return book if self.scale == "book" else paper


def setup(scale: str = "book", device: str = "auto", seed: int = 0) -> Setup:
    """Validate a chapter's `parameters` cell, seed everything and return the resolved settings.

    scale: "book" (a few minutes on a 2-core CPU) or "paper" (the papers' settings, meant for a GPU).
    """
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    seed_everything(seed)
    dev = resolve_device(device)
    _style()
    return Setup(scale, dev, seed)


def claim(statement: str, holds: bool) -> None:
    """Print a claim and whether the measurements support it ("yes"/"no").

    Checked cells (`nbval-check-output`) print claims like these, with margins chosen so that the answer
    does not depend on the CPU's last digits, rather than the kernel-dependent numbers themselves; the
    numbers are printed, for the reader, by an unchecked cell next to it.
    """
    print(f"{statement}: {'yes' if holds else 'no'}")


def indication(holds: bool, seeds: int) -> str:
    """What a threshold check may say about a paper's claim: whether these runs are consistent with it. Only
    a paired interval over at least `revgn.stats.MIN_SEEDS` seeds gives a verdict (`revgn.stats.verdict`),
    so a check on fewer seeds says so: "consistent with the claim; no verdict (3 of 5 seeds)"."""
    from .stats import MIN_SEEDS

    word = "consistent with the claim" if holds else "not consistent with the claim"
    if seeds < MIN_SEEDS:
        return f"{word}; no verdict ({seeds} of {MIN_SEEDS} seeds)"
    return f"{word} (a threshold over {seeds} seeds, not an interval)"


def markdown(text: str):
    """Show text as Markdown in the notebook and the book (numbers and verdicts computed, never typed)."""
    from IPython.display import Markdown, display

    display(Markdown(text))


def table(header: list[str], rows: list[list], caption: str = "") -> str:
    """A Markdown table of computed cells (shown with `markdown`); returns its text, e.g. for tests."""
    esc = lambda v: str(v).replace("|", "\\|")
    lines = ([f"**{caption}**", ""] if caption else []) + ["| " + " | ".join(map(esc, header)) + " |",
                                                            "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(esc, row)) + " |" for row in rows]
    return "\n".join(lines)


def _style() -> None:
    from .plots import use_book_style

    use_book_style()

