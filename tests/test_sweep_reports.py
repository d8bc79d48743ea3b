"""Sweeps that say why they failed, and stop their workers when they are stopped (`revgn.sweep`)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from revgn.runs import DataSpec, ModelSpec, OptimSpec, RunSpec
from revgn.sweep import Grid, explain, main, status

ROOT = Path(__file__).resolve().parents[1]
needs_mnist = pytest.mark.skipif(not (Path(os.environ.get("REVGN_DATA", "/nonexistent")) / "mnist").exists(),
                                 reason="needs MNIST in $REVGN_DATA (make test points it at ../shared/data)")


def tiny(**changes) -> RunSpec:
    spec = RunSpec(DataSpec("mnist", n_train=96, n_test=32), ModelSpec("mlp", mlp_hidden=(16,)), OptimSpec("adam", 1e-2),
                   batch_size=32, epochs=2, eval_train_size=96)
    return spec.replace(**changes)


def _bad_grid() -> Grid:
    """One run that cannot work (a batch larger than the training set), one that can."""
    return Grid("t-bad", [tiny(batch_size=1000), tiny(seed=1)])


def _long_grid() -> Grid:
    return Grid("t-long", [tiny(epochs=400)])


SUBMITIT_TRACE = """Job (task=0) failed during processing with trace:
----------------------
Traceback (most recent call last):
  File "/x/submitit/core/submission.py", line 55, in process_job
    result = delayed.result()
  File "/x/revgn/train.py", line 480, in train
    raise ValueError(f"batch_size must be in 1..{n_train}, got {batch_size}")
ValueError: batch_size must be in 1..96, got 1000
----------------------
You can check full logs with 'job.stderr(0)' and 'job.stdout(0)'or at paths:
  - /x/.submitit/1_0_log.err
"""


def test_a_failure_is_explained_by_the_workers_own_error_and_says_whether_a_rerun_helps():
    from submitit.core.utils import FailedJobError, UncompletedJobError

    assert explain(FailedJobError(SUBMITIT_TRACE)) == ("ValueError: batch_size must be in 1..96, got 1000", False)
    multi = SUBMITIT_TRACE.replace("ValueError: batch_size must be in 1..96, got 1000",
                                   "revgn.runs.RunInProgressError: run 3f2 is being trained\n  by another process")
    assert explain(FailedJobError(multi)) == ("revgn.runs.RunInProgressError: run 3f2 is being trained by another "
                                              "process", True)
    assert explain(UncompletedJobError("Job 12 (task: 0) with path /x has state KILLED"))[1] is True
    assert explain(KeyboardInterrupt())[1] is True


@needs_mnist
def test_the_sweep_prints_a_failed_runs_real_error_once_and_says_it_will_recur(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    assert main(["tests.test_sweep_reports:_bad_grid", "--store", str(tmp_path), "--workers", "2"]) == 1
    out = capsys.readouterr()
    assert "ValueError: batch_size must be in 1..96, got 1000" in out.err
    assert "will fail the same way again" in out.err and "1 failed (0 can resume on a rerun, 1 cannot)" in out.out
    assert "log_err" not in out.err and ".submitit" not in out.err.split("->")[0]
    assert list(status(_bad_grid().specs, tmp_path).values()) == ["missing", "recorded"]


def test_a_mistyped_store_is_said_to_hold_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    assert main(["tests.test_sweep_reports:_bad_grid", "--store", str(tmp_path / "typo"), "--list"]) == 0
    assert "holds no records or checkpoints" in capsys.readouterr().err


@needs_mnist
@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_to_the_driver_alone_stops_its_workers_and_keeps_their_checkpoints(tmp_path, sig):
    store = tmp_path / "store"
    cmd = [sys.executable, "-c", "import sys; from revgn import sweep; sys.exit(sweep.main(sys.argv[1:]))",
           "tests.test_sweep_reports:_long_grid", "--store", str(store), "--workers", "1"]
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    # started as a shell script's background job is: with SIGINT ignored, which its workers inherit
    driver = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True,
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    spec = _long_grid().specs[0]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and status([spec], store)[spec.key] != "interrupted":
        time.sleep(0.05)
    assert status([spec], store)[spec.key] == "interrupted", "the run never reached its first checkpoint"
    driver.send_signal(sig)  # to the driver only, not to its process group
    out, _ = driver.communicate(timeout=60)
    assert driver.returncode == 130, out
    assert "stopped" in out and "checkpoints kept" in out
    time.sleep(0.5)
    alive = subprocess.run(["pgrep", "-f", str(store)], capture_output=True, text=True).stdout.split()
    try:
        assert not alive, f"workers outlived their driver: {alive}"
    finally:
        for pid in alive:
            os.kill(int(pid), signal.SIGKILL)
    assert status([spec], store)[spec.key] == "interrupted", "the checkpoint is kept for a rerun"
