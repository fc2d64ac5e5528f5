"""Scoring one candidate: one BatchNorm recalibration (after compression) gives exactly what two gave,
the accuracy carries its standard error, and the whole validation split confirms a winner."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from autocomp.evaluate import EvalSettings, confirm, score, standard_error
from autocomp.space import Stage, get_space


@pytest.fixture(scope="module")
def cand():
    """A small compressed candidate of the default space (pruned, factorised, one int8 and one fp16 block)."""
    sp = get_space()
    c = sp.smallest()
    stages = list(c.stages)
    b0 = replace(stages[1].blocks[0], keep=0.5, rank=0.5, precision="int8")
    b1 = replace(stages[2].blocks[0], keep=0.75, precision="fp16")
    stages[1] = Stage(stages[1].width, (b0,) + stages[1].blocks[1:])
    stages[2] = Stage(stages[2].width, (b1,) + stages[2].blocks[1:])
    c = replace(c, stages=tuple(stages))
    sp.validate_candidate(c)
    return c


def test_one_recalibration_after_compression_scores_exactly_as_two(cand, mnist):
    """Pruning ranks channels by weight magnitude and low-rank reads weights only, so the statistics
    estimated right after extraction were overwritten unread: dropping that pass changes nothing."""
    sp = get_space()
    small = dict(weights="supernet", bn_images=128, val_size=500, calib_images=64)
    once = score(cand, sp, mnist, EvalSettings(**small))
    twice = score(cand, sp, mnist, EvalSettings(**small, bn_after_extract=True))
    assert once.accuracy == twice.accuracy and once.params == twice.params
    assert once.accuracy > 0.5  # the statistics were re-estimated (sliced supernet statistics score far worse)
    assert once.val_images == 500
    assert once.accuracy_se == pytest.approx(math.sqrt(once.accuracy * (1 - once.accuracy) / 500))

    # the layout changes nothing but speed
    nchw = score(cand, sp, mnist, EvalSettings(**small, channels_last=False))
    assert abs(nchw.accuracy - once.accuracy) <= 2 / 500

    # the winner is confirmed on the whole validation split, with a smaller standard error
    acc, se, n = confirm(once.onnx, mnist)
    assert n == len(mnist.val) > 500 and se < once.accuracy_se
    assert abs(acc - once.accuracy) < 5 * once.accuracy_se


def test_standard_error():
    assert standard_error(0.98, 2000) == pytest.approx(0.00313, abs=1e-5)
    assert standard_error(1.0, 100) == 0.0 and math.isnan(standard_error(0.5, 0))
