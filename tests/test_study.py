"""The one experiment walk (`revgn.experiments.study`): rate policies, tied arms and a study's tiers, on fake
records (a score per spec, no training)."""
from __future__ import annotations

import math

import pytest

from revgn.experiments import gn_protocol as gp
from revgn.experiments.study import GN_CAP, GRIDS, Arm, ArmResult, Rates, Study, Tied, walk, walk_arm
from revgn.records import Record
from revgn.history import History
from revgn.spec import DataSpec, ModelSpec, OptimSpec, RunSpec

BASE = RunSpec(DataSpec("mnist", n_train=64, n_val=16), ModelSpec(hidden=32), OptimSpec("gn", 0.1), batch_size=16)


class Store:
    """Records made up from `acc(spec)` (NaN: a failed run); `run` records the specs asked for."""

    def __init__(self, acc, val: bool = True):
        self.acc, self.recs, self.val = acc, {}, val

    def __call__(self, specs):
        return [self.recs.get(s.key) for s in specs]

    def run(self, specs):
        for s in specs:
            a = self.acc(s)
            ok = math.isfinite(a)
            key = "val_acc" if self.val else "test_acc"  # a run without a validation split has no val_acc
            hist = History({"epoch": [1], "loss": [1.0]}, {"epoch": [0, 1], key: [0.1, a if ok else 0.1]})
            self.recs[s.key] = Record(s, hist, {key: a, "train_loss": 1.0} if ok else {}, {},
                                      None if ok else "NonFiniteLossError: diverged")


def drive(arms, store, rounds=10):
    for _ in range(rounds):
        needed, out = walk(arms, store)
        if all(r is not None for r in store(needed)):
            return needed, out
        store.run(needed)
    raise AssertionError("the walk did not settle")


def peak_at(best):
    return lambda s: 0.9 - abs(math.log(s.optimizer.lr / best)) / 100


def test_rates_take_the_one_grid_and_cap_of_their_optimiser():
    assert Rates.tuned("gn") == Rates(GRIDS["gn"], cap=GN_CAP)
    ridge = Rates.tuned("gn", scale=11.0)
    assert ridge.grid == pytest.approx(tuple(11 * lr for lr in GRIDS["gn"])) and ridge.cap == pytest.approx(22.0)
    assert Rates.tuned("adam").cap is None
    with pytest.raises(ValueError, match="criterion"):
        Rates((0.1,), criterion="test_acc")  # the test set never chooses
    with pytest.raises(ValueError, match="positive"):
        Rates(())
    with pytest.raises(ValueError, match="None only for a fixed rate"):
        Rates((0.1, 0.3), criterion=None)  # a grid needs a criterion to choose by
    assert Rates.fixed(0.1).criterion is None


def test_a_rate_chosen_on_the_first_seed_trains_the_others_and_a_tied_arm_waits_for_it():
    seeds = gp.at_seeds(BASE, range(3))
    chosen = lambda res: res["GN"].selection.lr
    tied = Tied(("GN",), lambda res: Arm(gp.at_seeds(BASE.replace(**{"optimizer.lr": chosen(res)}), range(3)),
                                         Rates.fixed(chosen(res), each_seed=True)))
    with pytest.raises(ValueError, match="tied arm 'switch' needs \\['GN'\\]"):
        walk({"switch": tied, "GN": Arm(seeds, Rates.tuned("gn"))}, Store(peak_at(1.0)))
    arms = {"GN": Arm(seeds, Rates.tuned("gn")), "switch": tied}
    store = Store(peak_at(1.0))
    needed, out = walk(arms, store)
    assert "switch" not in out and {s.optimizer.lr for s in needed} == set(GRIDS["gn"])  # seed 0's grid first
    needed, out = drive(arms, store)
    gn = out["GN"]
    assert gn.selection.lr == 1.0 and gn.selection.bracketed
    assert [r.spec.seed for r in gn.records] == [0, 1, 2] and {r.spec.optimizer.lr for r in gn.records} == {1.0}
    assert [(r.spec.seed, r.spec.optimizer.lr) for r in out["switch"].records] == [(0, 1.0), (1, 1.0), (2, 1.0)]


def test_a_fixed_rate_per_seed_keeps_its_failed_runs_and_a_failed_first_seed_frees_no_other():
    fails = lambda s: math.nan if s.seed == 1 else 0.9
    per_seed = Arm(gp.at_seeds(BASE, range(3)), Rates.fixed(0.1, each_seed=True))
    _, out = drive({"a": per_seed}, Store(fails, val=False))  # nothing is chosen: no validation split needed
    assert [r.ok for r in out["a"].records] == [True, False, True]  # a table can say which seed failed
    assert out["a"].selections[1].best is None
    first_fails = lambda s: math.nan if s.seed == 0 else 0.9
    store = Store(first_fails)
    needed, out = drive({"b": Arm(gp.at_seeds(BASE, range(3)), Rates.fixed(0.1))}, store)
    assert [s.seed for s in needed] == [0] and out["b"].records == []  # nothing chosen: nothing to rerun


def test_a_grid_every_rate_of_which_fails_has_no_record_and_the_cap_binds():
    store = Store(lambda s: math.nan)
    _, out = drive({"x": Arm([BASE], Rates.tuned("gn"))}, store)
    assert out["x"].selection.best is None and out["x"].records == []
    _, out = drive({"x": Arm([BASE], Rates.tuned("gn"))}, Store(peak_at(30.0)))
    assert out["x"].selection.lr == GN_CAP and out["x"].selection.capped


def test_a_study_derives_its_store_grid_and_tier_lookup_and_names_bad_input(tmp_path):
    study = Study("toy", {"small": BASE}, lambda base: {"A: gn": Arm([base], Rates.tuned("gn")),
                                                        "B: adam": Arm([base.replace(optimizer=OptimSpec("adam"))],
                                                                       Rates.tuned("adam"))}, kind="setting")
    assert study.store("small").parts[-2:] == ("toy", "small")
    grid = study.grid("small", store=tmp_path)
    assert grid.topic == "toy/small" and len(grid.specs) == 6  # both starting grids, seed 0
    assert {s.optimizer.name for s in study.grid("small", tmp_path, only="B").specs} == {"adam"}
    with pytest.raises(ValueError, match="setting must be one of"):
        study.store("large")
    with pytest.raises(ValueError, match="no arm of toy/small is labelled 'C'"):
        study.grid("small", tmp_path, only="C")


def test_walk_arm_lists_each_seeds_record_at_its_rate():
    store = Store(peak_at(0.3))
    arm = Arm(gp.at_seeds(BASE, range(2)), Rates.tuned("gn", each_seed=True))
    for _ in range(5):
        needed, sels, recs = walk_arm(arm, store)
        store.run(needed)
    assert [s.lr for s in sels] == [0.3, 0.3] and [r.spec.seed for r in recs] == [0, 1]
    assert isinstance(ArmResult(sels, recs).selection, gp.Selection)


def test_a_seed_sets_the_training_and_the_study_says_what_it_does_to_the_subset():
    """gn_protocol.at_seeds: a seed sets the initial weights and batch order; the training subset is the
    spec's own ("shared") or the seed's draw ("drawn", the regime map's points, whose specs are built this way)."""
    from revgn.experiments import regime_map as rm

    shared, drawn = gp.at_seeds(BASE, [0, 3]), gp.at_seeds(BASE, [0, 3], subset="drawn")
    assert [(s.seed, s.model.seed, s.data.subset_seed) for s in shared] == [(0, 0, 0), (3, 3, 0)]
    assert [(s.seed, s.model.seed, s.data.subset_seed) for s in drawn] == [(0, 0, 0), (3, 3, 3)]
    assert shared[0].key == drawn[0].key and shared[1].key != drawn[1].key
    with pytest.raises(ValueError, match="subset must be one of"):
        gp.at_seeds(BASE, [0], subset="fixed")
    point = rm.SETTINGS["book"].base.vary(seed=2)
    spec = point.spec("gn", 0.1, rm.SETTINGS["book"])
    assert (spec.seed, spec.model.seed, spec.data.subset_seed) == (2, 2, 2)
