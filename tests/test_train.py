"""The one training loop: each optimiser does what it says, runs are reproducible, bad input is refused."""
from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from revgn.gn import gn_direction
from revgn.gn_optimizers import GaussNewton, MoorePenroseGaussNewton
from revgn.history import History
from revgn.losses import CrossEntropy, NonFiniteLossError, SquareLoss
from revgn.models import RevMLP
from revgn.optimizers import SGD, Adam
from revgn.pinv import Pinv
from revgn.train import train

F64 = torch.float64


def toy(n=64, d=10, classes=3, seed=0, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=dtype)
    y = (x[:, :classes] + 0.3 * torch.randn(n, classes, generator=g, dtype=dtype)).argmax(1)
    return x, y


def model(dtype=F64, **kw):
    return RevMLP(10, 3, depth=2, hidden=kw.pop("hidden", 48), init_std=kw.pop("init_std", 0.05), dtype=dtype,
                  seed=kw.pop("seed", 0), **kw)


def test_sgd_step_is_a_gradient_step_on_the_batch_mean_loss():
    x, y = toy()
    m = model()
    ref = copy.deepcopy(m)
    train(m, SGD(lr=0.3), (x, y), epochs=1, batch_size=64, loss="ce", progress=False)
    loss = CrossEntropy()(ref(x), y)
    grads = torch.autograd.grad(loss, list(ref.parameters()))
    for p, p0, g in zip(m.parameters(), ref.parameters(), grads):
        assert torch.allclose(p, p0 - 0.3 * g, atol=1e-14)


def test_gn_optimiser_takes_the_tractable_step():
    x, y = toy(n=32)
    m = model()
    ref = copy.deepcopy(m)
    train(m, GaussNewton(lr=0.5), (x, y), epochs=1, batch_size=32, loss="mse", progress=False)
    d = gn_direction(ref, x, SquareLoss().error(ref(x), y))
    for (k, p), p0 in zip(m.named_parameters(), ref.parameters()):
        assert torch.allclose(p, p0 - 0.5 * d[k], atol=1e-12)


@pytest.mark.parametrize("make_opt", [lambda: SGD(0.1, momentum=0.9), lambda: Adam(1e-2), lambda: GaussNewton(0.5)],
                         ids=["sgd", "adam", "gn"])
def test_every_optimiser_trains_and_runs_are_reproducible(make_opt):
    x, y = toy(n=128)
    xt, yt = toy(n=64, seed=1)
    # h = 4n: well-conditioned features (near h = n, exact GN can diverge; that regime is a chapter's topic).
    runs = [train(model(dtype=torch.float32, hidden=128), make_opt(), (x.float(), y), test_set=(xt.float(), yt),
                  epochs=4, batch_size=32, seed=7, track_batch_change=True, progress=False) for _ in range(2)]
    assert runs[0].to_dict() == runs[1].to_dict(), "same seed, same history"
    h = runs[0]
    assert h.epochs["epoch"] == [0, 1, 2, 3, 4] and len(h.steps["loss"]) == 16
    assert h.epochs["train_loss"][-1] < 0.8 * h.epochs["train_loss"][0]
    assert set(h.epochs) >= {"train_loss", "train_acc", "test_loss", "test_acc"}
    assert len(h.steps["loss_after"]) == 16


def test_matrix_free_gn_trains_a_non_reversible_model():
    x, y = toy(n=16)
    net = nn.Sequential(nn.Linear(10, 32), nn.Tanh(), nn.Linear(32, 3)).double()
    torch.manual_seed(0)
    h = train(net, MoorePenroseGaussNewton(lr=1.0, rtol=1e-10), (x, y), loss="mse", epochs=3, progress=False)
    assert h.epochs["train_loss"][-1] < 1e-3 * h.epochs["train_loss"][0]


def test_metrics_callbacks_and_history_round_trip(tmp_path):
    x, y = toy()
    m = model()
    h = train(m, Adam(1e-2), (x, y), epochs=2, batch_size=16, progress=False,
              metrics={"w_norm": lambda net: sum(p.norm() ** 2 for p in net.parameters()).sqrt()})
    assert len(h.epochs["w_norm"]) == 3
    d = json.loads(json.dumps(h.to_dict()))  # what records and checkpoints store
    assert History(d["steps"], d["epochs"], d["config"]).to_dict() == d


def test_continuing_a_history_counts_epochs_on():
    x, y = toy()
    m = model()
    h = train(m, SGD(0.1), (x, y), epochs=2, batch_size=16, progress=False)
    h = train(m, GaussNewton(0.1), (x, y), epochs=1, batch_size=16, progress=False, history=h)
    assert h.epochs["epoch"] == [0, 1, 2, 3]


@pytest.mark.parametrize("lr", [-0.1, 0.0, float("nan"), float("inf")])
def test_bad_learning_rates_are_refused(lr):
    for make in (SGD, Adam, GaussNewton):
        with pytest.raises(ValueError, match="learning rate"):
            make(lr)


def test_exact_gn_with_batch_wider_than_bottleneck_is_refused_before_training():
    x, y = toy(n=64)
    m = model(hidden=16)
    before = copy.deepcopy(m.state_dict())
    with pytest.raises(ValueError, match="n=32 > h=16"):
        train(m, GaussNewton(), (x, y), batch_size=32, progress=False)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items()), "nothing was changed"
    train(m, GaussNewton(pinv=Pinv.truncated()), (x, y), batch_size=32, progress=False)  # knowingly inexact


def test_nan_loss_stops_training_with_a_clear_error():
    x, y = toy()
    x[3, 2] = float("nan")
    for opt in (SGD(0.1), GaussNewton(0.1)):
        with pytest.raises(NonFiniteLossError, match="loss is nan"):
            train(model(), opt, (x, y), batch_size=32, progress=False)


def test_bad_shapes_and_sizes_are_refused():
    x, y = toy()
    with pytest.raises(ValueError, match="differ in length"):
        train(model(), SGD(0.1), (x, y[:-1]), progress=False)
    with pytest.raises(ValueError, match="batch_size must be in 1..64"):
        train(model(), SGD(0.1), (x, y), batch_size=65, progress=False)
    with pytest.raises(ValueError, match="unknown loss"):
        train(model(), SGD(0.1), (x, y), loss="hinge", progress=False)
    with pytest.raises(ValueError, match="labels must have shape"):
        SquareLoss()(torch.zeros(4, 3), torch.zeros(5, dtype=torch.long))
    with pytest.raises(TypeError, match="needs a RevMLP"):
        train(nn.Linear(10, 3), GaussNewton(), (x.float(), y), progress=False)


def test_sgd_decay_schedule_is_lr_over_one_plus_beta_t():
    x, y = toy(n=32)
    opt = SGD(0.4, decay=0.5)
    train(model(), opt, (x, y), epochs=3, batch_size=32, progress=False)
    assert opt._opt.param_groups[0]["lr"] == pytest.approx(0.4 / (1 + 0.5 * 3))
    with pytest.raises(ValueError, match="decay"):
        SGD(0.1, decay=-1)


def test_eval_every_and_callbacks():
    x, y = toy(n=32)
    seen = []
    h = train(model(), SGD(0.1), (x, y), epochs=7, eval_every=3, progress=False,
              callbacks=[lambda m, epoch: seen.append(epoch)])
    assert h.epochs["epoch"] == [0, 3, 6, 7] and seen == [0, 3, 6, 7]
    assert len(h.steps["loss"]) == 7
    with pytest.raises(ValueError, match="eval_every"):
        train(model(), SGD(0.1), (x, y), eval_every=0, progress=False)


def test_non_finite_check_sees_float64_overflow_of_float32():
    from revgn.losses import check_finite
    assert check_finite(torch.tensor(1e93, dtype=F64), "here") == 1e93  # finite in float64: not an error
    with pytest.raises(NonFiniteLossError):
        check_finite(torch.tensor(float("inf")), "here")


class Interrupt(Exception):
    pass


@pytest.mark.parametrize("make_opt", [lambda: Adam(1e-2), lambda: SGD(0.1, momentum=0.9, decay=0.01),
                                      lambda: GaussNewton(0.5, Pinv.noisy(0.1), seed=3)],
                         ids=["adam", "sgd-momentum-decay", "gn-noisy"])
def test_a_run_resumed_from_its_checkpoint_is_the_uninterrupted_run(tmp_path, make_opt):
    x, y = toy()
    kw = dict(loss="ce", epochs=4, batch_size=16, seed=5, progress=False, test_set=(x[:20], y[:20]))
    whole = model()
    ref = train(whole, make_opt(), (x, y), **kw)

    def crash_at_epoch_2(_, epoch):
        if epoch == 2:
            raise Interrupt

    ckpt = tmp_path / "run.ckpt"
    with pytest.raises(Interrupt):
        train(model(), make_opt(), (x, y), checkpoint=ckpt, callbacks=[crash_at_epoch_2], **kw)
    resumed_model = model()  # a fresh process: fresh network and optimiser, only the checkpoint survives
    resumed = train(resumed_model, make_opt(), (x, y), checkpoint=ckpt, **kw)
    assert resumed.steps == ref.steps and resumed.epochs == ref.epochs
    for p, q in zip(resumed_model.parameters(), whole.parameters()):
        assert torch.equal(p, q)
    # a finished checkpoint returns at once, with the same history and network
    again_model = model()
    again = train(again_model, make_opt(), (x, y), checkpoint=ckpt, **kw)
    assert again.epochs == ref.epochs and all(torch.equal(p, q) for p, q in zip(again_model.parameters(),
                                                                                 whole.parameters()))


def test_a_checkpoint_from_another_run_is_refused(tmp_path):
    x, y = toy()
    ckpt = tmp_path / "run.ckpt"
    train(model(), Adam(1e-2), (x, y), epochs=1, batch_size=16, progress=False, checkpoint=ckpt)
    before = ckpt.read_bytes()
    with pytest.raises(ValueError, match="another run"):
        train(model(), Adam(3e-2), (x, y), epochs=1, batch_size=16, progress=False, checkpoint=ckpt)
    with pytest.raises(ValueError, match="another run"):
        train(model(), Adam(1e-2), (x, y), epochs=2, batch_size=16, progress=False, checkpoint=ckpt)
    assert ckpt.read_bytes() == before
