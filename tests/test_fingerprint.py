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
from revgn.experiments.right_inverse import MEASURED_BY
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
    assert out[old["fingerprint"]].startswith("differs") and fpmod.equivalence_classes(registry) == []
    # The difference is recorded, with how far it goes; a later verify does not recompute it again ...
    (known,) = fpmod.known_differences(registry)
    assert (known["old"], known["new"]) == (old["fingerprint"], fpmod.current()["fingerprint"])
    assert sorted(known["recomputed"]) == sorted([good.spec.key, bad.spec.key])
    assert known["largest_relative"] == pytest.approx(1e-9 / d["history"]["epochs"]["train_loss"][-1], rel=1e-3)
    assert known["from_step"] is None and set(known["final"].values()) == {0.0}  # steps, final metrics agree
    logged = []
    out = recompute.verify([store], sample=2, log=logged.append)
    assert out[old["fingerprint"]].startswith("differs (known") and logged == []
    assert recompute.summary([Record.load(record_path(store, good.spec))]).endswith(
        "1 of the 1 stale records are of code whose records this code recomputes otherwise (2 recomputed, the "
        f"cheapest of each optimiser: their numbers differ, by at most {known['largest_relative']:.0e} relatively; "
        "the final test accuracy by at most 0.00 points).")
    # ... unless asked: with the tampered record gone, agreement is earned and the difference forgotten.
    record_path(store, bad.spec).unlink()
    out = recompute.verify([store], sample=2, log=lambda *_: None, again=True)
    assert out[old["fingerprint"]].startswith("same numbers")
    assert not Record.load(record_path(store, good.spec)).stale and fpmod.known_differences(registry) == []
    classes = json.loads(registry.read_text())["classes"]
    assert classes[0]["evidence"][0]["recomputed"] == [good.spec.key]


@needs_mnist
def test_no_optimiser_joins_a_class_on_another_optimisers_evidence(tmp_path, monkeypatch):
    """A fingerprint's records are sampled by optimiser: a costlier SGD record is recomputed beside the cheapest
    Adam one even with sample=1, so a code change that moved only SGD's numbers cannot join the class."""
    store, registry = tmp_path / "store", tmp_path / "fingerprints.json"
    monkeypatch.setattr(fpmod, "EQUIVALENCES", registry)
    cheap, costly = run(tiny(), store), run(tiny(optimizer=OptimSpec("sgd", 0.1), epochs=4), store)
    assert recompute._cost(cheap) < recompute._cost(costly)
    old = changed_training_path(lambda t: t + "\nREFACTORED = 1\n", module="train.py")
    for rec, nudge in ((cheap, 0.0), (costly, 1e-6)):  # SGD's numbers "moved" (its record no longer reproduces)
        d = json.loads(record_path(store, rec.spec).read_text())
        d["provenance"]["fingerprint"] = old
        d["history"]["steps"]["loss"][0] *= 1 + nudge
        record_path(store, rec.spec).write_text(json.dumps(d))
    logged = []
    out = recompute.verify([store], sample=1, log=logged.append)
    assert len(logged) == 2 and out[old["fingerprint"]].startswith("differs")
    assert fpmod.known_differences(registry)[0]["from_step"] == 0


@needs_mnist
def test_only_records_of_this_cpu_are_evidence(tmp_path, monkeypatch):
    """Float32's last digits depend on the CPU model even with pinned kernels: a record computed on another CPU
    is never recomputed as evidence about code (its difference would be the machine's), and a fingerprint with an
    optimiser recorded only elsewhere is left unverified, before anything is computed."""
    store, registry = tmp_path / "store", tmp_path / "fingerprints.json"
    monkeypatch.setattr(fpmod, "EQUIVALENCES", registry)
    here, there = run(tiny(), store), run(tiny(optimizer=OptimSpec("sgd", 0.1)), store)
    old = changed_training_path(lambda t: t + "\nREFACTORED = 1\n", module="train.py")
    for rec, device in ((here, recompute._here()), (there, "cpu (Another CPU)")):
        d = json.loads(record_path(store, rec.spec).read_text())
        assert d["provenance"]["device"] == recompute._here()  # as recorded here
        d["provenance"].update(fingerprint=old, device=device)
        record_path(store, rec.spec).write_text(json.dumps(d))
    logged = []
    out = recompute.verify([store], sample=2, log=logged.append)[old["fingerprint"]]
    assert out.startswith("not verified: its sgd records were computed on cpu (Another CPU)") and logged == []
    assert not registry.exists()


@needs_mnist
def test_a_failed_run_is_recomputed_too_and_must_fail_the_same_way(tmp_path, monkeypatch):
    """Where and why a run stopped is what a failed record records: `verify` reruns it and agrees only if the
    history up to the failure and the failure's words are the same; its cost counts the epochs it began."""
    store, registry = tmp_path / "store", tmp_path / "fingerprints.json"
    monkeypatch.setattr(fpmod, "EQUIVALENCES", registry)
    failed = run(tiny(optimizer=OptimSpec("sgd", 1e12)), store)  # a non-finite loss in the first epoch
    assert failed.failure.startswith("NonFiniteLossError: epoch 1,") and failed.history.epochs["epoch"] == [0]
    assert recompute._cost(failed) == pytest.approx(recompute._cost(run(tiny(epochs=1))))
    path = record_path(store, failed.spec)
    old = changed_training_path(lambda t: t + "\nREFACTORED = 1\n", module="train.py")
    original = json.loads(path.read_text())
    original["provenance"]["fingerprint"] = old
    # The same numbers but another reason (say, the refusal moved to a later step) refuses the class ...
    path.write_text(json.dumps({**original, "failure": original["failure"].replace("step 3/3", "step 2/3")}))
    out = recompute.verify([store], sample=1, log=lambda *_: None)
    assert out[old["fingerprint"]].startswith("differs") and fpmod.equivalence_classes(registry) == []
    assert fpmod.known_differences(registry)[0]["largest_relative"] is None  # not a difference of numbers
    # ... as does a changed number before it, from its step on; the record as it was earns agreement.
    tampered = json.loads(json.dumps(original))
    tampered["history"]["steps"]["loss"][1] *= 1 + 1e-6
    path.write_text(json.dumps(tampered))
    verify = lambda: recompute.verify([store], sample=1, log=lambda *_: None, again=True)[old["fingerprint"]]
    assert verify().startswith("differs") and fpmod.known_differences(registry)[0]["from_step"] == 1
    path.write_text(json.dumps(original))
    assert verify().startswith("same numbers") and not Record.load(path).stale


@needs_mnist
def test_a_measurement_is_tied_to_its_measurer_too_and_recomputed_by_it(tmp_path, monkeypatch, other_code):
    """A measurement's fingerprint digests the training path and its measuring function's module: an edit of
    either makes it stale; `recompute.verify` reruns the function it names and earns agreement bit for bit."""
    from revgn.experiments import right_inverse as ri
    from revgn.records import staleness

    store, registry = tmp_path / "store", tmp_path / "fingerprints.json"
    monkeypatch.setattr(fpmod, "EQUIVALENCES", registry)
    flow = ri.Flow("mnist", hidden=16, batch=8, held_out=20, alphas=(0.5, 0.25), seeds=(0, 1))
    paths = ri.record_flow(flow, store=store)
    recs = ri.flow_records(flow, store)
    assert [r.provenance["measured_by"] for r in recs] == [ri.MEASURED_BY] * 2 and not any(r.stale for r in recs)
    assert recs[0].fingerprint == fpmod.current(("experiments/right_inverse.py",)) != fpmod.current()
    # Both records claim a measurer edited since (a refactor of right_inverse.py that kept the numbers, say) ...
    originals = [json.loads(p.read_text()) for p in paths]
    sources = {**recs[0].fingerprint["sources"], "experiments/right_inverse.py": "0" * 16}
    old = combine(sources, recs[0].fingerprint["torch"], recs[0].fingerprint["kernels"])
    for p, d in zip(paths, originals):
        p.write_text(json.dumps({**d, "provenance": {**d["provenance"], "fingerprint": old}}))
    recs = ri.flow_records(flow, store)
    assert [r.changes() for r in recs] == [["experiments/right_inverse.py changed"]] * 2
    assert staleness(recs).startswith("Of these 2: 2 computed by other code") and staleness([]) == "Nothing recorded."
    # ... one holding a number the measurer does not reproduce refuses the class; without it, agreement.
    tampered = json.loads(paths[1].read_text())
    tampered["result"]["error_decay"][ri.GN_METHODS[0]][0] += 1e-12
    paths[1].write_text(json.dumps(tampered))
    out = recompute.verify([store], sample=2, log=lambda *_: None)
    assert out[old["fingerprint"]].startswith("differs") and fpmod.equivalence_classes(registry) == []
    assert fpmod.known_differences(registry)[0]["largest_relative"] > 0
    paths[1].write_text(json.dumps({**originals[1], "provenance": {**originals[1]["provenance"], "fingerprint": old}}))
    out = recompute.verify([store], sample=2, log=lambda *_: None, again=True)
    assert out[old["fingerprint"]].startswith("same numbers")
    assert not any(r.stale for r in ri.flow_records(flow, store))
    evidence = json.loads(registry.read_text())["classes"][0]["evidence"][0]
    assert evidence["recomputed"] == sorted(r.key for r in recs) and evidence["old"] == old["fingerprint"]
    other_code()  # an edit of the training path makes it stale again (its class holds the code before)
    assert [r.changes() for r in ri.flow_records(flow, store)] == \
        [["experiments/right_inverse.py changed", "optimizers.py changed"]] * 2


def test_backfill_takes_the_fingerprint_of_a_clean_commit_and_leaves_dirty_trees_alone(tmp_path):
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=HERE, capture_output=True, text=True).stdout.strip()
    if not head:
        pytest.skip("needs the git repository")
    spec, prov = tiny(), {"torch": "2.13.0+cpu", "kernels": "aten AVX2, MKL_CBWR=AVX2, ONEDNN_MAX_CPU_ISA=AVX2"}
    for name, commit in (("clean.json", head), ("dirty.json", head + "+dirty")):
        (tmp_path / name).write_text(json.dumps({"spec": spec.to_dict(), "history": {}, "metrics": {},
                                                 "provenance": {**prov, "commit": commit}}))
    # a measurement made before it named its measurer: filled only once the measuring function is named
    (tmp_path / "flow.json").write_text(json.dumps({"kind": "flow", "setting": {"seed": 0}, "result": {},
                                                    "provenance": {**prov, "commit": head}}))
    counts = {"had one": 0, "filled": 1, "dirty tree": 1, "unknown commit": 0, "measurer unknown": 1}
    assert fpmod.backfill(tmp_path) == counts
    filled = json.loads((tmp_path / "clean.json").read_text())["provenance"]["fingerprint"]
    assert filled == fpmod.at_commit(head, prov["torch"], prov["kernels"])
    assert "fingerprint" not in json.loads((tmp_path / "dirty.json").read_text())["provenance"]
    assert fpmod.backfill(tmp_path, measured_by={"flow": MEASURED_BY})["filled"] == 1
    flow = json.loads((tmp_path / "flow.json").read_text())["provenance"]
    assert flow["measured_by"] == MEASURED_BY
    assert flow["fingerprint"] == fpmod.at_commit(head, prov["torch"], prov["kernels"],
                                                  also=("experiments/right_inverse.py",))
    assert set(flow["fingerprint"]["sources"]) == set(filled["sources"]) | {"experiments/right_inverse.py"}
    assert fpmod.backfill(tmp_path)["had one"] == 2
    with pytest.raises(ValueError, match="measured_by must name a function of revgn"):
        fpmod.backfill(tmp_path, measured_by={"flow": "right_inverse.measure_flow"})
    with pytest.raises(ValueError, match="revgn has no module experiments/nope.py"):
        fpmod.backfill(tmp_path, measured_by={"flow": "revgn.experiments.nope:measure"})


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
