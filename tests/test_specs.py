"""Run specs are content addresses: every field matters, records are found by what was run, sweeps resume.

Needs the MNIST files of ../shared/data (the Makefile and CI point $REVGN_DATA there).
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from revgn.runs import DataSpec, ModelSpec, OptimSpec, Record, RunSpec, record_path, run, scratch_for
from revgn.sweep import Grid, dispatch, status

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not (Path(os.environ.get("REVGN_DATA", "/nonexistent")) / "mnist").exists(),
                                reason="needs MNIST in $REVGN_DATA (make test points it at ../shared/data)")


def tiny(**changes) -> RunSpec:
    spec = RunSpec(DataSpec("mnist", n_train=128, n_val=32, n_test=64), ModelSpec(depth=1, hidden=48),
                   OptimSpec("gn", 0.5), batch_size=32, epochs=2, eval_train_size=128)
    return spec.replace(**changes)


# Another valid value for every leaf field of a RunSpec.
OTHER = {
    "data.dataset": "cifar10-subset", "data.n_train": 96, "data.n_val": 16, "data.subset_seed": 1, "data.n_test": 32,
    "data.normalize": False, "data.dtype": "float64",
    "model.arch": "mlp", "model.depth": 2, "model.hidden": 64, "model.width": 800, "model.bias": True,
    "model.init_std": 1e-2, "model.first_activation": "identity", "model.bottleneck": False, "model.mlp_hidden": (64,),
    "model.seed": 1,
    "optimizer.name": "adam", "optimizer.lr": 0.25, "optimizer.pinv": "truncate", "optimizer.rtol": 1e-2,
    "optimizer.atol": 1e-5, "optimizer.damping": 0.01, "optimizer.ridge": 0.1, "optimizer.noise": 0.1,
    "optimizer.momentum": 0.9, "optimizer.weight_decay": 1e-4, "optimizer.decay": 1e-3,
    "loss": "mse", "batch_size": 16, "epochs": 3, "seed": 1, "eval_every": 2, "eval_train_size": 64,
    "evaluate": ("test",), "track_batch_change": True, "optimizer.ridge_relative": True,
    "measure": ("ntk_distance",), "kernel_inputs": 4, "cka_inputs": 100, "kappa_inputs": 10,
    "then": OptimSpec("sgd", 0.1), "switch_epoch": 2, "patience": 2,
    "until_train_loss": 0.5, "optimizer.output": "body", "optimizer.cg_rtol": 1e-8, "optimizer.cg_maxiter": 50,
    "optimizer.solver": "gram", "optimizer.rank_rule": "rounding", "optimizer.mu": 0.1,
    "optimizer.gram": "refined",
}
# Fields that are only valid together with another change: a switch of optimiser needs both of its fields.
# An optimiser field comes with the optimiser (or pseudo-inverse) that reads it (its `spec_fields`).
COMPANION = {"then": {"switch_epoch": 1, "epochs": 3}, "switch_epoch": {"then": OptimSpec("sgd", 0.1), "epochs": 3},
             **{f"optimizer.{f}": {"optimizer.name": "gn-mp"} for f in ("solver", "output", "cg_rtol", "cg_maxiter", "mu")},
             **{f"optimizer.{f}": {"optimizer.name": "sgd"} for f in ("momentum", "weight_decay", "decay")},
             "optimizer.rtol": {"optimizer.pinv": "truncate"}, "optimizer.atol": {"optimizer.pinv": "truncate"},
             "optimizer.damping": {"optimizer.pinv": "damp"}, "optimizer.ridge": {"optimizer.pinv": "ridge"},
             "optimizer.ridge_relative": {"optimizer.pinv": "ridge"}, "optimizer.noise": {"optimizer.pinv": "noise"}}


def leaf_fields(spec: RunSpec) -> list[str]:
    out = []
    for f in dataclasses.fields(spec):
        value = getattr(spec, f.name)
        if dataclasses.is_dataclass(value):
            out += [f"{f.name}.{g.name}" for g in dataclasses.fields(value)]
        else:
            out.append(f.name)
    return out


def test_every_field_of_a_spec_is_part_of_its_key():
    base = tiny()
    assert sorted(leaf_fields(base)) == sorted(OTHER), "OTHER must cover every field (a new field needs a value here)"
    keys = {base.key}
    for field, value in OTHER.items():
        changed = base.replace(**{field: value, **COMPANION.get(field, {})})
        assert changed.key not in keys, f"changing {field} did not change the key"
        keys.add(changed.key)
    assert tiny().key == base.key and RunSpec.from_dict(json.loads(json.dumps(base.to_dict()))) == base
    # a field added within the schema leaves the keys of earlier records as they were while at its default
    assert '"patience"' not in base.canonical() and '"patience":2' in base.replace(patience=2).canonical()
    mp = base.replace(**{"optimizer.name": "gn-mp"})  # the solver alone changes the key
    assert mp.key != mp.replace(**{"optimizer.solver": "gram"}).key and '"solver"' not in mp.canonical()
    assert '"cg_rtol"' not in mp.canonical() and '"output":"body"' in mp.replace(**{"optimizer.output": "body"}).canonical()


@pytest.mark.parametrize("field", ["data.subset_seed", "data.normalize", "data.dtype", "model.seed", "model.init_std",
                                   "seed"])
def test_each_data_and_init_field_changes_the_run(tmp_path, field):
    a, b = run(tiny(), tmp_path), run(tiny(**{field: OTHER[field]}), tmp_path)
    assert a.history.epochs["train_loss"] != b.history.epochs["train_loss"]
    assert record_path(tmp_path, a.spec) != record_path(tmp_path, b.spec)
    assert len(list(tmp_path.glob("*.json"))) == 2


def test_a_recorded_run_is_loaded_and_equals_the_run(tmp_path):
    first = run(tiny(), tmp_path)
    again = run(tiny(), tmp_path)
    assert not hasattr(again, "model"), "the second call loads the record"
    assert again.history.epochs == first.history.epochs and again.metrics == first.metrics
    assert {"date", "device", "commit", "torch", "kernels"} <= set(again.provenance)
    assert run(tiny()).history.epochs == first.history.epochs  # deterministic: the same numbers unstored


def test_a_record_under_the_wrong_name_is_refused(tmp_path):
    rec = run(tiny(), tmp_path)
    other = record_path(tmp_path, tiny(seed=1))
    record_path(tmp_path, rec.spec).rename(other)
    with pytest.raises(ValueError, match=f"{other}.*another run"):
        run(tiny(seed=1), tmp_path)


def test_specs_are_validated_with_named_errors():
    with pytest.raises(ValueError, match="data.dataset"):
        DataSpec("imagenet")
    with pytest.raises(TypeError, match="data.n_train must be an integer"):
        DataSpec(n_train=10.5)
    with pytest.raises(ValueError, match="optimizer.lr"):
        OptimSpec("gn", -1.0)
    with pytest.raises(ValueError, match="data.n_val is 0"):
        RunSpec(DataSpec(n_val=0), evaluate=("val",))
    with pytest.raises(ValueError, match="loss"):
        tiny(loss="hinge")


def test_a_checkpoint_of_another_spec_is_refused(tmp_path):
    a, b = tiny(epochs=3), tiny(epochs=3, seed=1)
    scratch = scratch_for(record_path(tmp_path, b))
    scratch.mkdir(parents=True)
    # A finished run of `a` leaves its last checkpoint; put it where `b` looks for its own.
    from revgn.train import train
    from revgn.runs import splits_of

    sets = splits_of(a.data)
    model = a.model.build(784, 10, torch.float32)
    train(model, a.optimizer.build(a.seed), sets["train"], epochs=1, batch_size=32, checkpoint=scratch / "phase0.ckpt",
          config={"spec": a.key, "phase": 0}, progress=False)
    with pytest.raises(ValueError, match="another run"):
        run(b, tmp_path)


def _grid(n: int = 4) -> Grid:
    # Long enough (20 epochs) for the sweep to be caught mid-run; GN and Adam, two seeds.
    specs = [tiny(epochs=20, seed=s, **{"optimizer.name": o, "optimizer.lr": lr})
             for s in (0, 1) for o, lr in (("gn", 0.5), ("adam", 1e-3))][:n]
    return Grid("test-sweep", specs)


def test_grid_refuses_duplicates():
    with pytest.raises(ValueError, match="more than once"):
        Grid("t", [tiny(), tiny()])


def _comparable(rec: Record) -> dict:
    """What must be identical between two runs of a spec: everything but the provenance (as JSON reads it)."""
    return json.loads(json.dumps({"spec": rec.spec.to_dict(), "history": rec.history.to_dict(), "metrics": rec.metrics}))


@pytest.mark.slow
def test_a_killed_sweep_resumes_to_the_records_of_an_uninterrupted_one(tmp_path):
    grid = _grid()
    reference = {s.key: _comparable(run(s)) for s in grid.specs}  # uninterrupted, in this process
    store = tmp_path / "store"
    cmd = [sys.executable, "-c", "import sys; from revgn import sweep; sys.exit(sweep.main(sys.argv[1:]))",
           "tests.test_specs:_grid", "--store", str(store), "--workers", "2"]
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    driver = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and "interrupted" not in status(grid.specs, store).values():
        time.sleep(0.05)
    states = status(grid.specs, store)
    assert "interrupted" in states.values(), f"no run was caught mid-way: {states}"
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and both workers, mid-run
    driver.wait(timeout=30)
    assert "recorded" not in status(grid.specs, store).values() or "interrupted" in status(grid.specs, store).values()
    resumed = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert set(status(grid.specs, store).values()) == {"recorded"}
    for spec in grid.specs:
        assert _comparable(Record.load(record_path(store, spec))) == reference[spec.key], "resumed != uninterrupted"
    assert not list(store.glob("*.partial")), "scratch folders are removed once recorded"


def test_dispatch_runs_the_missing_specs_on_the_local_executor(tmp_path):
    grid = Grid("t", [tiny(), tiny(seed=1)])
    run(grid.specs[0], tmp_path)  # one recorded already: only the other is dispatched
    assert status(grid.specs, tmp_path) == {grid.specs[0].key: "recorded", grid.specs[1].key: "missing"}
    assert dispatch(grid.specs, tmp_path, workers=2, progress=False) == {}
    assert set(status(grid.specs, tmp_path).values()) == {"recorded"}
    with pytest.raises(ValueError, match="partition"):
        dispatch([tiny(seed=2)], tmp_path, executor="slurm")


# ---------------------------------------------------------------------------- specs that mean what they say
def test_an_optimiser_field_the_optimiser_does_not_read_is_refused_by_name():
    for name, field, value in (("adam", "weight_decay", 1e-4), ("adam", "momentum", 0.9), ("adam", "decay", 0.1),
                               ("gn", "momentum", 0.9), ("gn-mp", "pinv", "truncate"), ("gn-mp", "ridge", 0.1),
                               ("sgd", "pinv", "ridge"), ("sgd", "noise", 0.1), ("gn-mp", "damping", 0.1),
                               ("gn", "rtol", 1e-2), ("adam", "mu", 0.1)):
        with pytest.raises(ValueError, match=rf"optimizer\.{field}=.* is not read by '{name}'"):
            OptimSpec(name, 0.1, **{field: value})
    # what each reads is accepted; damping is exact GN's singular-value shift, mu the Moore-Penrose step's LM term
    OptimSpec("sgd", 0.1, momentum=0.9, weight_decay=1e-4, decay=1e-3)
    OptimSpec("gn", 0.1, pinv="damp", damping=0.01)
    OptimSpec("gn", 0.1, pinv="truncate", rtol=1e-2, atol=1e-5)
    assert OptimSpec("gn-mp", 1.0, mu=0.1).build(0).damping == 0.1


def test_one_value_one_key_and_types_checked_at_construction():
    import numpy as np

    base = tiny()
    assert base.replace(**{"model.init_std": 1}).key == base.replace(**{"model.init_std": 1.0}).key
    assert base.replace(epochs=np.int64(2)).key == base.key and isinstance(base.replace(epochs=np.int64(2)).epochs, int)
    assert base.replace(**{"optimizer.lr": np.float32(0.5)}).key == base.key
    for field, value, error in (("model.width", -3, ValueError), ("model.width", 3.5, TypeError),
                                ("model.width", 7, ValueError), ("model.bias", "yes", TypeError),
                                ("model.bottleneck", 1, TypeError), ("track_batch_change", 1, TypeError),
                                ("evaluate", "val", TypeError), ("measure", "cka", TypeError),
                                ("batch_size", 0, ValueError), ("model.mlp_hidden", 64, TypeError)):
        with pytest.raises(error, match=field.split(".")[-1]):
            base.replace(**{field: value})
    assert RunSpec().evaluate == ("test",) and RunSpec(DataSpec(n_val=10)).evaluate == ("val", "test")


def test_every_phase_of_a_switched_run_is_checked_before_the_first_step(tmp_path):
    """A switch to exact GN with a batch larger than the width used to fail after the first phase, leaving a
    checkpoint behind; now it fails before anything trains and the store stays empty."""
    spec = tiny(optimizer=OptimSpec("adam", 1e-3), then=OptimSpec("gn", 0.5), switch_epoch=1, epochs=2,
                batch_size=64)  # h = 48 < n = 64
    with pytest.raises(ValueError, match="batch size n <= bottleneck width h"):
        run(spec, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_every_committed_record_loads_valid_under_its_key():
    """Every record under results/ is valid and its spec still hashes to its file name: no change of the spec
    checks or of the key's canonical form moved an earlier record."""
    paths = [p for p in (ROOT / "results").rglob("*.json") if not {"benchmarks", "flow"} & set(p.parts)
             and p.name != "fingerprints.json"]
    assert len(paths) > 700
    for p in paths:
        assert Record.load(p).spec.key == p.stem


@pytest.mark.parametrize("corrupt, message", [
    (lambda d: d["metrics"].update(train_loss=float("nan")), "not finite"),
    (lambda d: d.update(metrics=[1, 2]), "metrics must be a mapping"),
    (lambda d: d.update(failure="NonFiniteLossError: x"), "not both nor neither"),
    (lambda d: d["history"].pop("config"), "history must hold"),
    (lambda d: d["history"]["epochs"]["train_loss"].pop(), "one length"),
    (lambda d: d["history"]["steps"].pop("loss"), "lacks"),
])
def test_a_record_with_invalid_content_is_an_error_naming_its_file(tmp_path, corrupt, message):
    rec = run(tiny(epochs=1), tmp_path)
    path = record_path(tmp_path, rec.spec)
    d = json.loads(path.read_text())
    corrupt(d)
    path.write_text(json.dumps(d))
    with pytest.raises(ValueError, match=rf"{path.name}.*{message}"):
        Record.load(path)
