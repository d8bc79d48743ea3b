"""The regime map: settings are validated, its grid is a sweep of run specs, and a point's summary is read
from records: rates chosen on validation, failures ranked last, the gap that of the chosen runs."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from revgn.experiments import gn_protocol as gp
from revgn.experiments import regime_map as rm
from revgn.experiments import regime_verdicts as rv
from revgn.runs import Runs

pytestmark = pytest.mark.skipif(not (Path(os.environ.get("REVGN_DATA", "/nonexistent")) / "mnist").exists(),
                                reason="needs MNIST in $REVGN_DATA (make test points it at ../shared/data)")
TINY = rm.Settings(rm.Point(n_train=256, hidden=64, batch=32, epochs=2), lrs={"gn": (0.3, 1.0), "adam": (1e-3, 1e-2)},
                   seeds=(0, 1), n_val={"mnist": 128}, n_test={"mnist": 256}, kernel_inputs=4)


def test_point_validates_its_settings():
    with pytest.raises(ValueError, match="n <= width h"):
        rm.Point(hidden=64, batch=128)
    with pytest.raises(ValueError, match="unknown dataset"):
        rm.Point(dataset="imagenet")
    with pytest.raises(ValueError, match="pinv"):
        rm.Point(pinv="svd")
    with pytest.raises(ValueError, match="epochs"):
        rm.Point(epochs=0)
    rm.Point(hidden=64, batch=128, pinv="truncate")  # truncation does not need h >= n
    with pytest.raises(ValueError, match="tier"):
        rm.grid("huge")


def test_the_grids_are_sweeps_and_gn_variants_share_adams_runs(tmp_path):
    for tier in rm.SETTINGS:  # an empty store: the starting rate grids of every regime's first seed (at least)
        g = rm.grid(tier, store=tmp_path)
        assert g.topic == f"regime_map/{tier}" and len(g.specs) == len({s.key for s in g.specs}) >= 20
    s = rm.SETTINGS["book"]
    base, trunc = s.base, s.base.vary(pinv="truncate")
    assert base.spec("adam", 1e-3, s) == trunc.spec("adam", 1e-3, s) and base.spec("gn", 1, s) != trunc.spec("gn", 1, s)
    spec = base.spec("gn", 0.3, s)  # paired: GN and Adam at a seed share the data subset and the initial weights
    assert spec.data == base.spec("adam", 1e-3, s).data and spec.model == base.spec("adam", 1e-3, s).model
    assert base.vary(seed=1).spec("gn", 0.3, s).seed == 1
    with pytest.raises(ValueError, match="only in their seed"):
        rm.Regime([base, base.vary(hidden=1024)])
    full = rm.SETTINGS["full"]
    first = full.regimes()["n = 1024, h/n = 2"].points[0].spec("gn", 1.0, full)
    assert first.patience > 0 and first.data.n_test is None and first.data.n_train + first.data.n_val == 60000
    cifar = rm.full_cifar(store=tmp_path)  # a part of the tier's sweep, recorded with the rest of it
    assert cifar.topic == "regime_map/full" and set(cifar.specs) < set(rm.full(store=tmp_path).specs)
    assert {s.data.dataset for s in cifar.specs} == {"cifar10-subset"} and {s.model.depth for s in cifar.specs} == {2, 6}
    first_cells = rm.full_n1024(store=tmp_path)  # the paper's batch size, swept first
    assert set(first_cells.specs) < set(rm.full(store=tmp_path).specs)
    assert {(s.data.dataset, s.batch_size, s.model.hidden) for s in first_cells.specs} == \
           {("mnist", 1024, 2048), ("mnist", 1024, 4096)}
    with pytest.raises(ValueError, match="no arm of regime_map/full is labelled 'ImageNet'"):
        rm.grid("full", tmp_path, only="ImageNet")


def test_rates_are_chosen_on_validation_from_a_bracketed_grid(tmp_path):
    runs = Runs(tmp_path, progress=False)
    regime = TINY.at_seeds(TINY.base, each_seed=True)
    out = rm.summaries(regime, TINY, runs.all)
    assert len(out) == len(TINY.seeds) == 2
    for r in out:
        for name in ("gn", "adam"):
            g, sel = r[name], r[name]["selection"]
            assert g["lr"] == max(sel.scores, key=sel.scores.get) and g["val_acc"] == sel.scores[g["lr"]]
            lrs = sorted(sel.scores)
            # bracketed: interior, or GN at its cap; or the walk ran out of extensions (said so)
            assert sel.bracketed == (lrs[0] < g["lr"] < lrs[-1] or sel.capped)
            assert sel.bracketed or len(lrs) == len(TINY.lrs[name]) + TINY.extensions
            assert 0 < g["ntk_distance"] < 1 and g["record"].history.epochs["epoch"] == [0, 1, 2]
        assert r["gap"] == pytest.approx(r["gn"]["test_acc"] - r["adam"]["test_acc"])
    loaded = rm.summaries(regime, TINY, Runs(tmp_path, progress=False, compute=False).all)
    assert [r["gap"] for r in loaded] == [r["gap"] for r in out]  # read back from the records: the same


def test_a_rate_chosen_on_the_first_seed_is_reused_and_the_sweep_grid_grows_with_the_records(tmp_path):
    from revgn.sweep import collect

    regime = TINY.at_seeds(TINY.base, each_seed=False)
    listed = lambda: rm.walk(regime, TINY, lambda specs: collect(specs, tmp_path))
    needed, done = listed()
    assert done == [] and {sp.seed for sp in needed} == {0}  # seed 1 waits for seed 0's choice
    Runs(tmp_path, progress=False).all(needed)
    grown, done = listed()
    while {sp.key for sp in grown} != {sp.key for sp in needed}:  # bracketing asked for more rates, or seed 1
        needed = grown
        Runs(tmp_path, progress=False).all(needed)
        grown, done = listed()
    assert len(done) == 2 and done[0]["gn"]["lr"] == done[1]["gn"]["lr"] and done[0]["adam"]["lr"] == done[1]["adam"]["lr"]
    assert [sp.optimizer.lr for sp in needed if sp.seed == 1] == [done[0]["gn"]["lr"], done[0]["adam"]["lr"]]
    assert done[1]["gn"]["selection"].bracketed == done[0]["gn"]["selection"].bracketed
    # how firmly seed 0 chose: each margin in validation images, and seed 0's gap with a runner-up swapped in
    text = rv.margins({"tiny": done}, lambda specs: collect(specs, tmp_path))
    gn, adam = (done[0][o]["selection"] for o in ("gn", "adam"))
    up = collect(gp.rate_grid(done[0]["gn"]["record"].spec, [gn.runner_up]), tmp_path)[0]
    assert text.startswith(f"* tiny: GN's {gn.lr:.3g} beat {gn.runner_up:.3g} by {round(gn.margin * 128)}, "
                           f"Adam's {adam.lr:.3g} beat {adam.runner_up:.3g} by {round(adam.margin * 128)} of 128 ")
    assert f"{100 * (up.metrics['test_acc'] - done[0]['adam']['test_acc']):+.1f} with GN's runner-up" in text
    assert f"gap {100 * done[0]['gap']:+.1f} points at the chosen rates" in text


def test_identity_first_block_is_rank_deficient_beyond_half_the_input_width(tmp_path):
    # MNIST: d/2 = 392 < n = 400, so the identity first block's h x n features have rank <= 392
    s = rm.Settings(rm.Point(n_train=400, hidden=512, batch=400, epochs=1, first_activation="identity"),
                    lrs={"gn": (1.0,), "adam": (1e-3,)}, seeds=(0,), n_val={"mnist": 100}, n_test={"mnist": 100},
                    kernel_inputs=2)
    runs = Runs(tmp_path, progress=False)
    [exact] = rm.summaries(s.at_seeds(s.base, True), s, runs.all)
    assert exact["gn"]["lr"] is None and exact["gap"] is None
    failed = runs(s.base.spec("gn", 1.0, s))
    assert failed.failure.startswith("RankDeficientError") and failed.history.epochs["epoch"] == [0]
    assert rm.summaries(s.at_seeds(s.base.vary(pinv="truncate"), True), s, runs.all)[0]["gn"]["lr"] == 1.0


def test_the_rendered_verdict_is_read_from_the_records(tmp_path):
    """Perturb the records and the verdict changes; delete one and the table cannot be rendered without it."""
    import json

    from revgn.runs import Record, record_path

    s = rm.Settings(rm.Point(n_train=192, hidden=64, batch=32, epochs=1), lrs={"gn": (0.5,), "adam": (1e-3,)},
                    seeds=(0, 1, 2, 3, 4), n_val={"mnist": 64}, n_test={"mnist": 128}, kernel_inputs=2)
    regime = s.at_seeds(s.base, each_seed=True)
    render = lambda compute=True: rv.verdict_table({"tiny": rm.summaries(regime, s, Runs(tmp_path, progress=False,
                                                                                         compute=compute).all)})
    before = render()
    assert "| tiny |" in before and "(5 seeds)" in before

    def set_gn_test_acc(offset):  # GN's records now say GN is `offset` better than Adam at every seed
        for p in regime.points:
            gn, adam = (record_path(tmp_path, p.spec(o, s.lrs[o][0], s)) for o in ("gn", "adam"))
            d = json.loads(gn.read_text())
            d["metrics"]["test_acc"] = Record.load(adam).metrics["test_acc"] + offset + 0.001 * p.seed
            gn.write_text(json.dumps(d))

    set_gn_test_acc(+0.05)
    assert "claim fails: GN better" in render() and "+5.2 [" in render()
    set_gn_test_acc(-0.05)
    assert "claim holds: GN worse" in render()
    missing = regime.points[2].spec("adam", 1e-3, s)
    record_path(tmp_path, missing).unlink()
    with pytest.raises(FileNotFoundError, match=missing.key):
        render(compute=False)


def growing(store=None):
    """A grid that reads its records: the second run is listed once the first is recorded (for the test below)."""
    from revgn.runs import DataSpec, ModelSpec, OptimSpec, RunSpec
    from revgn.sweep import Grid, collect

    first = RunSpec(DataSpec("mnist", n_train=64, n_test=32), ModelSpec(depth=1, hidden=32), OptimSpec("adam", 1e-3),
                    batch_size=32, epochs=1, evaluate=("test",))
    specs = [first] + ([first.replace(seed=1)] if collect([first], store)[0] is not None else [])
    return Grid("growing", specs)


def test_the_sweep_cli_lists_a_grid_and_runs_a_growing_grid_in_rounds(tmp_path, capsys):
    import subprocess
    import sys

    from revgn.sweep import main, status

    out = subprocess.run([sys.executable, "-m", "revgn.sweep", "revgn.experiments.regime_map:book", "--list",
                          "--store", str(tmp_path)], capture_output=True, text=True, check=True).stdout
    n = len(rm.book(store=tmp_path).specs)
    assert f"{n} runs" in out and f"0 recorded, 0 interrupted, {n} missing" in out
    assert main([f"{Path(__file__).stem}:growing", "--store", str(tmp_path), "--executor", "debug"]) == 0
    specs = growing(tmp_path).specs
    assert len(specs) == 2 and set(status(specs, tmp_path).values()) == {"recorded"}
    assert "growing: 1 runs" in capsys.readouterr().out


def _summary(gn_train, gn_test, adam_train, adam_test, capped=False):
    from revgn.experiments.gn_protocol import Selection

    sel = lambda lr: Selection(None, {lr: 0.9}, bracketed=True, capped=capped and lr == 2.0)
    return {"gn": {"lr": 2.0, "selection": sel(2.0), "train_acc": gn_train, "test_acc": gn_test},
            "adam": {"lr": 1e-3, "selection": sel(1e-3), "train_acc": adam_train, "test_acc": adam_test},
            "gap": gn_test - adam_test}


def test_a_deficit_is_split_into_fitting_and_generalising_and_capped_rates_are_reported():
    seeds = range(5)
    # GN fits 10 points less and loses no more from train to test: a deficit in fitting
    fitting = [_summary(0.80 + 0.01 * s, 0.30 + 0.01 * s, 0.90 + 0.012 * s, 0.40 + 0.011 * s) for s in seeds]
    out = rv.fit_or_generalise(fitting)
    assert out["which"] == "in fitting" and out["train"].hi < 0 and out["test"].mean == pytest.approx(-0.1, abs=0.01)
    # GN fits as well and loses 10 points more from train to test: a deficit in generalising
    general = [_summary(0.90 + 0.011 * s, 0.30 + 0.01 * s, 0.90 + 0.01 * s, 0.40 + 0.012 * s) for s in seeds]
    assert rv.fit_or_generalise(general)["which"] == "in generalising"
    assert rv.fit_or_generalise(general[:3])["which"] == "no verdict"
    # the outcome is a value, and gap_verdict renders it in the same words
    O = rv.Outcome
    refused = [{**r, "gap": None} for r in fitting]
    for summ, want in ((fitting, O.HOLDS), (general[:3], O.NO_VERDICT), ([], O.NO_VERDICT), (refused, O.NO_COMPARISON)):
        assert rv.outcome(summ) is want
    better = [{**r, "gn": r["adam"], "adam": r["gn"]} for r in fitting]
    assert rv.outcome(better) is O.FAILS and rv.gap_verdict(better)[1] == O.FAILS.value
    assert rv.gap_verdict(fitting)[1] == O.HOLDS.value and rv.gap_verdict(refused)[1] == O.NO_COMPARISON.value
    both = [_summary(0.80 + 0.01 * s, 0.20 + 0.011 * s, 0.90 + 0.012 * s, 0.40 + 0.01 * s) for s in seeds]
    assert rv.fit_or_generalise(both)["which"] == "in both"
    neither = [_summary(0.9 + 0.01 * (-1) ** s, 0.4 + 0.01 * (-1) ** s, 0.9, 0.4) for s in seeds]
    assert rv.fit_or_generalise(neither)["which"] == "inconclusive"
    capped = [_summary(0.9, 0.3, 0.9, 0.4, capped=True)]
    assert rv.rates(capped, "gn") == "2 (cap)" and rv.rates(capped, "adam") == "0.001"
    thirds = [{**r, "adam": {**r["adam"], "lr": 1e-4 / 3}} for r in capped]  # a rate the grid reached by thirds
    assert rv.rates(thirds, "adam") == "3.33e-05"
    counts = rv.bracketing(capped)
    assert counts["gn at the cap"] == 1 and counts["gn interior"] == 0 and counts["adam interior"] == 1
    assert "not recorded yet (0 of 5 seeds)" in rv.verdict_table({"x": []}, seeds=5)


def test_a_tier_that_stops_on_validation_is_scored_at_each_runs_validation_peak():
    """The full tier's runs stop three epochs after their validation peak; its verdicts score each run at that
    peak (a checkpoint chosen on validation data), never at the epoch where the stopping rule ended it."""
    from revgn.history import History
    from revgn.runs import Record

    full, book = rm.SETTINGS["full"], rm.SETTINGS["book"]
    assert full.base.patience > 0 and full.endpoint == "best_val" and book.endpoint == "end"

    def rec(o, seed, val, test, train):
        h = History()
        for e, (v, t, tr) in enumerate(zip(val, test, train)):
            h.log(h.epochs, epoch=e, val_acc=v, test_acc=t, train_acc=tr)
        return Record(full.base.vary(seed=seed).spec(o, 1e-3, full), h,
                      {"val_acc": val[-1], "test_acc": test[-1], "train_acc": train[-1]}, {})

    summ = []
    for s in range(5):  # GN peaks at epoch 1, then decays; Adam is flat: GN better at the peak, worse at the stop
        g = rec("gn", s, [0.5, 0.9, 0.8, 0.8], [0.5, 0.92 + 0.001 * s, 0.80, 0.79], [0.5, 0.95, 0.96, 0.97])
        a = rec("adam", s, [0.5, 0.85, 0.85, 0.85], [0.5, 0.85, 0.85, 0.85 + 0.001 * s], [0.5, 0.9, 0.9, 0.9])
        run = lambda r: {"record": r, "lr": 1e-3, "selection": gp.Selection(r, {1e-3: 0.9}, bracketed=True),
                         **{k: r.metrics[k] for k in ("test_acc", "train_acc")}}
        summ.append({"gn": run(g), "adam": run(a), "gap": g.metrics["test_acc"] - a.metrics["test_acc"]})
    assert rv.outcome(summ) is rv.Outcome.HOLDS and rv.outcome(summ, full.endpoint) is rv.Outcome.FAILS
    assert rv.gap_verdict(summ, 5, full.endpoint)[1] == rv.Outcome.FAILS.value
    assert rv.gap(summ, full.endpoint).mean == pytest.approx(0.92 + 0.002 - 0.85)
    assert "claim fails: GN better" in rv.verdict_table({"x": summ}, 5, full.endpoint)
    split = rv.fit_or_generalise(summ, full.endpoint)  # training accuracy too is read at the peak epoch
    assert split["train"].mean == pytest.approx(0.95 - 0.9) and split["test"].mean == pytest.approx(0.072)


def test_a_rate_choice_read_by_another_criterion_is_reported_where_it_differs():
    from revgn.history import History
    from revgn.runs import Record

    full = rm.SETTINGS["full"]

    def rec(o, lr, val):
        h = History()
        for e, v in enumerate(val):
            h.log(h.epochs, epoch=e, val_acc=v, test_acc=v)
        return Record(full.base.spec(o, lr, full), h, {"val_acc": val[-1], "test_acc": val[-1]}, {})

    # GN: 1.0 ends higher, 0.3 peaks higher; Adam: 1e-3 wins both ways
    grid = {("gn", 0.3): [0.5, 0.97, 0.90], ("gn", 1.0): [0.5, 0.95, 0.94], ("adam", 1e-4): [0.5, 0.9, 0.9],
            ("adam", 1e-3): [0.5, 0.96, 0.95]}
    recs = {(o, lr): rec(o, lr, v) for (o, lr), v in grid.items()}
    records_of = lambda specs: [recs.get((s.optimizer.name, s.optimizer.lr)) for s in specs]
    summ = []
    for o, lrs in (("gn", (0.3, 1.0)), ("adam", (1e-4, 1e-3))):
        sel = gp.select([recs[(o, lr)] for lr in lrs], "val_acc")
        summ.append((o, {"record": sel.best, "lr": sel.lr, "selection": sel}))
    regimes = {"x": [dict(summ)]}
    assert dict(summ)["gn"]["lr"] == 1.0 and dict(summ)["adam"]["lr"] == 1e-3
    text = rv.rechosen(regimes, records_of)
    assert "change 1 of 2 rate choices (x, GN 0.3 instead of 1)" in text, text
    assert "change 0 of 2 rate choices." in rv.rechosen(regimes, records_of, "val_acc")
    assert rv.rechosen({"empty": []}, records_of) == ""
