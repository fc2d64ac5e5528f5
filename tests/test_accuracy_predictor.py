"""The APQ-style accuracy predictor and the apq controller (learning machinery on a known target)."""

import random

import numpy as np
from scipy.stats import spearmanr

from autocomp.predictor.accuracy import AccuracyPredictor
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
