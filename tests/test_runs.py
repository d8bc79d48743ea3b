"""Recorded runs are written once, atomically, and never silently replaced; experiment helpers say what they mean."""
from __future__ import annotations

import json

import pytest
import torch

from revgn import gn_experiments as gx
from revgn.data import Dataset
from revgn.runs import load_recorded, provenance, recorded, recorded_histories, recorded_run
from revgn.train import History


def fake_history(loss=(1.0, 0.5)):
    h = History()
    for e, l in enumerate(loss):
        h.log(h.epochs, epoch=e, train_loss=l)
    return h


def test_recorded_run_runs_once_then_loads(tmp_path):
    calls = []
    make = lambda: calls.append(1) or fake_history()
    path = tmp_path / "r" / "run.json"
    a = recorded_run(path, {"lr": 0.1, "seed": 0}, make)
    b = recorded_run(path, {"seed": 0, "lr": 0.1}, make)
    assert len(calls) == 1 and a.epochs == b.epochs
    stored = json.loads(path.read_text())
    assert {"date", "device", "commit", "torch"} <= set(stored["meta"])
    result, meta = load_recorded(path)
    assert result["epochs"] == a.epochs and meta["commit"] == stored["meta"]["commit"]
    assert load_recorded(tmp_path / "absent.json") is None


def test_recorded_run_refuses_another_configuration(tmp_path):
    path = tmp_path / "run.json"
    recorded_run(path, {"lr": 0.1}, fake_history)
    before = path.read_bytes()
    with pytest.raises(ValueError, match="another configuration"):
        recorded_run(path, {"lr": 0.2}, fake_history)
    assert path.read_bytes() == before


def test_a_sweep_of_recorded_pieces_resumes_where_it_stopped(tmp_path):
    done = []

    def piece(i):
        if i == 2 and not done:
            done.append("crashed once")
            raise KeyboardInterrupt
        return {"value": i * i}

    sweep = lambda: [recorded(tmp_path / f"p{i}.json", {"i": i}, lambda i=i: piece(i)) for i in range(4)]
    with pytest.raises(KeyboardInterrupt):
        sweep()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p0.json", "p1.json"]
    first = (tmp_path / "p0.json").read_bytes()
    assert [r["value"] for r in sweep()] == [0, 1, 4, 9]
    assert (tmp_path / "p0.json").read_bytes() == first  # finished pieces were loaded, not rerun
    assert recorded(None, {"i": 0}, lambda: {"value": -1}) == {"value": -1}  # no path: nothing stored


def test_an_interrupted_run_leaves_nothing(tmp_path):
    def crash():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        recorded_run(tmp_path / "run.json", {"lr": 0.1}, crash)
    assert list(tmp_path.iterdir()) == []


def test_split_saturation_and_batch_drop():
    ds = Dataset("toy", "train", torch.arange(10.0)[:, None], torch.arange(10) % 3, ("a", "b", "c"))
    tr, val = gx.split(ds, 3)
    assert len(tr) == 7 and len(val) == 3 and torch.equal(val.x[:, 0], torch.tensor([7.0, 8.0, 9.0]))
    with pytest.raises(ValueError):
        gx.split(ds, 10)
    assert gx.saturation(fake_history((4.0, 2.0, 1.0, 1.0)), last=1) == 0.0
    assert gx.saturation(fake_history((4.0, 2.0, 1.0)), last=2) == 0.75
    h = History()
    h.log(h.steps, epoch=1, loss=2.0, loss_after=0.5)
    assert gx.batch_loss_drop(h).tolist() == [75.0]


def test_a_stored_experiment_run_is_recorded_once_and_listed(tmp_path):
    g = torch.Generator().manual_seed(0)
    ds = Dataset("toy", "train", torch.randn(64, 8, generator=g), torch.randint(0, 3, (64,), generator=g), ("a", "b", "c"))
    kw = dict(arch=gx.Arch(depth=1, hidden=32), train_set=ds, eval_set=ds, epochs=2, batch_size=16, store=tmp_path)
    first = gx.run("gn", 0.5, **kw)
    (path,) = tmp_path.iterdir()
    stamp = path.stat().st_mtime_ns
    again = gx.run("gn", 0.5, **kw)
    assert again.epochs == first.epochs and path.stat().st_mtime_ns == stamp  # loaded, not rerun
    fresh = gx.run("gn", 0.5, **{**kw, "store": None})
    assert fresh.epochs["train_loss"] == pytest.approx(first.epochs["train_loss"], rel=1e-12)
    gx.run("gn", 0.25, **kw)  # another rate: another file
    assert [h.config["lr"] for h, meta in recorded_histories(tmp_path)] == [0.25, 0.5]
    assert all(meta["commit"] for h, meta in recorded_histories(tmp_path))
    assert recorded_histories(tmp_path / "absent") == []
    with pytest.raises(ValueError, match="fresh run"):
        gx.run("gn", 0.5, **kw, model=gx.Arch(depth=1, hidden=32).build(ds, 0))


def test_an_interrupted_stored_run_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    g = torch.Generator().manual_seed(1)
    ds = Dataset("toy", "train", torch.randn(64, 8, generator=g), torch.randint(0, 3, (64,), generator=g), ("a", "b", "c"))
    kw = dict(arch=gx.Arch(depth=1, hidden=32), train_set=ds, eval_set=ds, epochs=3, batch_size=16, store=tmp_path)
    real_train = gx.train

    def crash_after_epoch_1(*args, **kwargs):
        def crash(_, epoch):
            if epoch == 1:
                raise KeyboardInterrupt
        return real_train(*args, **kwargs, callbacks=[crash])

    monkeypatch.setattr(gx, "train", crash_after_epoch_1)
    with pytest.raises(KeyboardInterrupt):
        gx.run("adam", 1e-2, **kw)
    (scratch,) = tmp_path.iterdir()  # no record: only the scratch folder, with the checkpoint of epoch 1
    assert scratch.suffix == ".partial" and [p.name for p in scratch.iterdir()] == ["run.ckpt"]
    monkeypatch.setattr(gx, "train", real_train)
    resumed = gx.run("adam", 1e-2, **kw)
    assert [p.suffix for p in tmp_path.iterdir()] == [".json"]  # recorded; the scratch folder is gone
    assert resumed.epochs == gx.run("adam", 1e-2, **{**kw, "store": None}).epochs


def test_provenance_says_what_is_recorded_where(tmp_path):
    assert provenance(tmp_path / "none").endswith("nothing recorded yet.")
    for i in range(2):
        recorded(tmp_path / f"r{i}.json", {"i": i}, lambda: {"x": 1})
    line = provenance(tmp_path)
    assert "2 recorded runs" in line and json.loads((tmp_path / "r0.json").read_text())["meta"]["device"] in line
