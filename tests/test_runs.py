"""Records of runs, read by the experiment protocol: measures, switches of optimiser, selection, paired verdicts."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from revgn import stats
from revgn.experiments import gn_protocol as gp
from revgn.runs import (DataSpec, ModelSpec, OptimSpec, Record, RunInProgressError, Runs, RunSpec, provenance,
                        record_path, records, run)
from revgn.history import History

needs_mnist = pytest.mark.skipif(not (Path(os.environ.get("REVGN_DATA", "/nonexistent")) / "mnist").exists(),
                                 reason="needs MNIST in $REVGN_DATA (make test points it at ../shared/data)")


def tiny(**changes) -> RunSpec:
    spec = RunSpec(DataSpec("mnist", n_train=128, n_test=64), ModelSpec(depth=2, hidden=48), OptimSpec("gn", 0.5),
                   batch_size=32, epochs=3, eval_train_size=128, evaluate=("test",))
    return spec.replace(**changes)


def fake(loss=(1.0, 0.5), steps=None, **spec_changes) -> Record:
    h = History()
    for e, l in enumerate(loss):
        h.log(h.epochs, epoch=e, train_loss=l)
    for e, before, after in steps or ():
        h.log(h.steps, epoch=e, loss=before, loss_after=after)
    return Record(tiny(**spec_changes), h, {"train_loss": loss[-1]}, {})


def test_saturation_and_batch_drop_read_the_history():
    assert gp.saturation(fake((4.0, 2.0, 1.0, 1.0)), last=1) == 0.0
    assert gp.saturation(fake((4.0, 2.0, 1.0)), last=2) == 0.75
    with pytest.raises(ValueError, match="needs more than 3"):
        gp.saturation(fake((4.0, 2.0, 1.0)), last=3)
    rec = fake(steps=[(1, 2.0, 0.5), (1, 1.0, 0.5), (2, 1.0, 0.9)])
    assert gp.batch_loss_drop(rec).tolist() == [75.0, 50.0, pytest.approx(10.0)]
    assert gp.drop_by_epoch(rec).tolist() == [62.5, pytest.approx(10.0)]
    with pytest.raises(ValueError, match="track_batch_change"):
        gp.batch_loss_drop(fake())


def test_selection_takes_the_best_by_its_criterion_and_never_a_failure():
    recs = [fake((1.0, l), **{"optimizer.lr": lr}) for lr, l in ((0.1, 0.5), (0.3, 0.2), (1.0, 0.3))]
    assert gp.select(recs, "train_loss").lr == 0.3
    failed = Record(tiny(**{"optimizer.lr": 3.0}), History(), {}, {}, failure="NonFiniteLossError: boom")
    sel = gp.select(recs + [failed], "train_loss")
    assert sel.lr == 0.3 and sel.scores[3.0] == -np.inf and "3: failed" in sel.describe()
    assert gp.select([failed], "train_loss").best is None
    assert sel.runner_up == 1.0 and sel.margin == pytest.approx(0.1)  # ahead of 1.0 (loss 0.3); the failure is no runner-up
    assert gp.select(recs[:1] + [failed], "train_loss").margin is None
    with pytest.raises(ValueError, match="criterion"):
        gp.select(recs, "test_acc")  # the test set is never a criterion


def test_the_paired_interval_is_a_student_t_interval_and_the_rule_needs_five_seeds():
    a, b = [0.91, 0.93, 0.92, 0.90, 0.94], [0.90, 0.91, 0.91, 0.91, 0.92]
    c = stats.paired(a, b)
    d = np.array(a) - np.array(b)
    half = 2.7764451051977987 * d.std(ddof=1) / math.sqrt(5)  # t_{0.975, 4}
    assert c.mean == pytest.approx(d.mean()) and c.lo == pytest.approx(d.mean() - half) and c.n == 5
    assert stats.verdict(c, "A better", "A worse") == "no detectable difference"  # the interval contains 0
    assert stats.verdict(stats.paired([1, 2, 3, 4, 5], [0, 0.5, 1, 2, 3]), "A better", "A worse") == "A better"
    assert stats.verdict(stats.paired([0, 0, 0, 0, 0], [1, 1.1, 1, 1.2, 1]), "A better", "A worse") == "A worse"
    assert stats.verdict(stats.paired([2, 3, 4, 5], [0, 0, 0, 0]), "A better", "A worse") == "no verdict (4 of 5 seeds)"
    assert math.isnan(stats.paired([1.0], [0.0]).lo)
    # the comparison names its test; a 90% interval is narrower by the t quantiles' ratio and says so
    assert c.test == stats.TEST == "paired t-test, two-sided, 95% interval"
    c90 = stats.paired(a, b, level=0.9)
    assert c90.test == "paired t-test, two-sided, 90% interval"
    assert (c90.hi - c90.lo) / (c.hi - c.lo) == pytest.approx(2.1318467863266495 / 2.7764451051977987)  # t_{0.95,4}
    # the rule as a value: what the words render, and b - a as its mirror image
    V = stats.Verdict
    assert c.verdict is V.NEITHER and not c.verdict.decided
    better = stats.paired([1, 2, 3, 4, 5], [0, 0.5, 1, 2, 3])
    assert better.verdict is V.ABOVE and better.verdict.decided
    assert stats.paired([0, 0.5, 1, 2, 3], [1, 2, 3, 4, 5]).verdict is V.BELOW is better.verdict.flipped()
    assert stats.paired([2, 3, 4, 5], [0, 0, 0, 0]).verdict is V.TOO_FEW is V.TOO_FEW.flipped()
    assert c.text() == f"{d.mean() * 100:+.1f} [{(d.mean() - half) * 100:+.1f}, {(d.mean() + half) * 100:+.1f}] points (5 seeds)"
    small = stats.paired([0.0371, 0.0372, 0.0375, 0.0370, 0.0368], [0.019, 0.0191, 0.0189, 0.0192, 0.019])
    assert small.text(1, "") == "+0.0181 [+0.0177, +0.0185] (5 seeds)"  # decimals follow the interval's width
    assert stats.paired([0.998], [0.95]).text(1, "") == "+0.048 (1 seed)"
    with pytest.raises(ValueError, match="not finite"):
        stats.paired([1.0, float("nan")], [0.0, 0.0])
    with pytest.raises(ValueError, match="equally long"):
        stats.paired([1.0, 2.0], [0.0])


def test_compare_pairs_records_by_seed():
    a = [fake((1.0, 0.5), seed=s) for s in (0, 1)]
    b = [fake((1.0, 0.4), seed=s) for s in (1, 0)]
    with pytest.raises(ValueError, match="share their seeds"):
        gp.compare(a, b, "train_loss")
    assert gp.compare(a, b[::-1], "train_loss").mean == pytest.approx(0.1)


@needs_mnist
def test_measures_are_recorded_along_training(tmp_path):
    rec = run(tiny(measure=("ntk_distance", "cka", "weight_cosine", "ntk_similarity", "kappa"), kernel_inputs=2,
                   cka_inputs=32, kappa_inputs=4, epochs=1), tmp_path)
    e = rec.history.epochs
    assert e["ntk_distance"][0] < 1e-6 and e["ntk_distance"][1] > 0 and e["cka_block2"][0] == pytest.approx(1)
    assert e["weight_cosine"][0] == pytest.approx(1) and e["kappa"][0] > 0 and len(e["ntk_similarity"]) == 2
    assert Record.load(record_path(tmp_path, rec.spec)).history.epochs == e
    with pytest.raises(ValueError, match="measure"):
        tiny(measure=("ntk_size",))
    with pytest.raises(ValueError, match="cka"):
        tiny(measure=("cka",), evaluate=())


@needs_mnist
def test_a_switch_of_optimiser_continues_the_network_and_an_interrupted_one_resumes(tmp_path, monkeypatch):
    import revgn.train

    spec = tiny(optimizer=OptimSpec("adam", 1e-3), then=OptimSpec("gn", 0.5), switch_epoch=1)
    with pytest.raises(ValueError, match="switch"):
        tiny(then=OptimSpec("gn", 0.5), switch_epoch=3)
    with pytest.raises(ValueError, match="switch"):
        tiny(switch_epoch=1)
    whole = run(spec)
    assert whole.history.epochs["epoch"] == [0, 1, 2, 3]
    first = run(tiny(optimizer=OptimSpec("adam", 1e-3), epochs=1))  # the Adam phase alone: the same first epoch
    assert whole.history.epochs["train_loss"][:2] == first.history.epochs["train_loss"]
    real = revgn.train.train

    def crash_in_phase_two(*args, **kwargs):
        def crash(_, epoch):
            if epoch == 2:
                raise KeyboardInterrupt
        return real(*args, **kwargs, callbacks=[crash])

    monkeypatch.setattr(revgn.train, "train", crash_in_phase_two)
    with pytest.raises(KeyboardInterrupt):
        run(spec, tmp_path)
    assert sorted(p.name for p in (tmp_path / f"{spec.key}.partial").iterdir()) == ["lock", "phase0.ckpt", "phase1.ckpt"]
    monkeypatch.setattr(revgn.train, "train", real)
    resumed = run(spec, tmp_path)
    assert resumed.history.to_dict() == json.loads(json.dumps(whole.history.to_dict()))
    assert [p.suffix for p in tmp_path.iterdir()] == [".json"]


@needs_mnist
def test_a_run_another_process_is_training_is_refused_and_a_killed_holder_leaves_no_stale_lock(tmp_path):
    import subprocess
    import sys

    spec = tiny(epochs=1)
    scratch = tmp_path / f"{spec.key}.partial"
    holder = subprocess.Popen(  # another process holds the run's lock, as a sweep's worker does while it trains
        [sys.executable, "-c", "import sys; from pathlib import Path; from revgn.runs import exclusive\n"
         f"with exclusive(Path({str(scratch)!r})):\n    print('held', flush=True); sys.stdin.readline()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunInProgressError, match=spec.key[:12]):
            run(spec, tmp_path)
        assert [p.name for p in tmp_path.iterdir()] == [scratch.name]  # nothing recorded, nothing removed
        assert [p.name for p in scratch.iterdir()] == ["lock"]
    finally:
        holder.kill()  # SIGKILL: the kernel releases its lock
        holder.wait()
    rec = run(spec, tmp_path)
    assert rec.ok and [p.name for p in tmp_path.iterdir()] == [f"{spec.key}.json"]


@needs_mnist
def test_a_run_stopped_before_its_first_checkpoint_leaves_the_store_as_it_was(tmp_path, monkeypatch):
    import revgn.runs

    def unreadable(*args, **kwargs):
        raise ValueError("mnist: the cached file failed its SHA-256 check")

    monkeypatch.setattr(revgn.runs, "splits_of", unreadable)
    with pytest.raises(ValueError, match="SHA-256"):
        run(tiny(), tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_the_plateau_rule_counts_evaluations_since_the_first_best():
    from revgn.history import plateaued

    h = History()
    stop = plateaued("val_acc", 2)
    for acc, expected in ((0.5, False), (0.7, False), (0.7, False), (0.6, True), (0.8, False)):
        h.log(h.epochs, epoch=len(h.epochs["epoch"]), val_acc=acc)
        assert stop(h) is expected, (h.epochs["val_acc"], expected)  # a tie is not a rise
    with pytest.raises(KeyError, match="val_loss"):
        plateaued("val_loss", 1)(h)
    with pytest.raises(ValueError, match="patience"):
        plateaued("val_acc", 0)


@needs_mnist
def test_patience_stops_where_validation_accuracy_stopped_rising_and_a_resumed_run_stops_there_too(tmp_path):
    from revgn.history import plateaued
    from revgn.train import train

    spec = tiny(**{"data.n_val": 64}, evaluate=("val", "test"), patience=2, epochs=20)
    with pytest.raises(ValueError, match="patience"):
        tiny(patience=2)  # no validation split to watch
    rec = run(spec, tmp_path)
    val = rec.history.epochs["val_acc"]
    first_best = int(np.argmax(val))
    assert len(val) - 1 < 20, "128 images are fitted long before 20 epochs: the run should have stopped"
    assert len(val) - 1 - first_best == 2 and max(val[first_best + 1:]) <= val[first_best]
    assert rec.metrics["val_acc"] == val[-1] and rec.history.epochs["epoch"][-1] == len(val) - 1
    # a run killed after its stopping evaluation (checkpoint written, record not) stops there when resumed
    from revgn.runs import splits_of

    sets = splits_of(spec.data)
    build = lambda: spec.model.build(784, 10, __import__("torch").float32)
    metric = {"val_acc": lambda m: __import__("revgn.runs", fromlist=["_eval"])._eval(m, sets["val"], "ce")[1]}
    kw = dict(epochs=20, batch_size=32, seed=0, metrics=metric, stop=plateaued("val_acc", 2), progress=False,
              checkpoint=tmp_path / "c.ckpt", eval_train_size=128)
    once = train(build(), spec.optimizer.build(0), sets["train"], **kw)
    again = train(build(), spec.optimizer.build(0), sets["train"], **kw)
    assert again.to_dict() == json.loads(json.dumps(once.to_dict())) and len(again.steps["loss"]) == len(once.steps["loss"])


@needs_mnist
def test_a_training_loss_target_stops_at_the_first_evaluation_that_reaches_it():
    short = run(tiny(epochs=2))
    target = short.metrics["train_loss"]
    assert short.history.epochs["train_loss"][1] > target  # the loss fell in the second epoch
    long = run(tiny(epochs=20, until_train_loss=target))
    assert long.history.epochs["epoch"][-1] == 2 and long.history.epochs["train_loss"] == short.history.epochs["train_loss"]
    with pytest.raises(ValueError, match="until_train_loss"):
        tiny(until_train_loss=-1.0)


@needs_mnist
def test_runs_memoises_by_key_and_provenance_says_where_records_came_from(tmp_path):
    runs = Runs(tmp_path, progress=False)
    a, b = runs.all([tiny(epochs=1), tiny(epochs=1), tiny(epochs=1, seed=1)])[:2], runs(tiny(epochs=1))
    assert a[0] is a[1] is b and len(runs.records) == 2 and len(records(tmp_path)) == 2
    line = provenance(records(tmp_path), "results/x")
    assert line.startswith("results/x: 2 recorded runs") and b.provenance["commit"][:10] in line
    assert provenance([], "results/x") == "results/x: nothing recorded."


class FakeRuns:
    """Records whose final validation accuracy is a given function of the rate (no training)."""

    def __init__(self, acc):
        self.acc, self.asked = acc, []

    def all(self, specs, desc=""):
        self.asked += [s.optimizer.lr for s in specs]
        return [Record(s, History(), {"val_acc": self.acc(s.optimizer.lr)}, {}) if np.isfinite(self.acc(s.optimizer.lr))
                else Record(s, History(), {}, {}, failure="NonFiniteLossError: diverged") for s in specs]


def tuned(runs: FakeRuns, lrs, **kw):
    """`gn_protocol.tuning` walked to its end: every run it asks for is answered at once."""
    needed, sel = gp.tuning(tiny(), lrs, "val_acc", runs.all, **kw)
    assert sel is not None and [s.optimizer.lr for s in needed] == runs.asked[-len(needed):]
    return sel


def test_tuning_extends_the_grid_until_the_best_rate_is_bracketed():
    peak = lambda best: (lambda lr: -abs(math.log(lr / best)))  # validation accuracy peaks at `best`
    sel = tuned(FakeRuns(peak(0.1)), (1.0, 3.0, 10.0))
    assert sel.lr == pytest.approx(1 / 9) and sel.bracketed  # grid extended down to 1/27: 1/9 is interior
    assert min(sel.scores) < sel.lr < max(sel.scores)
    up = tuned(FakeRuns(peak(30.0)), (0.1, 0.3, 1.0), cap=2.0)
    assert up.lr == 2.0 and up.bracketed and max(up.scores) == 2.0  # stopped at the cap: reported as bracketed by it
    far = tuned(FakeRuns(peak(1e-6)), (1.0, 3.0), extensions=2)
    assert not far.bracketed and len(far.scores) == 4 and far.lr == pytest.approx(1 / 9)  # out of extensions: said so
    diverging = tuned(FakeRuns(lambda lr: lr if lr < 1.5 else np.nan), (0.3, 1.0, 3.0))
    assert diverging.lr == 1.0 and diverging.bracketed  # a failed rate above the best brackets it
