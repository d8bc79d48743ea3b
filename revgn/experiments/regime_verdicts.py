"""What a regime map's records say (`regime_map.summaries`): the verdict on "exact GN generalises worse than a
tuned Adam" per regime, as a value (`Outcome`) and in words, and the tables and readings chapter 07 prints.

Every comparison is GN minus Adam test accuracy, paired over a regime's seeds (`revgn.stats.paired`), and the
one verdict rule of the book (`revgn.stats.verdict`) decides it.
"""
from __future__ import annotations

import enum

import numpy as np

from ..book import table
from ..stats import TEST, Verdict, paired, verdict
from . import gn_protocol as gp
from .regime_map import OPTIMISERS

NAMES = {"gn": "GN", "adam": "Adam"}  # as the prose writes them


class Outcome(enum.Enum):
    """What a regime's records say of the claim "exact GN generalises worse than Adam" (`outcome`): a value
    that chapters count and group by, rendered in words by `gap_verdict`."""

    HOLDS = "claim holds: GN worse"
    FAILS = "claim fails: GN better"
    NO_DIFFERENCE = "no detectable difference"
    NO_VERDICT = "no verdict"
    NO_COMPARISON = "no comparison"  # exact GN refused at every rate


def outcome(summaries: list[dict], endpoint: str = "end") -> Outcome:
    """The regime's `Outcome`: the verdict rule on its paired gap (GN minus Adam test accuracy) at `endpoint`."""
    if not summaries:
        return Outcome.NO_VERDICT
    if any(r["gap"] is None for r in summaries):
        return Outcome.NO_COMPARISON
    return {Verdict.BELOW: Outcome.HOLDS, Verdict.ABOVE: Outcome.FAILS, Verdict.NEITHER: Outcome.NO_DIFFERENCE,
            Verdict.TOO_FEW: Outcome.NO_VERDICT}[gap(summaries, endpoint).verdict]


def gap_verdict(summaries: list[dict], seeds: int | None = None, endpoint: str = "end") -> tuple[str, str]:
    """A regime's gap at `endpoint`, paired over its seeds ("-1.2 [-2.0, -0.4] points (5 seeds)"), and the
    verdict of `revgn.stats.verdict` on it: "claim holds: GN worse", "claim fails: GN better", "no detectable
    difference", or no verdict with fewer than five seeds. seeds: how many the regime has (for "not recorded")."""
    if not summaries:
        return f"not recorded yet (0 of {seeds or '?'} seeds)", "no verdict"
    if any(r["gap"] is None for r in summaries):
        return "exact GN refused at every rate", "no comparison"
    c = gap(summaries, endpoint)
    return c.text(), verdict(c, above="claim fails: GN better", below="claim holds: GN worse")


def _score(rec, key: str, endpoint: str) -> float:
    """A finished run's `key` at `endpoint`: its final metric at "end", else `gn_protocol.at_endpoint`."""
    return rec.metrics[key] if endpoint == "end" else gp.at_endpoint(rec, key, endpoint)


def _values(summaries: list[dict], key: str, endpoint: str) -> list[list[float]]:
    """[GN's, Adam's] value of `key` at each seed, each run scored at `endpoint` (`gn_protocol.ENDPOINTS`: its
    last evaluation, or its own validation peak)."""
    if endpoint == "end":
        return [[r[o][key] for r in summaries] for o in OPTIMISERS]
    return [[gp.at_endpoint(r[o]["record"], key, endpoint) for r in summaries] for o in OPTIMISERS]


def gap(summaries: list[dict], endpoint: str = "end"):
    """GN minus Adam test accuracy over a regime's seeds, paired (`revgn.stats.paired`; every seed must have run),
    each run scored at `endpoint`."""
    return paired(*_values(summaries, "test_acc", endpoint))


def endpoint_table(regimes: dict[str, list[dict]]) -> str:
    """A Markdown table: each complete regime's gap and verdict scored at the stop (its last evaluation) and at
    each run's own validation peak, and whether the verdict depends on which."""
    rows = []
    for label, summ in regimes.items():
        if not summ or any(r["gap"] is None for r in summ):
            continue
        at = {e: gap(summ, e) for e in gp.ENDPOINTS}
        words = {e: verdict(c, above="claim fails: GN better", below="claim holds: GN worse") for e, c in at.items()}
        rows.append([label, at["end"].text(), words["end"], at["best_val"].text(), words["best_val"],
                     "yes" if at["end"].verdict is not at["best_val"].verdict else "no"])
    return (table(["regime", "gap at the stop", "verdict", "gap at each run's validation peak", "verdict",
                   "depends on the endpoint"], rows) + f"\n\nTest: {TEST}.")


def rates(summaries: list[dict], o: str) -> str:
    """The rates chosen at a regime's seeds ("1, 2 (cap)"); "*" marks a choice at an uncapped grid edge."""
    mark = lambda sel: " (cap)" if sel.capped else "*" if sel.bracketed is False else ""
    chosen = dict.fromkeys(f"{r[o]['lr']:.3g}{mark(r[o]['selection'])}" if r[o]["lr"] is not None else "refused"
                           for r in summaries)
    return ", ".join(chosen) or "-"


def margins(regimes: dict[str, list[dict]], records_of, endpoint: str = "end") -> str:
    """How firmly the first seed chose each regime's rates, and how much the choice matters, one Markdown bullet
    per regime: the validation images by which each optimiser's chosen rate beat its runner-up, and the first seed's test gap
    (points, each run scored at `endpoint`) at the chosen rates and with either runner-up instead. records_of(specs)
    -> records, as in `walk`.
    A rate chosen on one seed is reused for the others, so a margin of a few images is a choice that noise could
    have turned; the runner-up gaps say whether that would have moved the verdict."""
    out = []
    for label, summ in regimes.items():
        if not summ or any(summ[0][o].get("record") is None for o in OPTIMISERS):
            continue
        first = summ[0]
        best = {o: first[o]["record"] for o in OPTIMISERS}
        ups = {o: first[o]["selection"].runner_up for o in OPTIMISERS}
        up = {o: records_of(gp.rate_grid(best[o].spec, [ups[o]]))[0] if ups[o] is not None else None for o in OPTIMISERS}
        n_val = best["gn"].spec.data.n_val
        won = ", ".join(f"{NAMES[o]}'s {first[o]['lr']:.3g} beat {ups[o]:.3g} by "
                        f"{round(first[o]['selection'].margin * n_val)}" for o in OPTIMISERS if ups[o] is not None)
        gap = lambda g, a: f"{100 * (_score(g, 'test_acc', endpoint) - _score(a, 'test_acc', endpoint)):+.1f}"
        swaps = [f"{gap(up['gn'], best['adam'])} with GN's runner-up" if up["gn"] and up["gn"].ok else None,
                 f"{gap(best['gn'], up['adam'])} with Adam's" if up["adam"] and up["adam"].ok else None]
        out.append(f"* {label}: {won} of {n_val:,} validation images; seed {best['gn'].spec.seed}'s test gap "
                   f"{gap(best['gn'], best['adam'])} points at the chosen rates"
                   + "".join(f", {x}" for x in swaps if x) + ".")
    return "\n".join(out)


def rechosen(regimes: dict[str, list[dict]], records_of, criterion: str = "peak_val_acc") -> str:
    """Whether the first seed's rates would change if its same rate grids were read by another `criterion`
    (`gn_protocol.CRITERIA`), one sentence: how many of the choices would differ, and which. The other seeds
    were trained at the rates actually chosen, so a choice that differs is one the records cannot score."""
    changed, total = [], 0
    for label, summ in regimes.items():
        if not summ or any(summ[0][o].get("record") is None for o in OPTIMISERS):
            continue
        for o in OPTIMISERS:
            first = summ[0][o]
            grid = gp.rate_grid(first["record"].spec, sorted(first["selection"].scores))
            other = gp.select([r for r in records_of(grid) if r is not None], criterion)
            total += 1
            if other.lr != first["lr"]:
                changed.append(f"{label}, {NAMES[o]} {other.lr:.3g} instead of {first['lr']:.3g}")
    if not total:
        return ""
    by = {"peak_val_acc": "the peak of each run's validation accuracy", "val_acc": "the validation accuracy where "
          "each run ended", "train_loss": "the final training loss"}[criterion]
    return (f"Read by {by} instead, the same seed-0 grids would change "
            f"{len(changed)} of {total} rate choices" + (f" ({'; '.join(changed)})" if changed else "") + ".")


def verdict_table(regimes: dict[str, list[dict]], seeds: int | None = None, endpoint: str = "end") -> str:
    """The Markdown verdict table of labelled regimes (label -> the summaries of its seeds), each run scored at
    `endpoint`, with the rates."""
    rows = [[label, *gap_verdict(summ, seeds, endpoint), rates(summ, "gn"), rates(summ, "adam")]
            for label, summ in regimes.items()]
    return (table(["regime", "gap, GN - Adam [95% interval]", "verdict", "GN rate", "Adam rate"], rows)
            + f"\n\nTest: {TEST}. Rates: chosen on validation accuracy; (cap): GN at its cap, 2.")


def bracketing(summaries: list[dict]) -> dict[str, int]:
    """How the chosen rates of some summaries sit in their grids: interior, at the cap, or at an uncapped edge
    (the walk ran out of extensions), per optimiser: {"gn interior": k, ...}."""
    out = {}
    for o in OPTIMISERS:
        sels = [r[o]["selection"] for r in summaries if r[o]["lr"] is not None]
        out.update({f"{o} interior": sum(bool(x.bracketed) and not x.capped for x in sels),
                    f"{o} at the cap": sum(x.capped for x in sels),
                    f"{o} at an edge": sum(x.bracketed is False for x in sels)})
    return out


def fit_or_generalise(summaries: list[dict], endpoint: str = "end") -> dict:
    """Where GN's test deficit comes from, paired over seeds, each run scored at `endpoint`: the
    training-accuracy gap (fitting), and the difference of the generalisation gaps, (train - test accuracy) of
    GN minus that of Adam (generalising). test gap = training gap - generalisation-gap difference. "which": the
    verdict."""
    gn_tr, ad_tr = _values(summaries, "train_acc", endpoint)
    gn_te, ad_te = _values(summaries, "test_acc", endpoint)
    fit = paired(gn_tr, ad_tr)
    gen = paired(np.subtract(gn_tr, gn_te), np.subtract(ad_tr, ad_te))
    test = paired(gn_te, ad_te)
    fits_less, gen_worse = fit.verdict is Verdict.BELOW, gen.verdict is Verdict.ABOVE
    which = ("no verdict" if fit.verdict is Verdict.TOO_FEW else
             "in both" if fits_less and gen_worse else
             "in fitting" if fits_less else
             "in generalising" if gen_worse else "inconclusive")
    return {"train": fit, "generalisation": gen, "test": test, "which": which}
