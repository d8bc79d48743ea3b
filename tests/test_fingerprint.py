"""Records are tied to the code that made them (`revgn.fingerprint`): a record of other code is reported stale
wherever it is read, a checkpoint of other code is never resumed, and agreement is earned by recomputation."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

import revgn.fingerprint as fpmod
from revgn import recompute
from revgn.fingerprint import code_tokens, combine, source_digests
from revgn.runs import (DataSpec, ModelSpec, OptimSpec, Record, Runs, RunSpec, StaleRecordError, provenance,
                        record_path, run)
from revgn.sweep import dispatch, status

HERE = Path(fpmod.__file__).resolve().parent
needs_mnist = pytest.mark.skipif(not (Path(os.environ.get("REVGN_DATA", "/nonexistent")) / "mnist").exists(),
                                 reason="needs MNIST in $REVGN_DATA (make test points it at ../shared/data)")


def tiny(**changes) -> RunSpec:
    spec = RunSpec(DataSpec("mnist", n_train=96, n_test=32), ModelSpec("mlp", mlp_hidden=(16,)), OptimSpec("adam", 1e-2),
                   batch_size=32, epochs=3, eval_train_size=96, evaluate=("test",))
    return spec.replace(**changes)


def changed_training_path(edit=lambda text: text.replace("eps: float = 1e-8", "eps: float = 1e-1"),
                          module: str = "optimizers.py") -> dict:
    """The fingerprint the code would have with `module` edited (by default Adam's eps, a change of numbers)."""
    def read(name):
        text = (HERE / name).read_text() if (HERE / name).exists() else None
        return edit(text) if name == module and text is not None else text

    now = fpmod.current()
    return combine(source_digests(read), now["torch"], now["kernels"])


@pytest.fixture
def other_code(monkeypatch):
    """Run the rest of a test as if optimizers.py had been edited since its records were made."""
    def switch():
        monkeypatch.setattr(fpmod, "_CURRENT", changed_training_path())
    return switch


def test_the_code_digest_ignores_prose_and_sees_code():
    code = 'def f(x):\n    """Doc."""\n    # why\n    return x + 1\n'
    assert code_tokens(code) == code_tokens('def f(x):\n\n    return x + 1  # other words\n')
    assert code_tokens(code) != code_tokens(code.replace("x + 1", "x + 2"))
    assert changed_training_path()["sources"]["optimizers.py"] != fpmod.current()["sources"]["optimizers.py"]
    assert changed_training_path(lambda t: t + "\n# a comment\n")["fingerprint"] == fpmod.current()["fingerprint"]


@needs_mnist
def test_a_record_of_other_code_is_stale_wherever_it_is_read(tmp_path, other_code):
    spec = tiny()
    rec = run(spec, tmp_path)
    assert rec.fingerprint == fpmod.current() and not rec.stale
    assert status([spec], tmp_path) == {spec.key: "recorded"}
    other_code()
    loaded = Record.load(record_path(tmp_path, spec))
    assert loaded.stale and loaded.changes() == ["optimizers.py changed"]
    assert status([spec], tmp_path) == {spec.key: "stale"}
    assert dispatch([spec], tmp_path, progress=False) == {}  # a stale record is reported, never silently redone
    accepted = Runs(tmp_path, progress=False)
    assert accepted(spec).stale and accepted.stale_records() == [accepted(spec)]
    with pytest.raises(StaleRecordError, match="optimizers.py changed.*stale='accept'"):
        Runs(tmp_path, progress=False, stale="refuse")(spec)
    with pytest.raises(ValueError, match="stale"):
        Runs(tmp_path, stale="ignore")
    line = provenance([loaded], "results/x")
    assert line.startswith("results/x: 1 recorded runs") and "Of these 1: 1 computed by other code" in line
    assert "stale" not in provenance([loaded], "results/x", code=False)


@needs_mnist
def test_a_checkpoint_of_other_code_is_never_resumed(tmp_path, monkeypatch, other_code, capfd):
    import revgn.train

    spec = tiny()
    real = revgn.train.train

    def crash_after_epoch_two(*args, **kwargs):
        def crash(_, epoch):
            if epoch == 2:
                raise KeyboardInterrupt
        return real(*args, **kwargs, callbacks=[crash])

    monkeypatch.setattr(revgn.train, "train", crash_after_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        run(spec, tmp_path)
    monkeypatch.setattr(revgn.train, "train", real)
    other_code()
    counted = []
    monkeypatch.setattr(revgn.train, "train", lambda *a, **k: real(*a, **k, callbacks=[lambda _, e: counted.append(e)]))
    rec = run(spec, tmp_path)
    assert counted == [0, 1, 2, 3], "the run restarted from scratch"
    assert "written by other code" in capfd.readouterr().err
    assert rec.fingerprint == fpmod.current()
    kept = list((tmp_path / f"{spec.key}.partial").glob("*")) if (tmp_path / f"{spec.key}.partial").exists() else []
    assert not kept, "the scratch folder (with the set-aside checkpoint) goes once the run is recorded"


@needs_mnist
def test_agreement_is_earned_by_recomputation(tmp_path, monkeypatch):
    store, registry = tmp_path / "store", tmp_path / "fingerprints.json"
    monkeypatch.setattr(fpmod, "EQUIVALENCES", registry)
    good, bad = run(tiny(), store), run(tiny(seed=1, **{"model.seed": 1}), store)
    # Both records claim an older fingerprint (a refactor that kept the numbers, say) ...
    old = changed_training_path(lambda t: t.replace("def train(", "def train(  ", 1) + "\nREFACTORED = 1\n",
                                module="train.py")
    for rec in (good, bad):
        path = record_path(store, rec.spec)
        d = json.loads(path.read_text())
        d["provenance"]["fingerprint"] = old
        path.write_text(json.dumps(d))
    assert Record.load(record_path(store, good.spec)).stale
    # ... and one of them holds numbers this code does not reproduce: the class is refused, both stay stale.
    d = json.loads(record_path(store, bad.spec).read_text())
    d["history"]["epochs"]["train_loss"][-1] += 1e-9
    record_path(store, bad.spec).write_text(json.dumps(d))
    out = recompute.verify([store], sample=2, log=lambda *_: None)
    assert out[old["fingerprint"]].startswith("differs") and not registry.exists()
    record_path(store, bad.spec).unlink()
    out = recompute.verify([store], sample=2, log=lambda *_: None)
    assert out[old["fingerprint"]].startswith("same numbers")
    assert not Record.load(record_path(store, good.spec)).stale
    classes = json.loads(registry.read_text())["classes"]
    assert classes[0]["evidence"][0]["recomputed"] == [good.spec.key]


def test_backfill_takes_the_fingerprint_of_a_clean_commit_and_leaves_dirty_trees_alone(tmp_path):
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=HERE, capture_output=True, text=True).stdout.strip()
    if not head:
        pytest.skip("needs the git repository")
    spec, prov = tiny(), {"torch": "2.13.0+cpu", "kernels": "aten AVX2, MKL_CBWR=AVX2, ONEDNN_MAX_CPU_ISA=AVX2"}
    for name, commit in (("clean.json", head), ("dirty.json", head + "+dirty")):
        (tmp_path / name).write_text(json.dumps({"spec": spec.to_dict(), "history": {}, "metrics": {},
                                                 "provenance": {**prov, "commit": commit}}))
    assert fpmod.backfill(tmp_path) == {"had one": 0, "filled": 1, "dirty tree": 1, "unknown commit": 0}
    filled = json.loads((tmp_path / "clean.json").read_text())["provenance"]["fingerprint"]
    assert filled == fpmod.at_commit(head, prov["torch"], prov["kernels"])
    assert "fingerprint" not in json.loads((tmp_path / "dirty.json").read_text())["provenance"]
    assert fpmod.backfill(tmp_path)["had one"] == 1


def test_every_module_a_run_imports_is_in_the_fingerprint():
    """The modules `revgn.runs` reaches by its imports (transitively, function-local imports too) are the
    training path, but for two that cannot change a run's numbers: `download` (bytes it verifies by SHA-256)
    and `fingerprint` itself. A module missing here would let its edits change records unseen."""
    import ast

    def imported(name: str) -> set[str]:
        tree = ast.parse((HERE / name).read_text())
        out = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                out |= {node.module.split(".")[0] + ".py"} if node.module else {a.name + ".py" for a in node.names}
        return {m for m in out if (HERE / m).exists()}

    reached, todo = set(), ["runs.py"]
    while todo:
        name = todo.pop()
        if name not in reached:
            reached.add(name)
            todo += imported(name)
    assert reached - set(fpmod.TRAINING_PATH) == {"download.py", "fingerprint.py"}
    assert set(fpmod.TRAINING_PATH) <= reached
