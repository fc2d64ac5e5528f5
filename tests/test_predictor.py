"""Latency predictor: analytic features agree with the built models, train/save/load/eval round trip
on a real measurement table, no pickle, host check, transfer calibration."""

from __future__ import annotations

import json
import pickle
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from autocomp.errors import UserError
from autocomp.predictor.campaign import read_table, table_path
from autocomp.predictor import check_host, load_predictor
from autocomp.predictor.features import analyse, group_features, network_feature_names, network_features
from autocomp.predictor.model import META_NAME, MODEL_NAME, Predictor, candidates_of, fit, metrics
from autocomp.space import get_space

SPACE = get_space("mnist-mbv2")
SHIPPED = table_path("cpu-ort")


def test_features_match_the_compressed_model():
    import torch

    from autocomp.compress import lowrank, prune
    from autocomp.models.mbv2 import build

    torch.set_num_threads(1)
    rng = random.Random(3)
    cands = [SPACE.sample(rng) for _ in range(3)] + [SPACE.smallest("int8")]
    acc = analyse(cands, SPACE)
    for i, c in enumerate(cands):
        model = lowrank.apply(prune.apply(build(c, SPACE), c), c)
        weights = sum(p.numel() for p in model.parameters() if p.dim() > 1)
        assert int(acc.params[i].sum()) == weights  # conv/linear weights after pruning + low-rank
        macs = 0

        def hook(m, _i, out):
            nonlocal macs
            macs += out.numel() * (m.weight[0].numel())

        hs = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
        with torch.no_grad():
            model.eval()(torch.zeros(1, 1, 28, 28))
        for h in hs:
            h.remove()
        assert acc.macs[i].sum() == pytest.approx(macs, rel=1e-9)
    x = network_features(cands, SPACE)
    assert x.shape == (len(cands), len(network_feature_names(SPACE))) and np.isfinite(x).all()
    # precision split: an all-int8 candidate has all its MACs in the int8 columns
    assert acc.macs[-1, 2].sum() == pytest.approx(acc.macs[-1].sum())


def test_slot_table_equals_the_direct_analysis():
    """The per-slot lookup table (the fast path) gives exactly the directly computed analysis, on the
    default space and on a restricted one; an off-space gene falls back to the direct computation."""
    import dataclasses

    from autocomp.predictor.features import block_arrays

    rng = random.Random(11)
    for space in (SPACE, SPACE.restrict_precisions(["fp32", "int8"])):
        cands = [space.sample(rng) for _ in range(400)] + [space.largest(), space.smallest()]
        fast, direct = analyse(cands, space), analyse(cands, space, direct=True)
        np.testing.assert_allclose(fast.v, direct.v, rtol=1e-12, atol=1e-9)
    # a kernel the space does not offer: no table row, the direct path still scores it
    c = SPACE.largest()
    odd = dataclasses.replace(c, stages=(dataclasses.replace(c.stages[0], blocks=(dataclasses.replace(c.stages[0].blocks[0], kernel=9),)
                                                             + c.stages[0].blocks[1:]),) + c.stages[1:])
    a = block_arrays([odd], SPACE)
    assert a["kernel"][0, 0] == 9
    got = analyse([odd], SPACE).dw_macs_k.sum()
    assert got == pytest.approx(analyse([odd], SPACE, direct=True).dw_macs_k.sum())
    assert analyse([odd], SPACE).macs.sum() > analyse([c], SPACE).macs.sum()  # 9x9 > 7x7 depthwise


def _small_table() -> pd.DataFrame:
    if not SHIPPED.exists():
        pytest.skip("no shipped cpu-ort measurement table")
    df = read_table(SHIPPED)
    assert len(df) >= 40
    return df.sort_values(["seed", "index"]).head(80).reset_index(drop=True)


def test_selection_prefers_the_cheaper_model_within_the_tie():
    """A latency that *is* additive over layer groups: the tree-free sum model scores within the tie
    of the best CV RMSPE and is chosen; the grid sizes are all scored."""
    from autocomp.predictor.model import select

    cands = candidates_of(_small_table())
    g, x = group_features(cands, SPACE), network_features(cands, SPACE)
    coef = np.abs(np.random.default_rng(0).standard_normal(g.shape[1])) + 0.1
    y = g @ coef
    kind, rounds, _, scores = select(g, x, y, ("sum", "sum+gbm"), folds=3, grid=((20, 0.2), (40, 0.1)))
    assert set(scores) == {"sum", "sum+gbm@20", "sum+gbm@40"}
    assert kind == "sum" and rounds == 0 and scores["sum"]["rmspe"] < 1e-6


def test_train_save_load_eval_round_trip(tmp_path, monkeypatch):
    df = _small_table()
    pred, report = fit(df, kinds=("sum", "sum+gbm"), max_train=60, folds=3, rounds=60)
    assert report["kind"] in ("sum", "sum+gbm") and set(report["selection"]) == {"sum", "sum+gbm@60"}
    assert pred.meta["n_train"] <= 60 and pred.meta["backend"] == "onnxruntime" and pred.meta["cpu_model"]
    out = tmp_path / "cpu-ort"
    pred.save(out)
    meta = json.loads((out / META_NAME).read_text())
    assert meta["schema_version"] == 1 and meta["meta"]["backend_version"]
    if pred.booster is not None:
        assert (out / MODEL_NAME).read_text().startswith("tree")  # LightGBM text format

    def no_pickle(*a, **k):
        raise AssertionError("pickle used while loading a predictor")

    monkeypatch.setattr(pickle, "load", no_pickle)
    monkeypatch.setattr(pickle, "loads", no_pickle)
    loaded = load_predictor("cpu-ort", tmp_path)
    assert isinstance(loaded, Predictor)
    cands = candidates_of(df)
    np.testing.assert_allclose(loaded.predict(cands), pred.predict(cands), rtol=1e-9)
    p = loaded.predict(cands)
    assert p.shape == (len(df),) and (p > 0).all()
    # the CLI round trip: train + eval --json on the same folder layout
    from typer.testing import CliRunner

    from autocomp.predictor.cli import app

    (tmp_path / "cpu-ort" / "measurements.parquet").write_bytes(SHIPPED.read_bytes())
    r = CliRunner().invoke(app, ["train", "--root", str(tmp_path), "--max-train", "60", "--kind", "sum"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["eval", "--root", str(tmp_path), "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.output.strip().splitlines()[-1])
    for k in ("within_10pct", "spearman", "rmspe", "n_test", "kendall", "within_5pct"):
        assert k in res
    assert res["n_test"] > 0


def test_no_predictor_and_corrupt_artifacts(tmp_path):
    assert load_predictor("no-such-device", tmp_path) is None
    d = tmp_path / "broken"
    d.mkdir()
    (d / META_NAME).write_text("{not json")
    with pytest.raises(UserError, match="predictor.json"):
        load_predictor("broken", tmp_path)
    (d / META_NAME).write_text(json.dumps({"schema_version": 99}))
    with pytest.raises(UserError, match="schema_version"):
        load_predictor("broken", tmp_path)


def test_shipped_predictor_loads_and_scores_fast():
    pred = load_predictor("cpu-ort")
    if pred is None:
        pytest.skip("no shipped cpu-ort predictor")
    for k in ("host", "cpu_model", "backend_version", "n_train"):
        assert pred.meta.get(k) is not None
    rng = random.Random(0)
    cands = [SPACE.sample(rng) for _ in range(2000)]
    ms = pred.predict(cands)
    assert ms.shape == (2000,) and np.isfinite(ms).all() and (ms > 0).all()
    small, large = pred.predict([SPACE.smallest(), SPACE.largest()])
    assert small < large


def test_check_host(monkeypatch):
    import onnxruntime

    from autocomp.predictor import campaign

    pred = Predictor("sum", SPACE, {"backend": "onnxruntime", "cpu_model": campaign.cpu_model(),
                                    "backend_version": onnxruntime.__version__, "device": "cpu-ort"},
                     coef=np.zeros(len(group_features([SPACE.smallest()], SPACE)[0])))
    assert check_host(pred) is None
    pred.meta["cpu_model"] = "Some Other CPU"
    msg = check_host(pred)
    assert msg and "Some Other CPU" in msg and "--calibrate" in msg
    pred.meta.update(cpu_model=campaign.cpu_model(), backend_version="0.0.1")
    assert "ONNX Runtime" in check_host(pred)
    pred.meta["backend"] = "trtexec"  # remote device: nothing to compare here
    assert check_host(pred) is None


def test_transfer_recalibration_recovers_a_new_device():
    from autocomp.predictor.transfer import adapt

    rng = random.Random(1)
    cands = [SPACE.sample(rng) for _ in range(60)]
    g = group_features(cands, SPACE)
    coef = np.abs(np.random.default_rng(0).normal(size=g.shape[1])) * 0.01
    src = Predictor("sum", SPACE, {"device": "a"}, coef=coef)
    base = src.predict(cands)
    new = 3.0 * base ** 1.2 * np.exp(np.random.default_rng(1).normal(0, 0.02, len(base)))  # the "new device"
    adapted = adapt(src, cands[:20], new[:20], "loglinear", device="b")
    m = metrics(adapted.predict(cands[20:]), new[20:])
    assert m["within_10pct"] > 0.9 and m["spearman"] > 0.95
    assert adapted.meta["n_adapt"] == 20 and adapted.calibration["b"] == pytest.approx(1.2, abs=0.05)
    # the calibration survives save/load
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        adapted.save(Path(tmp) / "b")
        again = load_predictor("b", tmp)
        np.testing.assert_allclose(again.predict(cands), adapted.predict(cands))


def test_batched_features_equal_one_at_a_time():
    """The analysis is vectorised over candidates and block slots: a batch gives every candidate the
    same features as scoring it alone (no cross-talk between rows), across depths and precisions."""
    rng = random.Random(11)
    cands = [SPACE.sample(rng) for _ in range(40)] + [SPACE.smallest("int8"), SPACE.largest("fp16"), SPACE.largest("fp32")]
    batch = network_features(cands, SPACE)
    single = np.concatenate([network_features([c], SPACE) for c in cands])
    assert np.array_equal(batch, single)
    assert len({tuple(r) for r in batch}) == len({c.id for c in cands})  # distinct candidates, distinct rows
