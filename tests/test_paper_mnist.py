"""The paper's own MNIST experiment as run specs (`revgn.experiments.paper_mnist`), and the two endpoints and
the whole-curve rate choice of the fixed-horizon protocol (`gn_protocol`)."""
from __future__ import annotations

import pytest

from revgn.experiments import gn_protocol as gp
from revgn.experiments import paper_mnist as pm
from revgn.runs import Record
from revgn.train import History


def test_the_paper_rate_grid_is_the_papers_setting_paired_by_seed():
    grid = pm.paper_rates()
    specs = [s for s in grid.specs if s != pm.refused_by_matrix_rank()]
    assert len(specs) == 15 and [s.seed for s in specs] == [s for s in pm.SEEDS for _ in pm.METHODS]
    for s in specs:
        assert (s.data.n_train, s.data.n_val, s.data.n_test, s.data.subset_seed) == (55_000, 5_000, None, 0)
        assert (s.model.depth, s.model.hidden, s.model.init_std, s.model.seed) == (2, 8000, 1e-3, s.seed)
        assert (s.batch_size, s.epochs, s.patience, s.until_train_loss) == (1024, 100, 0, 0.0)
        assert s.optimizer.lr == pm.PAPER_RATES[s.optimizer.name] and s.track_batch_change
        assert s.eval_train_size >= 10_000 and set(s.measure) >= {"ntk_similarity", "cka", "weight_cosine"}
    gn = [s for s in specs if s.optimizer.name == "gn"]
    assert {s.optimizer.rank_rule for s in gn} == {"rounding"}
    assert pm.refused_by_matrix_rank().optimizer.rank_rule == "matrix_rank"
    with pytest.raises(ValueError, match="method must be one of"):
        pm.spec("lbfgs", 0)


def _rec(spec, val_acc, test_acc) -> Record:
    h = History()
    for e, (v, t) in enumerate(zip(val_acc, test_acc)):
        h.log(h.epochs, epoch=e, val_acc=v, test_acc=t, train_loss=1.0 / (e + 1))
    return Record(spec, h, {"val_acc": val_acc[-1], "test_acc": test_acc[-1], "train_loss": 1.0 / len(val_acc)}, {})


def test_the_endpoints_score_a_run_at_its_end_or_at_its_own_validation_peak():
    rec = _rec(pm.spec("adam", 0), [0.1, 0.9, 0.95, 0.95, 0.93], [0.1, 0.88, 0.94, 0.96, 0.92])
    assert gp.best_val_index(rec) == 2, "the first evaluation at the peak"
    assert gp.at_endpoint(rec, "test_acc", "end") == 0.92 and gp.at_endpoint(rec, "test_acc", "best_val") == 0.94
    assert gp.score(rec, "peak_val_acc") == 0.95 and gp.score(rec, "val_acc") == 0.93
    with pytest.raises(ValueError, match="endpoint"):
        gp.at_endpoint(rec, "test_acc", "stop")
    a = [_rec(pm.spec("gn", s), [0.5, 0.9], [0.5, 0.9 + s / 100]) for s in range(5)]
    b = [_rec(pm.spec("adam", s), [0.5, 0.9], [0.5, 0.9]) for s in range(5)]
    assert gp.compare(a, b, endpoint="best_val").n == 5 and gp.compare(a, b).mean == pytest.approx(0.02)


def test_the_tuned_tier_chooses_on_seed_0_by_the_whole_curve_and_probes_past_a_binding_cap():
    store = {}
    records_of = lambda specs: [store.get(s.key) for s in specs]
    needed, chosen = pm.tuned_walk(records_of)
    assert {(s.optimizer.name, s.optimizer.lr) for s in needed} == \
        {("gn", 0.3), ("gn", 1.0), ("adam", 1e-4), ("adam", 3e-4), ("adam", 1e-3)}
    assert {s.seed for s in needed} == {0} and {s.model.hidden for s in needed} == {pm.TUNED_HIDDEN}
    peak = {("gn", 0.3): 0.95, ("gn", 1.0): 0.96, ("gn", 2.0): 0.97, ("adam", 1e-4): 0.96, ("adam", 3e-4): 0.98,
            ("adam", 1e-3): 0.97}
    for _ in range(4):  # record what the walk asks for, until it asks for nothing new
        for s in needed:
            if s.key not in store:
                p = peak.get((s.optimizer.name, s.optimizer.lr), 0.9)
                store[s.key] = _rec(s, [0.5, p, 0.9], [0.5, p, 0.9])  # every run ends at 0.9: only the peak decides
        needed, chosen = pm.tuned_walk(records_of)
    assert chosen["adam"][0].lr == 3e-4 and chosen["gn"][0].lr == 2.0 and chosen["gn"][0].capped
    assert any(s.optimizer.lr == pm.BEYOND_CAP and s.seed == 0 for s in needed), "the cap is probed"
    assert {s.seed for s in needed if s.optimizer.name == "gn" and s.optimizer.lr == 2.0} == set(pm.SEEDS)
