"""The regime map's measurements: settings are validated, rates are chosen on validation, failures are recorded."""
from __future__ import annotations

import pytest

from revgn import gn_experiments as gx
from revgn import regime as rg


def test_point_validates_its_settings():
    with pytest.raises(ValueError, match="n <= width h"):
        rg.Point(hidden=64, batch=128)
    with pytest.raises(ValueError, match="unknown dataset"):
        rg.Point(dataset="imagenet")
    with pytest.raises(ValueError, match="pinv"):
        rg.Point(pinv="svd")
    with pytest.raises(ValueError, match="epochs"):
        rg.Point(epochs=0)
    rg.Point(hidden=64, batch=128, pinv="truncate")  # truncation does not need h >= n
    assert rg.Point(hidden=512, batch=128, depth=2).constraints_per_parameter == 128 / 1024
    assert rg.Point().key() != rg.Point(seed=1).key()


def test_measure_picks_rates_on_validation_and_reports_that_run():
    point = rg.Point(n_train=256, hidden=64, batch=32, epochs=2)
    rec = rg.measure(point, {"gn": [0.3, 1.0], "adam": [1e-3, 1e-2]}, n_val=128, n_test=256, kernel_size=4)
    for name in ("gn", "adam"):
        r = rec[name]
        scores = r["val_acc_by_lr"]
        assert r["lr"] == max(scores, key=scores.get) and r["val_acc"] == scores[r["lr"]]
        assert 0 < r["ntk_distance"] < 1 and r["curves"]["epoch"] == [0, 1, 2]
    assert rec["gap"] == pytest.approx(rec["gn"]["test_acc"] - rec["adam"]["test_acc"])
    # the reported test numbers are those of a plain run at the chosen rate (same seed, same data)
    train_set, _, test_set = rg.splits(point, 128, 256)
    again = gx.run("gn", rec["gn"]["lr"], point.arch, train_set, test_set, epochs=2, batch_size=32, seed=0)
    assert again.final("test_acc") == pytest.approx(rec["gn"]["test_acc"], abs=1e-12)
    assert again.final("test_loss") == pytest.approx(rec["gn"]["test_loss"], rel=1e-6)


def test_identity_first_block_is_rank_deficient_beyond_half_the_input_width():
    # MNIST: d/2 = 392 < n = 400, so the identity first block's h x n features have rank <= 392
    point = rg.Point(n_train=400, hidden=512, batch=400, epochs=1, first_activation="identity")
    exact = rg.measure(point, {"gn": [1.0]}, n_val=100, n_test=100, kernel_size=2)
    assert exact["gn"] == {"lr": None, "val_acc_by_lr": {1.0: "RankDeficientError"}}
    assert exact["gap"] is None
    truncated = rg.measure(rg.vary(point, pinv="truncate"), {"gn": [1.0]}, n_val=100, n_test=100, kernel_size=2)
    assert truncated["gn"]["lr"] == 1.0


def test_sweep_records_each_point_and_resumes(tmp_path):
    points = [rg.Point(n_train=128, hidden=64, batch=32, epochs=1, seed=s) for s in (0, 1)]
    kw = dict(n_val=64, n_test=64, kernel_size=2)
    first = rg.sweep(points, {"gn": [1.0]}, store=tmp_path, **kw)
    assert len(list(tmp_path.iterdir())) == 2
    stamps = [p.stat().st_mtime_ns for p in sorted(tmp_path.iterdir())]
    assert first[0]["gn"]["lr"] == 1.0 and first[0]["point"]["seed"] == 0 and first[1]["point"]["seed"] == 1
    assert rg.sweep(points, {"gn": [1.0]}, store=tmp_path, **kw) == first
    assert rg.sweep(points, {"gn": [1.0]}, **kw) == first  # not stored: computed again, the same numbers
    assert [p.stat().st_mtime_ns for p in sorted(tmp_path.iterdir())] == stamps
    with pytest.raises(ValueError, match="another configuration"):
        rg.sweep(points, {"gn": [0.5]}, store=tmp_path, **kw)
