"""The APQ-style accuracy predictor and the apq controller (learning machinery on a known target)."""

import random

import numpy as np
from scipy.stats import spearmanr

from autocomp.predictor.accuracy import AccuracyPredictor, layer_features
from autocomp.search import get_controller
from autocomp.space import get_space


def proxy_accuracy(c) -> float:
    """A known, nonlinear function of the genes standing in for accuracy in these mechanics tests."""
    blocks = [b for s in c.stages for b in s.blocks]
    cap = sum(b.expand * b.keep * (0.6 + 0.4 * b.rank) * (0.97 if b.precision == "int8" else 1.0) for b in blocks)
    return 1.0 - 0.2 / (1.0 + cap / 4.0)


def test_fits_and_ranks_held_out_candidates(tmp_path):
    space = get_space()
    rng = random.Random(0)
    cands = [space.sample(rng) for _ in range(240)]
    accs = [proxy_accuracy(c) for c in cands]
    model = AccuracyPredictor(space).fit(cands[:180], accs[:180])
    pred = model.predict(cands[180:])
    assert spearmanr(pred, accs[180:]).statistic > 0.8
    loaded = AccuracyPredictor.load(model.save(tmp_path), space)
    assert np.allclose(loaded.predict(cands[180:]), pred)


def test_apq_controller_is_deterministic_and_prefers_predicted_best():
    space = get_space()

    def run(seed):
        ctl = get_controller("apq", space, seed)
        ids = []
        for _ in range(5):
            batch = []
            while (c := ctl.ask()) is not None:
                batch.append((ctl.asked - 1, c))
            for trial, c in batch:
                ctl.tell(c, {"status": "ok", "accuracy": proxy_accuracy(c), "trial": trial})
                ids.append(c.id)
        return ids, ctl

    ids_a, ctl = run(3)
    ids_b, _ = run(3)
    assert ids_a == ids_b and len(set(ids_a)) == len(ids_a) == 20
    first = [proxy_accuracy(c) for c, _ in ctl.history[:4]]  # random generation
    last = [proxy_accuracy(c) for c, _ in ctl.history[-4:]]  # predictor-ranked
    assert np.mean(last) > np.mean(first)


def _with_block(c, **change):
    """``c`` with its first prunable block's genes changed (its precision, keep or rank)."""
    import dataclasses

    stages = list(c.stages)
    for si, st in enumerate(stages):
        for bi, b in enumerate(st.blocks):
            if b.expand != 1:
                blocks = list(st.blocks)
                blocks[bi] = dataclasses.replace(b, **change)
                stages[si] = dataclasses.replace(st, blocks=tuple(blocks))
                return dataclasses.replace(c, stages=tuple(stages))
    raise AssertionError("no prunable block")


def test_features_see_each_layers_precision_keep_and_rank():
    space = get_space()
    base = space.largest()  # fp32, keep 1, rank 1 everywhere
    model = AccuracyPredictor(space)
    extra = lambda c: np.asarray(layer_features(space, c))  # noqa: E731  (beyond the raw genes of space.encode)
    f0 = extra(base)
    for change in ({"precision": "int8"}, {"precision": "fp16"}, {"keep": 0.25}, {"rank": 0.25}):
        f1 = extra(_with_block(base, **change))
        assert f1.shape == f0.shape and not np.allclose(f1, f0), change
    # int8 shrinks the stored bits but not the parameters; pruning shrinks both
    i8, pruned = _with_block(base, precision="int8"), _with_block(base, keep=0.25)
    names = {"log_params_arch": 0, "log_params": 2, "log_bits": 6}  # positions in layer_features
    sz = {n: {k: extra(c)[i] for k, i in names.items()} for n, c in (("base", base), ("int8", i8), ("pruned", pruned))}
    assert sz["int8"]["log_params"] == sz["base"]["log_params"] and sz["int8"]["log_bits"] < sz["base"]["log_bits"]
    assert sz["pruned"]["log_params"] < sz["base"]["log_params"] and sz["pruned"]["log_params_arch"] == sz["base"]["log_params_arch"]
    assert model.features([base]).shape[1] == len(space.encode(base)) + len(f0)


def test_shipped_predictor_loads_without_pickle(monkeypatch):
    import pickle

    from autocomp.predictor.accuracy import default_accuracy_predictor
    from autocomp.resources import data_dir

    def refuse(*a, **k):
        raise AssertionError("the accuracy predictor must not unpickle")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    space = get_space()
    d = data_dir("supernets") / f"{space.name}.accuracy"
    assert sorted(p.name for p in d.iterdir()) == ["accuracy_model.txt", "accuracy_predictor.json"]
    pred = default_accuracy_predictor(space)
    rng = random.Random(1)
    cands = [space.sample(rng) for _ in range(20)]
    acc = pred.predict(cands)
    assert acc.shape == (20,) and np.all((acc > 0.0) & (acc <= 1.0)) and np.ptp(acc) > 0
