"""What the book has found, computed from its records: the README's findings block.

    python -m revgn.findings            # print the block
    python -m revgn.findings --write    # rewrite it in README.md, between its two markers

The block is regenerated from the committed records, never typed; `tests/test_findings.py` fails when the
README's copy differs from what the records say (rerun `--write` after a sweep lands).
"""
from __future__ import annotations

import sys
from collections import Counter

from .experiments import paper_mnist as pm
from .experiments import regime_map as rm
from .experiments import regime_verdicts as rv
from .sweep import collect
from .utils import REPO_ROOT

README = REPO_ROOT / "README.md"
START, END = "<!-- findings:start (python -m revgn.findings --write) -->", "<!-- findings:end -->"


def _tier(tier: str) -> dict[str, list[dict]]:
    s, store = rm.SETTINGS[tier], rm.store_of(tier)
    return {label: rm.walk(reg, s, lambda specs: collect(specs, store))[1] for label, reg in s.regimes().items()}


def block() -> str:
    """The findings, as Markdown: the regime map's verdicts (the full-MNIST tier cell by cell, the book tier
    counted), and how far the paper's own MNIST experiment and its tuned tier have been recorded."""
    full, book = _tier("full"), _tier("book")
    lines = ["**Exact GN against a tuned Adam** (test accuracy, GN minus Adam, paired over 5 seeds, 95% "
             "Student-t interval; chapter 07). Full MNIST and the CIFAR-10 subset, runs stopped when validation "
             "accuracy stopped rising (patience 3), each scored at its own validation peak (a checkpoint chosen on "
             "validation data, never the epoch the rule stopped on); not the paper's protocol, which is below:", ""]
    for label, summ in full.items():
        text, word = rv.gap_verdict(summ, len(rm.SETTINGS["full"].seeds), rm.SETTINGS["full"].endpoint)
        lines.append(f"- {label}: {text}; **{word}** (GN rate {rv.rates(summ, 'gn')}, Adam {rv.rates(summ, 'adam')})")
    counts = Counter(rv.gap_verdict(summ, len(rm.SETTINGS["book"].seeds))[1] for summ in book.values())
    lines += ["", f"Book tier ({len(book)} regimes around 2,000 MNIST images, h = 512, n = 128, 6 epochs: a grid of "
              "batch sizes and widths, single-factor changes, the CIFAR-10 subset; 'no comparison': GN refused at "
              "every rate): " + ", ".join(f"{n} {word}" for word, n in sorted(counts.items(), key=lambda kv: -kv[1]))
              + ". Chapter 07 gives each regime with its rates, and says where GN's rate sits at its cap of 2."]
    recs = pm.recorded()
    refused = collect([pm.refused_by_matrix_rank()], pm.store_of())[0]
    runs = pm.paired_runs(recs)
    lines += ["", "**The paper's own MNIST experiment** (h = 8000, n = 1024, 100 epochs, paper rates, 5 seeds; "
              "chapter 09, `revgn.experiments.paper_mnist`): recorded so far "
              + ", ".join(f"{pm.NAMES[m]} {sum(r is not None for r in recs[m])} of "
                          f"{len(pm.SEEDS)}" for m in pm.METHODS) + " runs"
              + (f", {_count(len(runs['gn']), 'paired seed')}." if runs["gn"] else "; no verdict yet.")
              + (" Under the default rank rule exact GN refused the paper's features at epoch 1 "
                 "(s_min/s_max below max(n, h) eps), so its GN arm uses the rule 'rounding'."
                 if refused is not None and not refused.ok else "")]
    lines += _claims(runs)
    tuned = pm.tuned_recorded()
    tried = lambda m: f"{_count(len(tuned.grid[m]), 'seed-0 rate')} recorded"
    rate = lambda m: (f"rate {tuned.chosen[m].lr:g}" + (" (its cap)" if tuned.chosen[m].capped else "")
                      if tuned.chosen[m] else f"rate not chosen yet ({tried(m)}{tuned.next_at(m)})")
    lines += ["", f"**Tuned rates, to the end of training** (h = {pm.TUNED_HIDDEN}, n = {pm.BASE.batch_size}, "
              f"{pm.EPOCHS} epochs, GN and Adam each tuned on seed 0 by peak validation accuracy; chapter 09): "
              + "; ".join(f"{pm.NAMES[m]} {rate(m)}, "
                          f"{sum(r is not None for r in tuned.records[m])} of {len(pm.SEEDS)} seeds at it"
                          for m in tuned.chosen)
              + (f"; {_count(len(tuned.runs['gn']), 'paired seed')}." if tuned.runs["gn"] else "; no verdict yet.")]
    lines += _claims(tuned.runs)
    return "\n".join(lines)


def _count(n: int, noun: str) -> str:
    """"1 paired seed", "3 paired seeds"."""
    return f"{n} {noun}{'s' * (n != 1)}"


def _claims(runs: dict[str, list]) -> list[str]:
    """The paper's headline claims (Adam ends lower on training loss; Adam generalises better) over `runs`,
    one line per endpoint; none without a paired seed."""
    if not runs["gn"]:
        return []
    return [f"- {name}: " + "; ".join(
        f"{f.measured}: {f.text() if 'points' in f.measured else f.text(1, '')}, **{f.verdict}**"
        for f in pm.findings(runs, endpoint) if f.claim in (pm.PAPER_SAYS["test_acc"], pm.PAPER_SAYS["train_loss"]))
        for endpoint, name in (("end", "end of training"), ("best_val", "best validation epoch"))]


def in_readme(text: str | None = None) -> str:
    """The block as the README holds it (between the markers)."""
    text = README.read_text() if text is None else text
    if START not in text or END not in text:
        raise ValueError(f"{README} has no findings block: add the lines {START!r} and {END!r}")
    return text.split(START, 1)[1].split(END, 1)[0].strip()


def write() -> None:
    text = README.read_text()
    in_readme(text)
    head, rest = text.split(START, 1)
    README.write_text(head + START + "\n" + block() + "\n" + END + rest.split(END, 1)[1])


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        write()
    else:
        print(block())
