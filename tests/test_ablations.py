"""Chapter 06's ablations as data: every variant tuned (or fixed) on the first seed, its rate reused for the
others, switches trained at the rates chosen for their baselines; walked on fake records (no training)."""
from __future__ import annotations

import math

import pytest

from revgn.experiments import ablations as ab
from revgn.runs import Record
from revgn.history import History


class Store:
    """Records appear when asked for twice: the walk sees what a sweep of the previous round recorded."""

    def __init__(self, acc):
        self.acc, self.recorded = acc, {}

    def __call__(self, specs):
        return [self.recorded.get(s.key) for s in specs]

    def run(self, specs):
        for s in specs:
            self.recorded[s.key] = Record(s, History(), {"val_acc": self.acc(s), "train_loss": 0.1 + 0.01 * s.seed}, {})


def test_every_variant_is_tuned_on_seed_0_and_reused_and_switches_use_the_chosen_rates():
    # validation accuracy peaks at GN rate 1 (scaled by 1 + rho for a ridge) and Adam rate 1e-3
    def acc(spec):
        o = spec.optimizer
        best = 1e-3 if o.name == "adam" else 1.0 * (1 + (o.ridge if o.pinv == "ridge" else 0))
        return 0.9 - abs(math.log(o.lr / best)) / 100

    store = Store(acc)
    for _ in range(10):  # sweep rounds
        needed, done = ab.walk("book", store)
        if all(r is not None for r in store(needed)):
            break
        store.run(needed)
    assert set(done) == set(ab.VARIANTS)
    t = ab.TIERS["book"]
    for label, res in done.items():
        sel, recs = res.selection, res.records
        v = ab.VARIANTS[label]
        assert [r.spec.seed for r in recs] == list(t.seeds) == [r.spec.model.seed for r in recs]
        assert len({r.spec.data for r in recs}) == 1  # the same data subset at every seed: paired
        if v.then is None and v.match is None:
            assert {r.spec.optimizer.lr for r in recs} == {sel.lr}  # seed 0's choice, reused
        if v.tune and v.then is None:
            assert sel.bracketed and min(sel.scores) < sel.lr < max(sel.scores)
    assert done["GN exact"].selection.lr == 1.0 and done["Adam"].selection.lr == pytest.approx(1e-3)
    assert done["ridge 10"].selection.lr == pytest.approx(11.0)
    assert {r.spec.optimizer.lr for r in done["GN, lr 0.01"].records} == {0.01}  # a fixed rate stays fixed
    switch = done["Adam -> GN"].records[0].spec
    assert (switch.optimizer.name, switch.optimizer.lr, switch.then.name, switch.then.lr) == ("adam", pytest.approx(1e-3),
                                                                                            "gn", 1.0)
    equal = done["GN, lr 0.01, equal training loss"].records  # trained down to GN at 0.1's loss, seed by seed
    assert [r.spec.until_train_loss for r in equal] == [r.metrics["train_loss"] for r in done["GN, lr 0.1"].records]
    assert {(r.spec.optimizer.lr, r.spec.epochs) for r in equal} == {(0.01, 90)}
    with pytest.raises(ValueError, match="tier"):
        ab.grid("huge")


def test_the_right_inverse_comparison_tunes_every_method_on_seed_0_at_shared_seeds():
    from revgn.experiments import right_inverse as ri

    def acc(spec):
        best = {"gn": 1.0, "gn-mp": 0.3, "adam": 1e-3, "sgd": 0.1}[spec.optimizer.name]
        return 0.9 - abs(math.log(spec.optimizer.lr / best)) / 100

    store = Store(acc)
    for _ in range(10):
        needed, done = ri.walk("mnist", store)
        if all(r is not None for r in store(needed)):
            break
        store.run(needed)
    assert set(done) == set(ri.METHODS)
    assert done["Moore-Penrose GN (x_L)"].selection.lr == pytest.approx(0.3) and done["layer-wise GN"].selection.lr == 1.0
    outputs = {label: {r.spec.optimizer.output for r in res.records} for label, res in done.items()}
    assert outputs["Moore-Penrose GN (x_L)"] == {"body"} and outputs["Moore-Penrose GN (logits)"] == {"logits"}
    first = [res.records[0].spec for res in done.values()]
    assert len({(s.data, s.model, s.seed) for s in first}) == 1  # paired: one subset, one init, one order
    assert all(s.data.dtype == "float64" for s in first)


@pytest.mark.parametrize("shift, spread, letter", [(0.02, 0.001, "b"), (-0.02, 0.001, "b"), (0.001, 0.001, "a"),
                                                   (0.0, 0.03, "c")])
def test_the_right_inverse_verdict_follows_the_paired_intervals(shift, spread, letter):
    """(a) when both Moore-Penrose steps' paired test-accuracy gaps to the layer-wise step lie inside +-1 point
    (here 0.1 points, detectable but within the margin); (b) when a gap excludes 0 and is not that small; (c)
    otherwise (here: seed-to-seed noise of 3 points around no difference)."""
    from revgn.experiments import right_inverse as ri

    def test_acc(spec):
        noise = spread * math.sin(7.0 * spec.seed + len(spec.optimizer.output))  # differs by seed and by step
        return 0.9 + (shift if spec.optimizer.name == "gn-mp" else 0.0) + (noise if spec.optimizer.name == "gn-mp" else 0)

    class Scored(Store):
        def run(self, specs):
            for s in specs:
                self.recorded[s.key] = Record(s, History(), {"val_acc": 0.9 - abs(math.log(s.optimizer.lr)) / 100,
                                                             "test_acc": test_acc(s), "train_loss": 0.1}, {})

    store = Scored(None)
    for _ in range(10):
        needed, done = ri.walk("mnist", store)
        if ri.which_inverse(done) is not None:
            break
        assert ri.which_inverse(done) is None  # no verdict while a GN step is missing
        store.run(needed)
    answer = ri.which_inverse(done)
    assert answer.letter == letter
    assert set(answer.comparisons) == {"Moore-Penrose GN (logits)", "Moore-Penrose GN (x_L)"}
    assert all(c.n == 5 and c.mean == pytest.approx(shift, abs=spread) for c in answer.comparisons.values())
