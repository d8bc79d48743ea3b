"""The regime map: settings are validated, its grid is a sweep of run specs, and a point's summary is read
from records: rates chosen on validation, failures ranked last, the gap that of the chosen runs."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from revgn.experiments import regime_map as rm
from revgn.runs import Runs

pytestmark = pytest.mark.skipif(not (Path(os.environ.get("REVGN_DATA", "/nonexistent")) / "mnist").exists(),
                                reason="needs MNIST in $REVGN_DATA (make test points it at ../shared/data)")
TINY = rm.Settings(rm.Point(n_train=256, hidden=64, batch=32, epochs=2), lrs={"gn": (0.3, 1.0), "adam": (1e-3, 1e-2)},
                   n_val=128, n_test={"mnist": 256}, kernel_inputs=4)


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
    assert rm.Point(hidden=512, batch=128, depth=2).constraints_per_parameter == 128 / 1024
    with pytest.raises(ValueError, match="scale"):
        rm.grid("huge")


def test_the_grids_are_sweeps_and_gn_variants_share_adams_runs():
    for scale in rm.SETTINGS:
        g = rm.grid(scale)
        assert g.topic == f"regime_map/{scale}" and len(g.specs) == len({s.key for s in g.specs}) > 50
    s = rm.SETTINGS["book"]
    base, trunc = s.base, s.base.vary(pinv="truncate")
    assert base.specs(s, "adam") == trunc.specs(s, "adam") and base.specs(s, "gn") != trunc.specs(s, "gn")
    assert {sp.seed for sp in s.base.vary(seed=1).specs(s, "gn")} == {1}
    spec = base.spec("gn", 0.3, s)  # paired: GN and Adam at a seed share the data subset and the initial weights
    assert spec.data == base.spec("adam", 1e-3, s).data and spec.model == base.spec("adam", 1e-3, s).model


def test_summary_picks_rates_on_validation_and_reports_that_run(tmp_path):
    runs = Runs(tmp_path, progress=False)
    out = rm.summarise(TINY.base, TINY, runs)
    assert len(list(tmp_path.glob("*.json"))) == 4
    for name in ("gn", "adam"):
        r, scores = out[name], out[name]["selection"].scores
        assert r["lr"] == max(scores, key=scores.get) and r["val_acc"] == scores[r["lr"]]
        assert 0 < r["ntk_distance"] < 1 and r["record"].history.epochs["epoch"] == [0, 1, 2]
        assert r["record"].spec.optimizer.lr == r["lr"]
    assert out["gap"] == pytest.approx(out["gn"]["test_acc"] - out["adam"]["test_acc"])
    assert rm.summarise(TINY.base, TINY, Runs(tmp_path, progress=False))["gap"] == out["gap"]  # loaded: the same


def test_identity_first_block_is_rank_deficient_beyond_half_the_input_width(tmp_path):
    # MNIST: d/2 = 392 < n = 400, so the identity first block's h x n features have rank <= 392
    s = rm.Settings(rm.Point(n_train=400, hidden=512, batch=400, epochs=1, first_activation="identity"),
                    lrs={"gn": (1.0,), "adam": (1e-3,)}, n_val=100, n_test={"mnist": 100}, kernel_inputs=2)
    runs = Runs(tmp_path, progress=False)
    exact = rm.summarise(s.base, s, runs)
    assert exact["gn"]["lr"] is None and exact["gap"] is None
    failed = runs(s.base.spec("gn", 1.0, s))
    assert failed.failure.startswith("RankDeficientError") and failed.history.epochs["epoch"] == [0]
    assert rm.summarise(s.base.vary(pinv="truncate"), s, runs)["gn"]["lr"] == 1.0


def test_the_rendered_verdict_is_read_from_the_records(tmp_path):
    """Perturb the records and the verdict changes; delete one and the table cannot be rendered without it."""
    import json

    from revgn.runs import Record, record_path

    s = rm.Settings(rm.Point(n_train=192, hidden=64, batch=32, epochs=1), lrs={"gn": (0.5,), "adam": (1e-3,)},
                    seeds=(0, 1, 2, 3, 4), n_val=64, n_test={"mnist": 128}, kernel_inputs=2)
    points = [s.base.vary(seed=seed) for seed in s.seeds]
    render = lambda: rm.verdict_table({"tiny": [rm.summarise(p, s, Runs(tmp_path, progress=False)) for p in points]})
    before = render()
    assert "| tiny |" in before and "(5 seeds)" in before

    def set_gn_test_acc(offset):  # GN's records now say GN is `offset` better than Adam at every seed
        for p in points:
            gn, adam = (record_path(tmp_path, p.spec(o, s.lrs[o][0], s)) for o in ("gn", "adam"))
            d = json.loads(gn.read_text())
            d["metrics"]["test_acc"] = Record.load(adam).metrics["test_acc"] + offset + 0.001 * p.seed
            gn.write_text(json.dumps(d))

    set_gn_test_acc(+0.05)
    assert "claim fails: GN better" in render() and "+5.2 [" in render()
    set_gn_test_acc(-0.05)
    assert "claim holds: GN worse" in render()
    record_path(tmp_path, points[2].spec("adam", 1e-3, s)).unlink()
    with pytest.raises(FileNotFoundError, match=points[2].spec("adam", 1e-3, s).key):
        rm.verdict_table({"tiny": [rm.summarise(p, s, Runs(tmp_path, progress=False, compute=False)) for p in points]})


def test_the_sweep_cli_lists_a_grid_of_the_experiments_package(tmp_path):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "revgn.sweep", "revgn.experiments.regime_map:book", "--list",
                          "--store", str(tmp_path)], capture_output=True, text=True, check=True).stdout
    assert f"{len(rm.book().specs)} runs" in out and f"0 recorded, 0 interrupted, {len(rm.book().specs)} missing" in out
