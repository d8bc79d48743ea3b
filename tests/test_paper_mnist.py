"""The paper's own MNIST experiment as run specs (`revgn.experiments.paper_mnist`), and the two endpoints and
the whole-curve rate choice of the fixed-horizon protocol (`gn_protocol`)."""
from __future__ import annotations

import os
from pathlib import Path

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from revgn.experiments import gn_protocol as gp
from revgn.experiments import paper_mnist as pm
from revgn.runs import Record, run
from revgn.sweep import collect
from revgn.history import History
from revgn.plots import seed_band


def test_the_paper_rate_grid_is_the_papers_setting_paired_by_seed():
    grid = pm.paper_rates()
    specs = [s for s in grid.specs if s != pm.refused_by_matrix_rank()]
    assert len(specs) == 15 and [s.seed for s in specs] == [s for s in pm.SEEDS for _ in pm.METHODS]
    for s in specs:
        assert (s.data.n_train, s.data.n_val, s.data.n_test, s.data.subset_seed) == (55_000, 5_000, None, 0)
        assert (s.model.depth, s.model.hidden, s.model.init_std, s.model.seed) == (2, 8000, 1e-3, s.seed)
        assert (s.batch_size, s.epochs, s.patience, s.until_train_loss) == (1024, 100, 0, 0.0)
        assert s.optimizer.lr == pm.PAPER_RATES[s.optimizer.name] and s.track_batch_change
        assert s.eval_train_size >= 10_000 and set(s.measure) >= {"ntk_similarity", "cka", "weight_cosine"}
    gn = [s for s in specs if s.optimizer.name == "gn"]
    assert {s.optimizer.rank_rule for s in gn} == {"rounding"}
    assert pm.refused_by_matrix_rank().optimizer.rank_rule == "matrix_rank"
    with pytest.raises(ValueError, match="method must be one of"):
        pm.spec("lbfgs", 0)


def _rec(spec, val_acc, test_acc) -> Record:
    h = History()
    for e, (v, t) in enumerate(zip(val_acc, test_acc)):
        h.log(h.epochs, epoch=e, val_acc=v, test_acc=t, train_loss=1.0 / (e + 1))
    return Record(spec, h, {"val_acc": val_acc[-1], "test_acc": test_acc[-1], "train_loss": 1.0 / len(val_acc)}, {})


def test_the_endpoints_score_a_run_at_its_end_or_at_its_own_validation_peak():
    rec = _rec(pm.spec("adam", 0), [0.1, 0.9, 0.95, 0.95, 0.93], [0.1, 0.88, 0.94, 0.96, 0.92])
    assert gp.best_val_index(rec) == 2, "the first evaluation at the peak"
    assert gp.at_endpoint(rec, "test_acc", "end") == 0.92 and gp.at_endpoint(rec, "test_acc", "best_val") == 0.94
    assert gp.score(rec, "peak_val_acc") == 0.95 and gp.score(rec, "val_acc") == 0.93
    with pytest.raises(ValueError, match="endpoint"):
        gp.at_endpoint(rec, "test_acc", "stop")
    a = [_rec(pm.spec("gn", s), [0.5, 0.9], [0.5, 0.9 + s / 100]) for s in range(5)]
    b = [_rec(pm.spec("adam", s), [0.5, 0.9], [0.5, 0.9]) for s in range(5)]
    assert gp.compare(a, b, endpoint="best_val").n == 5 and gp.compare(a, b).mean == pytest.approx(0.02)


def test_the_tuned_tier_chooses_on_seed_0_by_the_whole_curve_and_probes_past_a_binding_cap():
    store = {}
    records_of = lambda specs: [store.get(s.key) for s in specs]
    needed, chosen, _ = pm.tuned_walk(records_of)
    assert {(s.optimizer.name, s.optimizer.lr) for s in needed} == \
        {("gn", 0.3), ("gn", 1.0), ("adam", 1e-4), ("adam", 3e-4), ("adam", 1e-3)}
    assert {s.seed for s in needed} == {0} and {s.model.hidden for s in needed} == {pm.TUNED_HIDDEN}
    peak = {("gn", 0.3): 0.95, ("gn", 1.0): 0.96, ("gn", 2.0): 0.97, ("adam", 1e-4): 0.96, ("adam", 3e-4): 0.98,
            ("adam", 1e-3): 0.97}
    for _ in range(4):  # record what the walk asks for, until it asks for nothing new
        for s in needed:
            if s.key not in store:
                p = peak.get((s.optimizer.name, s.optimizer.lr), 0.9)
                store[s.key] = _rec(s, [0.5, p, 0.9], [0.5, p, 0.9])  # every run ends at 0.9: only the peak decides
        needed, chosen, _ = pm.tuned_walk(records_of)
    assert chosen["adam"][0].lr == 3e-4 and chosen["gn"][0].lr == 2.0 and chosen["gn"][0].capped
    assert any(s.optimizer.lr == pm.BEYOND_CAP and s.seed == 0 for s in needed), "the cap is probed"
    assert {s.seed for s in needed if s.optimizer.name == "gn" and s.optimizer.lr == 2.0} == set(pm.SEEDS)



def test_the_tuned_walk_asks_for_the_runs_that_make_a_choice_before_the_seeds_of_a_choice_made():
    """GN chosen (its grid recorded), Adam's grid not: Adam's seed-0 rates come before GN's seeds 1-4, since
    Adam's choice gates four more runs and the sweep dispatches in the walk's order. Both chosen: the seeds
    come in pairs (GN and Adam at seed 1, then at seed 2, ...), so a paired seed lands every two runs."""
    store = {}
    records_of = lambda specs: [store.get(s.key) for s in specs]
    gn_grid = [s for s in pm.tuned_walk(records_of)[0] if s.optimizer.name == "gn"]
    gn_grid += gp.rate_grid(gn_grid[0], [2.0])  # the rate that brackets the first grid's best, 1
    for s, p in zip(gn_grid, (0.95, 0.97, 0.96)):
        store[s.key] = _rec(s, [0.5, p, 0.9], [0.5, p, 0.9])
    needed, chosen, _ = pm.tuned_walk(records_of)
    assert chosen["gn"][0].lr == 1.0 and chosen["adam"][0] is None
    order = [(s.optimizer.name, s.seed) for s in needed if s.key not in store]  # the walk lists the recorded too
    assert order == [("adam", 0)] * 3 + [("gn", s) for s in pm.SEEDS[1:]]
    adam_grid = [s for s in needed if s.optimizer.name == "adam"]
    for s, p in zip(adam_grid, (0.95, 0.97, 0.96)):  # Adam's best is inside its grid: chosen at once
        store[s.key] = _rec(s, [0.5, p, 0.9], [0.5, p, 0.9])
    needed, chosen, _ = pm.tuned_walk(records_of)
    assert chosen["adam"][0].lr == 3e-4
    order = [(s.optimizer.name, s.seed) for s in needed if s.key not in store]
    assert order == [(m, s) for s in pm.SEEDS[1:] for m in ("gn", "adam")], "seed by seed: each pair finishes"


def _save(store, spec, peak, failure=None):
    """Write a record file of `spec` whose validation accuracy peaks at `peak` (or that failed)."""
    from revgn.records import record_path
    from revgn.utils import atomic_write_json

    rec = _rec(spec, [0.5, peak, 0.9], [0.5, peak, 0.9])
    rec.history.log(rec.history.steps, epoch=1, loss=1.0)
    if failure:
        rec = Record(spec, rec.history, {}, {}, failure)
    atomic_write_json(record_path(store, spec), rec.to_dict())


def test_the_tuned_tier_is_read_from_its_store_as_far_as_it_is_recorded(tmp_path):
    """What chapter 09 renders of the tuned tier: the seed-0 grid with its choice, the runs at the chosen rate
    paired by seed (only where both methods finished), and the run past GN's cap, read from record files."""
    from revgn.records import record_path

    save = lambda spec, peak, failure=None: _save(tmp_path, spec, peak, failure)
    t = pm.tuned_recorded(tmp_path)
    assert t.chosen == {"gn": None, "adam": None} and t.grid == {"gn": {}, "adam": {}} and t.beyond_cap is None
    assert t.pending == {"gn": (0.3, 1.0), "adam": (1e-4, 3e-4, 1e-3)}, "each choice waits for its first grid"
    assert t.next_at("adam") == "; next at 0.0001, 0.0003, 0.001"
    assert all(r is None for recs in t.records.values() for r in recs) and t.runs == {"gn": [], "adam": []}
    peak = {("gn", 0.3): 0.95, ("gn", 1.0): 0.96, ("gn", 2.0): 0.97, ("adam", 1e-4): 0.96, ("adam", 3e-4): 0.98,
            ("adam", 1e-3): 0.97, ("gn", pm.BEYOND_CAP): 0.93}
    for _ in range(3):  # record the seed-0 grids as the walk asks for them (GN's grows to its cap of 2)
        for s in pm.tuned_walk(lambda specs: collect(specs, tmp_path))[0]:
            if s.seed == 0 and not record_path(tmp_path, s).exists():
                save(s, peak[(s.optimizer.name, s.optimizer.lr)])
        t = pm.tuned_recorded(tmp_path)
        if t.chosen["gn"] is None:  # GN's first grid peaks at its top edge, 1: the choice waits for 2
            assert t.pending["gn"] == (2.0,) and sorted(t.grid["gn"]) == [0.3, 1.0] and t.next_at("gn") == "; next at 2"
    assert t.pending == {}, "no choice waits once both are made"
    assert t.next_at("gn") == t.next_at("adam") == "", "a made choice waits for no rate"
    assert (t.chosen["gn"].lr, t.chosen["gn"].capped, t.chosen["adam"].lr) == (2.0, True, 3e-4)
    assert sorted(t.grid["gn"]) == [0.3, 1.0, 2.0] and sorted(t.grid["adam"]) == [1e-4, 3e-4, 1e-3]
    assert t.beyond_cap is not None and t.beyond_cap.spec.optimizer.lr == pm.BEYOND_CAP
    assert t.beyond_cap.spec.optimizer.lr not in t.grid["gn"], "the cap probe is not one of the choices"
    assert [r is not None for r in t.records["gn"]] == [True, False, False, False, False]
    for seed in (1, 2):  # seed 1: both methods; seed 2: GN's run failed, so it is not a paired seed
        at = lambda m, lr: pm.tuned_arms()[m].specs[seed].replace(**{"optimizer.lr": lr})
        save(at("adam", 3e-4), 0.97)
        save(at("gn", 2.0), 0.96, failure=None if seed == 1 else "non-finite loss")
    t = pm.tuned_recorded(tmp_path)
    assert [r.spec.seed for r in t.runs["gn"]] == [r.spec.seed for r in t.runs["adam"]] == [0, 1]
    assert all(r.spec.optimizer.lr == 2.0 for r in t.runs["gn"])
    assert sorted(r.spec.key for r in t.every()) == sorted(f.stem for f in tmp_path.glob("*.json")), \
        "every record of the store is read once, the failed one too"


needs_mnist = pytest.mark.skipif(not (Path(os.environ.get("REVGN_DATA", "/nonexistent")) / "mnist").exists(),
                                 reason="needs MNIST in $REVGN_DATA (make test points it at ../shared/data)")
#: the paper's protocol at a toy size: every measurement of the real tier, 11 epochs (saturation needs > 10)
TINY = pm.BASE.replace(**{"data.n_train": 512, "data.n_val": 128, "data.n_test": 256, "model.hidden": 64,
                          "batch_size": 32, "epochs": 11, "eval_train_size": 128, "kernel_inputs": 2,
                          "cka_inputs": 64})


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory):
    """The paper-rate tier at toy size, seeds 0 and 1 of every method and seed 2 of GN alone, recorded."""
    store = tmp_path_factory.mktemp("paper_rates")
    for m in pm.METHODS:
        for s in (0, 1, 2) if m == "gn" else (0, 1):
            run(pm.spec(m, s, TINY), store)
    return store


@needs_mnist
def test_the_paper_claims_are_read_as_paired_verdicts_over_the_seeds_every_method_finished(tiny_store):
    recs = {m: collect([pm.spec(m, s, TINY) for s in pm.SEEDS], tiny_store) for m in pm.METHODS}
    runs = pm.paired_runs(recs)
    assert [[r.spec.seed for r in runs[m]] for m in pm.METHODS] == [[0, 1]] * 3, "seed 2 lacks SGD and Adam"
    for endpoint in ("end", "best_val"):
        found = pm.findings(runs, endpoint)
        assert {f.claim for f in found} == set(pm.PAPER_SAYS.values())
        for f in found:
            assert f.comparison.n == 2 and np.isfinite(f.comparison.mean)
            assert f.verdict == "no verdict (2 of 5 seeds)", "two seeds are an interval, not a verdict"
    acc = lambda endpoint: next(f for f in pm.findings(runs, endpoint) if f.claim == pm.PAPER_SAYS["test_acc"])
    adam, gn = runs["adam"], runs["gn"]
    expect = lambda endpoint: np.mean([gp.at_endpoint(a, "test_acc", endpoint) - gp.at_endpoint(g, "test_acc",
                                                                                                 endpoint)
                                       for a, g in zip(adam, gn)])
    for endpoint in ("end", "best_val"):
        assert acc(endpoint).comparison.mean == pytest.approx(expect(endpoint), abs=1e-12)


@needs_mnist
def test_a_seed_band_is_the_mean_and_range_over_the_seeds_of_one_length(tiny_store):
    recs = {m: collect([pm.spec(m, s, TINY) for s in pm.SEEDS], tiny_store) for m in pm.METHODS}
    runs = pm.paired_runs(recs)
    _, ax = plt.subplots()
    x, mean, lo, hi = seed_band(ax, runs["gn"], "test_acc", label="gn")
    per_seed = np.array([r.history.epochs["test_acc"] for r in runs["gn"]])
    assert list(x) == list(range(TINY.epochs + 1)) and np.allclose(mean, per_seed.mean(0))
    assert np.array_equal(lo, per_seed.min(0)) and np.array_equal(hi, per_seed.max(0))
    assert np.array_equal(ax.lines[0].get_ydata(), mean) and len(ax.collections) == 1, "a line and its band"
    assert all(float(t).is_integer() for t in ax.get_xticks()), "epochs are whole numbers"
    x, mean, lo, hi = seed_band(ax, runs["gn"], gp.drop_by_epoch)
    assert list(x) == list(range(1, TINY.epochs + 1)), "a per-epoch mean of steps starts at epoch 1"
    assert np.allclose(mean, np.mean([gp.drop_by_epoch(r) for r in runs["gn"]], axis=0))
    with pytest.raises(ValueError, match="one length"):
        seed_band(ax, [runs["gn"][0], _rec(runs["gn"][1].spec, [0.5], [0.5])], "test_acc")
    plt.close("all")


@needs_mnist
def test_without_sgd_runs_the_claims_about_sgd_are_left_out_and_the_rest_are_unchanged(tiny_store):
    recs = {m: collect([pm.spec(m, s, TINY) for s in pm.SEEDS], tiny_store) for m in pm.METHODS}
    every = pm.paired_runs(recs)
    two = pm.paired_runs({m: recs[m] for m in ("gn", "adam")})
    assert [r.spec.seed for r in two["gn"]] == [0, 1] and set(two) == {"gn", "adam"}
    for endpoint in ("end", "best_val"):
        full, without = pm.findings(every, endpoint), pm.findings(two, endpoint)
        assert not any("SGD" in f.measured or "sgd" in f.measured for f in without)
        assert [f.measured for f in full if "sgd" not in f.measured.lower()] == [f.measured for f in without]
        same = {f.measured: f.comparison.mean for f in full}
        assert all(same[f.measured] == f.comparison.mean for f in without)


def test_with_no_paired_seed_every_claim_says_no_verdict():
    empty = pm.paired_runs({m: [None] * len(pm.SEEDS) for m in pm.METHODS})
    found = pm.findings(empty)
    assert all(f.comparison is None and f.verdict == "no verdict (0 of 5 seeds)" for f in found)
    assert found[0].text() == "no paired seed recorded"


@needs_mnist
def test_the_readme_findings_give_the_paper_tier_verdicts_at_both_endpoints_once_seeds_are_paired(
        tiny_store, monkeypatch):
    from revgn import findings

    tiny = {m: collect([pm.spec(m, s, TINY) for s in pm.SEEDS], tiny_store) for m in pm.METHODS}
    monkeypatch.setattr(pm, "recorded", lambda store=None: tiny)
    block = findings.block()
    assert "GN 3 of 5, SGD 2 of 5, Adam 2 of 5 runs, 2 paired seeds." in block
    for endpoint in ("- end of training: ", "- best validation epoch: "):
        line = next(l for l in block.splitlines() if l.startswith(endpoint))
        assert line.count("**no verdict (2 of 5 seeds)**") == 2, line


def test_the_readme_findings_say_how_far_the_tuned_tier_has_chosen_its_rates(tmp_path, monkeypatch):
    from revgn import findings

    read = pm.tuned_recorded
    monkeypatch.setattr(pm, "tuned_recorded", lambda store=None: read(tmp_path))
    line = lambda: next(l for l in findings.block().splitlines() if l.startswith("**Tuned rates"))
    assert "GN rate not chosen yet (0 seed-0 rates recorded; next at 0.3, 1), 0 of 5 seeds at it" in line()
    for k, (lr, peak) in enumerate(((0.3, 0.95), (1.0, 0.96)), 1):  # GN's best is its top edge: 2 is asked
        _save(tmp_path, pm.tuned_arms()["gn"].specs[0].replace(**{"optimizer.lr": lr}), peak)
        waits = {1: "1", 2: "2"}[k]  # then 2, which brackets the best, 1
        assert f"GN rate not chosen yet ({k} seed-0 rate{'s' * (k > 1)} recorded; next at {waits})" in line()
    _save(tmp_path, pm.tuned_arms()["gn"].specs[0].replace(**{"optimizer.lr": 2.0}), 0.97)
    assert "GN rate 2 (its cap), 1 of 5 seeds at it; Adam rate not chosen yet" in line() and "no verdict yet" in line()
