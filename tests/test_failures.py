"""Every failure leaves state as it was: refused steps, divergence, stalled or killed downloads, corrupt files.

One section per case of the issue "Every failure leaves state as it was"; "as it was" is checked bit for bit.
"""
from __future__ import annotations

import hashlib
import http.server
import json
import os
import signal
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from revgn import data, download, runs
from revgn.experiments import gn_protocol as gp
from revgn.gn_optimizers import GaussNewton
from revgn.losses import CrossEntropy, NonFiniteLossError
from revgn.models import MLP, RevMLP
from revgn.optimizers import SGD, Adam, apply_step
from revgn.solvers import RankDeficientError
from revgn.train import evaluate, train
from revgn.utils import atomic_write_bytes, atomic_write_json, remove_stale_partials
from test_data import cache, cifar_archive, serve, sha256  # noqa: F401  (cache is a fixture)

ROOT = Path(__file__).resolve().parents[1]


def state_of(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_bit_identical(before: dict, model) -> None:
    after = model.state_dict()
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), f"{k} changed"


# --------------------------------------------------------------------------- 1. atomic steps
def test_a_refused_gn_step_leaves_the_model_bit_identical():
    # Zero padding to twice the input width: block 1's first half-layer sees only zeros and is refused,
    # after blocks 3 and 2 have had their steps computed.
    model = RevMLP(20, 3, depth=3, hidden=32, width=40, seed=0)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 20, generator=g), torch.randint(0, 3, (8,), generator=g)
    before = state_of(model)
    with pytest.raises(RankDeficientError, match="block 1/3"):
        GaussNewton(1.0).step(model, x, y, CrossEntropy())
    assert_bit_identical(before, model)


def test_the_atomic_gn_step_is_bit_identical_to_applying_each_block_in_turn():
    # What the step did before it was made atomic: each block's step applied in place as soon as computed.
    from revgn.gn import iter_block_directions

    model = RevMLP(40, 10, depth=3, hidden=64, seed=1)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 40, generator=g), torch.randint(0, 10, (32,), generator=g)
    reference = RevMLP(40, 10, depth=3, hidden=64, seed=1)
    with torch.no_grad():
        logits, _, caches = reference.forward_with_features(x)
        for block in iter_block_directions(reference, caches, CrossEntropy().error(logits, y)):
            for k, v in block.items():
                reference.get_parameter(k).sub_(v, alpha=0.7 / reference.depth)
    GaussNewton(0.7).step(model, x, y, CrossEntropy())
    assert_bit_identical(reference.state_dict(), model)


def test_a_first_order_step_with_a_non_finite_gradient_changes_neither_model_nor_moments():
    model = MLP(5, 3, hidden=(4,), seed=0)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 5, generator=g), torch.randint(0, 3, (16,), generator=g)
    opt = Adam(1e-2)
    opt.setup(model, 16)
    opt.step(model, x, y, CrossEntropy())  # one good step: the moments are non-zero
    before, moments = state_of(model), json.dumps(opt.state_dict()["optimizer"]["state"], default=lambda t: t.tolist())
    handle = model.net[0].weight.register_hook(lambda grad: grad * float("nan"))  # finite loss, NaN gradient
    with pytest.raises(NonFiniteLossError, match="gradient of net.0.weight"):
        opt.step(model, x, y, CrossEntropy())
    handle.remove()
    assert_bit_identical(before, model)
    assert json.dumps(opt.state_dict()["optimizer"]["state"], default=lambda t: t.tolist()) == moments


def test_apply_step_is_all_or_nothing():
    model = MLP(5, 3, hidden=(4,), seed=0)
    direction = {k: torch.ones_like(p) for k, p in model.named_parameters()}
    direction["net.2.bias"][1] = float("inf")  # the last tensor: every other one would have been applied
    before = state_of(model)
    with pytest.raises(NonFiniteLossError, match="net.2.bias"):
        apply_step(model, direction, 0.1)
    assert_bit_identical(before, model)


# --------------------------------------------------------------------------- 2. divergence is never silent
def toy(n=32, d=20, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randint(0, classes, (n,), generator=g)


def test_divergence_on_the_last_step_raises_with_the_history_so_far():
    x, y = toy()
    with pytest.raises(NonFiniteLossError, match="evaluation at epoch 1, training set") as err:
        train(MLP(20, 3, hidden=(16,)), SGD(1e30), (x, y), epochs=1, progress=False)
    hist = err.value.history
    assert hist.epochs["epoch"] == [0] and np.isfinite(hist.epochs["train_loss"][0])
    assert len(hist.steps["loss"]) == 1  # the step itself was finite; its result was not


def test_nan_in_the_test_inputs_is_an_error_not_a_record():
    x, y = toy()
    xt, yt = toy(8, seed=1)
    xt[3, 0] = float("nan")
    with pytest.raises(NonFiniteLossError, match="test set"):
        train(MLP(20, 3, hidden=(16,)), SGD(0.1), (x, y), test_set=(xt, yt), epochs=1, progress=False)
    with pytest.raises(NonFiniteLossError):
        evaluate(MLP(20, 3, hidden=(16,)), xt, yt, CrossEntropy())


def test_a_non_finite_metric_is_an_error():
    x, y = toy()
    with pytest.raises(NonFiniteLossError, match="metric 'bad'"):
        train(MLP(20, 3, hidden=(16,)), SGD(0.1), (x, y), epochs=1, metrics={"bad": lambda m: float("nan")},
              progress=False)


def test_records_never_hold_nan(tmp_path):
    path = tmp_path / "rec.json"
    with pytest.raises(ValueError, match="rec.json.*NaN"):
        atomic_write_json(path, {"loss": float("nan")})
    assert not path.exists() and not list(tmp_path.iterdir())


def test_rate_selection_ranks_a_failed_rate_last_wherever_it_sits(tmp_path):
    spec = runs.RunSpec(runs.DataSpec("mnist", n_train=64, n_test=16), runs.ModelSpec("mlp", mlp_hidden=(16,)),
                        runs.OptimSpec("sgd"), epochs=1, evaluate=())
    for grid in ([1e30, 0.1], [0.1, 1e30]):
        recs = [runs.run(s, tmp_path) for s in gp.rate_grid(spec, grid)]
        diverged = next(r for r in recs if r.spec.optimizer.lr == 1e30)
        assert not diverged.ok and "NonFiniteLossError" in diverged.failure and diverged.metrics == {}
        assert runs.Record.load(runs.record_path(tmp_path, diverged.spec)).failure == diverged.failure
        sel = gp.select(recs, "train_loss")
        assert sel.lr == 0.1 and sel.scores[1e30] == -np.inf


# --------------------------------------------------------------------------- 3. bounded downloads, no litter
class _Server:
    """An HTTP server on loopback whose handler is given; stopped on exit."""

    def __init__(self, handler):
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/file.bin"

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def _sender(total: int, chunk: int, pause: float):
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(total))
            self.end_headers()
            try:
                for _ in range(total // chunk):
                    self.wfile.write(b"x" * chunk)
                    self.wfile.flush()
                    time.sleep(pause)
            except (BrokenPipeError, ConnectionResetError):
                pass

        def log_message(self, *args):
            pass
    return Handler


def _resource(monkeypatch, url: str, sha: str = "0" * 64) -> None:
    monkeypatch.setitem(download.RESOURCES, "test/file", download.Resource("test/file.bin", sha, (url,)))


def test_a_trickling_server_is_a_stall_not_a_hang(cache, monkeypatch):
    root, _ = cache
    _resource(monkeypatch, "")
    with _Server(_sender(1000, 1, 0.2)) as url:  # one byte every 0.2 s: no single read ever times out
        _resource(monkeypatch, url)
        t0 = time.monotonic()
        with pytest.raises(download.DataError, match="stalled"):
            download.fetch("test/file", stall_s=1.0)
        assert time.monotonic() - t0 < 5
    assert not list(root.rglob("*.partial"))


def test_a_download_has_an_overall_deadline(cache, monkeypatch):
    root, _ = cache
    with _Server(_sender(1 << 30, 1 << 16, 0.05)) as url:  # fast enough never to stall, too long to finish
        _resource(monkeypatch, url)
        t0 = time.monotonic()
        with pytest.raises(download.DataError, match="deadline"):
            download.fetch("test/file", deadline_s=1.0, stall_s=5.0)
        assert time.monotonic() - t0 < 5
    assert not list(root.rglob("*.partial"))


def test_a_silent_server_costs_one_stall_timeout(cache, monkeypatch):
    class Silent(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            time.sleep(5)

        def log_message(self, *args):
            pass

    with _Server(Silent) as url:
        _resource(monkeypatch, url)
        t0 = time.monotonic()
        with pytest.raises(download.DataError, match="timed out"):
            download.fetch("test/file", stall_s=0.5)
        assert time.monotonic() - t0 < 3


def test_bad_download_limits_are_named(cache, monkeypatch):
    _resource(monkeypatch, "http://127.0.0.1:9/none")
    monkeypatch.setenv(download.DEADLINE_VAR, "soon")
    with pytest.raises(ValueError, match="REVGN_DOWNLOAD_DEADLINE"):
        download.fetch("test/file")


KILLED_DOWNLOAD = """
import sys
from revgn import download
download.RESOURCES["test/file"] = download.Resource("test/file.bin", "0" * 64, (sys.argv[1],))
download.fetch("test/file", stall_s=60)
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_killed_download_leaves_no_partial_file_once_called_again(cache, monkeypatch, sig):
    root, _ = cache
    with _Server(_sender(1 << 30, 1 << 14, 0.05)) as url:
        proc = subprocess.Popen([sys.executable, "-c", KILLED_DOWNLOAD, url], cwd=ROOT,
                                env={**os.environ, download.ENV_VAR: str(root)})
        folder = root / "test"
        for _ in range(1200):  # up to a minute: importing torch in the child is slow on a loaded machine
            if list(folder.glob(".file.bin.*.partial")):
                break
            time.sleep(0.05)
        assert list(folder.glob(".file.bin.*.partial")), "the download never started"
        proc.send_signal(sig)
        assert proc.wait(timeout=20) == -sig  # the process ended by the signal, as it would have
    left = list(folder.glob(".file.bin.*.partial"))
    if sig == signal.SIGTERM:
        assert not left, "SIGTERM must remove the temporary file"
    else:  # SIGKILL cannot be caught: the next call cleans up what the dead process left
        assert left
        _resource(monkeypatch, "http://127.0.0.1:9/unreachable")
        with pytest.raises(download.DataError):
            download.fetch("test/file", stall_s=0.5)
        assert not list(folder.glob(".file.bin.*.partial"))


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_partials_of_dead_writers_are_removed_and_live_ones_kept(tmp_path):
    target = tmp_path / "run.ckpt"
    dead = tmp_path / f".run.ckpt.{_dead_pid()}.abc.partial"
    live = tmp_path / f".run.ckpt.{os.getppid()}.abc.partial"  # a process that runs (pytest's parent)
    other = tmp_path / f".other.{_dead_pid()}.abc.partial"
    for p in (dead, live, other):
        p.write_bytes(b"half")
    atomic_write_bytes(target, b"whole")
    assert target.read_bytes() == b"whole"
    assert not dead.exists() and live.exists() and other.exists()
    assert remove_stale_partials(tmp_path / "other") == [other]


# --------------------------------------------------------------------------- 4. corrupt files are named
def test_a_truncated_or_empty_record_is_named(tmp_path):
    spec = runs.RunSpec(runs.DataSpec("mnist", n_train=32, n_test=16), runs.ModelSpec("mlp", mlp_hidden=(8,)),
                        runs.OptimSpec("sgd", 0.1), epochs=1, evaluate=())
    path = runs.record_path(tmp_path, runs.run(spec, tmp_path).spec)
    text = path.read_text()
    for broken in (text[: len(text) // 2], ""):
        path.write_text(broken)
        with pytest.raises(ValueError, match=f"{path}.*(truncated|empty)"):
            runs.run(spec, tmp_path)
        with pytest.raises(ValueError, match=str(path)):
            runs.records(tmp_path)
    path.write_text(json.dumps({"something": "else"}))
    with pytest.raises(ValueError, match="not a run record"):
        runs.Record.load(path)
    path.write_text(text.replace('"schema": 2', '"schema": 1', 1))
    with pytest.raises(ValueError, match="schema 1"):
        runs.Record.load(path)


def _checkpointed_run(path):
    x, y = toy()
    model = MLP(20, 3, hidden=(16,), seed=0)
    train(model, SGD(0.1), (x, y), epochs=1, batch_size=8, checkpoint=path, progress=False)
    return model


def test_an_empty_checkpoint_is_named(tmp_path):
    path = tmp_path / "run.ckpt"
    path.write_bytes(b"")
    x, y = toy()
    with pytest.raises(ValueError, match=f"{path} is empty"):
        train(MLP(20, 3, hidden=(16,)), SGD(0.1), (x, y), epochs=2, batch_size=8, checkpoint=path, progress=False)


def test_a_checkpoint_with_a_flipped_byte_in_a_tensor_is_refused(tmp_path):
    path = tmp_path / "run.ckpt"
    model = _checkpointed_run(path)
    raw = bytearray(path.read_bytes())
    weight = model.net[0].weight.detach().numpy().tobytes()
    at = bytes(raw).find(weight)
    assert at > 0, "the weight's bytes are stored as they are"
    raw[at + 5] ^= 0x01  # one bit of one weight
    path.write_bytes(bytes(raw))
    x, y = toy()
    with pytest.raises(ValueError, match=f"{path}.*(corrupt|cannot be read)"):
        train(MLP(20, 3, hidden=(16,)), SGD(0.1), (x, y), epochs=2, batch_size=8, checkpoint=path, progress=False)


# --------------------------------------------------------------------------- 5. smaller ones
def test_re_extraction_never_deletes_a_users_file(cache, monkeypatch):
    root, remote = cache
    archive, members, _ = cifar_archive()
    serve(monkeypatch, remote, "cifar10/archive", "cifar-10/cifar-10-binary.tar.gz", archive)
    monkeypatch.setattr(download, "CIFAR10_MEMBERS", members)
    data.load("cifar10", "test")
    folder = root / download.CIFAR10_DIR
    mine = folder / "my_notes.txt"
    mine.write_text("mine")
    (folder / "test_batch.bin").unlink()  # forces a re-extraction
    data.load("cifar10", "test")
    assert mine.read_text() == "mine"
    assert (folder / "test_batch.bin").exists()


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(eval_train_size=-12), ValueError, "eval_train_size must be >= 1"),
    (dict(epochs=1.5), TypeError, "epochs must be an integer"),
    (dict(batch_size=8.0), TypeError, "batch_size must be an integer"),
    (dict(seed=True), TypeError, "seed must be an integer"),
])
def test_bad_training_arguments_are_named(kwargs, error, match):
    x, y = toy()
    with pytest.raises(error, match=match):
        train(MLP(20, 3, hidden=(16,)), SGD(0.1), (x, y), progress=False, **{"epochs": 1, **kwargs})


def test_a_fractional_subset_size_is_named(monkeypatch):
    with pytest.raises(TypeError, match="n must be an integer"):
        data.load("mnist", "test", n=10.5)


@pytest.mark.parametrize("lr", [np.float32(0.1), np.float64(0.1), torch.tensor(0.1)], ids=["np32", "np64", "tensor"])
def test_numpy_and_torch_scalars_are_learning_rates(lr):
    assert SGD(lr).lr == pytest.approx(0.1) and GaussNewton(lr).lr == pytest.approx(0.1)
