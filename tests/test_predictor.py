"""Latency predictor: analytic features agree with the built models, train/save/load/eval round trip
on a real measurement table (per device fingerprint), no pickle, fingerprint matching, transfer calibration."""

from __future__ import annotations

import json
import pickle
import random

import numpy as np
import pandas as pd
import pytest

from autocomp.errors import UserError
from autocomp.predictor.campaign import read_table, table_path
from autocomp.predictor import find_predictor, load_predictor, predictor_dir, predictor_dirs
from autocomp.predictor.features import analyse, group_features, network_feature_names, network_features
from autocomp.predictor.model import META_NAME, MODEL_NAME, Predictor, candidates_of, fit, metrics
from autocomp.space import get_space

SPACE = get_space("mnist-mbv2")
# the shipped table and predictor of the AVX2 host the project started on (one folder per fingerprint)
AVX2_HOST = "amd-epyc-avx2-onnxruntime1.32.0-t1b1-31c78365"
SHIPPED = table_path("cpu-ort", AVX2_HOST)


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
    fid = SHIPPED.parent.name  # the table's folder is its fingerprint id
    assert set(df["fingerprint_id"]) == {fid}
    pred, report = fit(df, kinds=("sum", "sum+gbm"), max_train=60, folds=3, rounds=60)
    assert report["kind"] in ("sum", "sum+gbm") and set(report["selection"]) == {"sum", "sum+gbm@60"}
    assert pred.meta["n_train"] <= 60 and pred.meta["backend"] == "onnxruntime" and pred.meta["cpu_model"]
    assert pred.fingerprint_id == fid and pred.fingerprint["backend"] == "onnxruntime"
    out = predictor_dir("cpu-ort", fid, tmp_path)
    assert out == tmp_path / "cpu-ort" / fid
    pred.save(out)
    meta = json.loads((out / META_NAME).read_text())
    assert meta["schema_version"] == 1 and meta["meta"]["backend_version"] and meta["meta"]["fingerprint_id"] == fid
    if pred.booster is not None:
        assert (out / MODEL_NAME).read_text().startswith("tree")  # LightGBM text format

    def no_pickle(*a, **k):
        raise AssertionError("pickle used while loading a predictor")

    monkeypatch.setattr(pickle, "load", no_pickle)
    monkeypatch.setattr(pickle, "loads", no_pickle)
    loaded = load_predictor("cpu-ort", root=tmp_path)  # the only fingerprint there
    assert isinstance(loaded, Predictor) and loaded.fingerprint_id == fid
    assert load_predictor("cpu-ort", fid, tmp_path).fingerprint_id == fid
    assert load_predictor("cpu-ort", "another-fingerprint-00000000", tmp_path) is None
    assert find_predictor("cpu-ort", pred.fingerprint, [tmp_path]).fingerprint_id == fid
    cands = candidates_of(df)
    np.testing.assert_allclose(loaded.predict(cands), pred.predict(cands), rtol=1e-9)
    p = loaded.predict(cands)
    assert p.shape == (len(df),) and (p > 0).all()
    # the CLI round trip: train + eval --json on the same folder layout
    from typer.testing import CliRunner

    from autocomp.predictor.cli import app

    table_path("cpu-ort", fid, tmp_path).write_bytes(SHIPPED.read_bytes())
    r = CliRunner().invoke(app, ["train", "--root", str(tmp_path), "--max-train", "60", "--kind", "sum"])
    assert r.exit_code == 0, r.output
    assert json.loads((out / META_NAME).read_text())["kind"] == "sum"  # saved beside its table
    r = CliRunner().invoke(app, ["eval", "--root", str(tmp_path), "--json", "--fingerprint", fid])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)  # --json: stdout holds the JSON document alone
    for k in ("within_10pct", "spearman", "rmspe", "n_test", "kendall", "within_5pct"):
        assert k in res
    assert res["n_test"] > 0 and res["kind"] == "sum"
    # two fingerprints measured: the default is this machine's, and an unknown one is a UserError
    table_path("cpu-ort", "other-host-11111111", tmp_path).parent.mkdir()
    table_path("cpu-ort", "other-host-11111111", tmp_path).write_bytes(SHIPPED.read_bytes())
    r = CliRunner().invoke(app, ["eval", "--root", str(tmp_path), "--json", "--fingerprint", "nope-22222222"])
    assert isinstance(r.exception, UserError) and "--fingerprint" in str(r.exception) and fid in str(r.exception)
    (tmp_path / "cpu-ort" / "other-host-11111111" / META_NAME).write_text((out / META_NAME).read_text())
    with pytest.raises(UserError, match="--fingerprint"):  # several predictors: which one must be said
        load_predictor("cpu-ort", root=tmp_path)


def test_no_predictor_and_corrupt_artifacts(tmp_path):
    assert load_predictor("no-such-device", root=tmp_path) is None
    assert load_predictor("no-such-device", "some-fingerprint-00000000", tmp_path) is None
    d = predictor_dir("broken", "some-fingerprint-00000000", tmp_path)
    d.mkdir(parents=True)
    (d / META_NAME).write_text("{not json")
    assert predictor_dirs("broken", [tmp_path]) == [d]
    with pytest.raises(UserError, match="predictor.json"):
        load_predictor("broken", root=tmp_path)
    (d / META_NAME).write_text(json.dumps({"schema_version": 99}))
    with pytest.raises(UserError, match="schema_version"):
        load_predictor("broken", "some-fingerprint-00000000", tmp_path)


def test_shipped_predictor_loads_and_scores_fast():
    pred = load_predictor("cpu-ort", AVX2_HOST)
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


def test_shipped_predictor_sits_in_its_fingerprint_folder():
    dirs = predictor_dirs("cpu-ort", [SHIPPED.parents[2]])
    if not dirs:
        pytest.skip("no shipped cpu-ort predictor")
    from autocomp.measure.fingerprint import KEYS, fingerprint_id

    for d in dirs:
        pred = Predictor.load(d)
        assert pred.fingerprint_id == d.name == fingerprint_id(pred.fingerprint)
        assert all(pred.fingerprint.get(k) is not None for k in KEYS["onnxruntime"])  # a complete fingerprint
        assert (d / "measurements.parquet").exists()  # beside the table it was fit on


def test_a_predictor_is_found_only_for_its_own_fingerprint(tmp_path):
    """What replaced the host check: a predictor is used only on exactly the fingerprint it was
    measured on (CPU, ISA, runtime version, threads, batch); anything else is another device."""
    from autocomp.measure import get_device
    from autocomp.measure.fingerprint import differences, fingerprint_id

    here = get_device("cpu-ort").fingerprint()
    pred = Predictor("sum", SPACE, {"device": "cpu-ort", "fingerprint": here, "fingerprint_id": fingerprint_id(here)},
                     coef=np.ones(len(group_features([SPACE.smallest()], SPACE)[0])))
    pred.save(predictor_dir("cpu-ort", fingerprint_id(here), tmp_path))
    assert find_predictor("cpu-ort", here, [tmp_path]).fingerprint_id == fingerprint_id(here)
    assert find_predictor("cpu-ort-b8", here, [tmp_path]) is None  # another device's folder
    for change in ({"cpu_model": "Some Other CPU"}, {"backend_version": "0.0.1"}, {"threads": 4}, {"batch": 8},
                   {"isa": ["avx2", "fma"]}, {"cpu_id": "0.0.0"}, {"caches": "L1d 1K"}):
        other = {**here, **change}
        assert find_predictor("cpu-ort", other, [tmp_path]) is None, change
        diff = differences(other, here)
        assert len(diff) == 1 and diff[0].startswith(next(iter(change)) + ":"), diff
    assert "Some Other CPU" in differences({**here, "cpu_model": "Some Other CPU"}, here)[0]
    assert differences(here, dict(here)) == []
    # one fingerprint, two spaces: each space finds its own predictor, side by side (a calibration
    # of a user's network never replaces the default space's)
    fbnet = get_space("fbnet-224")
    other = Predictor("sum", fbnet, {**pred.meta}, coef=2 * pred.coef)
    folder = predictor_dir("cpu-ort", fingerprint_id(here), tmp_path, fbnet.name)
    other.save(folder)
    assert folder == tmp_path / "spaces" / "fbnet-224" / "cpu-ort" / fingerprint_id(here)
    assert find_predictor("cpu-ort", here, [tmp_path], fbnet.name).space.name == "fbnet-224"
    assert find_predictor("cpu-ort", here, [tmp_path]).space.name == SPACE.name
    assert find_predictor("cpu-ort", here, [tmp_path], SPACE.name).space.name == SPACE.name
    # a cache written before tables were per space holds another space's predictor where the default
    # space's goes: it is passed over for the next root's (the shipped one), never used for this space
    stale = tmp_path / "stale"
    other.save(predictor_dir("cpu-ort", fingerprint_id(here), stale))
    assert find_predictor("cpu-ort", here, [stale]) is None
    assert find_predictor("cpu-ort", here, [stale, tmp_path]).space.name == SPACE.name


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
        adapted.save(predictor_dir("b", "fp-b-00000000", tmp))
        again = load_predictor("b", root=tmp)
        np.testing.assert_allclose(again.predict(cands), adapted.predict(cands))


def test_ridge_adaptation_learns_a_per_precision_change():
    """A device whose int8 kernels are 3x faster and fp16 1.5x slower than the source's, everything else
    equal: 20 measurements are enough for ``ridge`` (precision factors, then the ridge) to predict the
    rest within 10 %, where a single log-linear correction cannot."""
    from autocomp.predictor.features import group_feature_names
    from autocomp.predictor.transfer import adapt

    rng = random.Random(2)
    cands = [SPACE.sample(rng) for _ in range(80)]
    g = group_features(cands, SPACE)
    coef = np.abs(np.random.default_rng(0).normal(size=g.shape[1])) * 0.01
    names = group_feature_names()
    factor = np.array([1 / 3 if ("_int8_" in n or n in ("qdq_elems", "int8_weights")) else 1.5 if "_fp16_" in n else 1.0
                       for n in names])
    src = Predictor("sum", SPACE, {"device": "a"}, coef=coef)
    new = (g @ (coef * factor)) * np.exp(np.random.default_rng(1).normal(0, 0.01, len(cands)))
    scores = {}
    for method in ("loglinear", "ridge"):
        adapted = adapt(src, cands[:20], new[:20], method, device="b")
        scores[method] = metrics(adapted.predict(cands[20:]), new[20:])
    assert scores["ridge"]["within_10pct"] >= 0.95 and scores["ridge"]["spearman"] > 0.98
    assert scores["loglinear"]["within_10pct"] < scores["ridge"]["within_10pct"] - 0.2


def test_batched_features_equal_one_at_a_time():
    """The analysis is vectorised over candidates and block slots: a batch gives every candidate the
    same features as scoring it alone (no cross-talk between rows), across depths and precisions."""
    rng = random.Random(11)
    cands = [SPACE.sample(rng) for _ in range(40)] + [SPACE.smallest("int8"), SPACE.largest("fp16"), SPACE.largest("fp32")]
    batch = network_features(cands, SPACE)
    single = np.concatenate([network_features([c], SPACE) for c in cands])
    assert np.array_equal(batch, single)
    assert len({tuple(r) for r in batch}) == len({c.id for c in cands})  # distinct candidates, distinct rows


@pytest.mark.parametrize("block", [8, 16])
def test_padding_macs_follow_the_hosts_simd_block(block):
    """A conv whose channel counts are not multiples of the host's SIMD block runs as if padded up to
    it: ``pad_macs`` counts those extra MACs per (precision, kind), zero where every count fits."""
    from autocomp.families import Layer
    from autocomp.predictor.features import table_acc

    up = lambda c: -(-c // block) * block  # noqa: E731
    pw = Layer("conv", "pw", 20, 32, 1, 1, 1, 49.0, 49.0, "int8", 0, "blocks.0")
    dw = Layer("conv", "dw", 36, 36, 3, 1, 36, 49.0, 49.0, "fp32", 0, "blocks.0")
    fits = Layer("conv", "pw", 32, 64, 1, 1, 1, 49.0, 49.0, "fp16", 0, "blocks.1")
    acc = table_acc([[pw, dw, fits], [fits]], 1, block)
    assert acc.pad_macs[0, 2, 1] == (up(20) - 20) * 32 * 49  # int8 pointwise: input channels 20 -> 24 or 32
    assert acc.pad_macs[0, 0, 2] == (up(36) - 36) * 9 * 49  # fp32 depthwise: 36 channels -> 40 or 48
    assert acc.pad_macs[1].sum() == 0 and acc.pad_macs[0, 1].sum() == 0  # the fp16 conv fits the block


def test_an_older_predictor_loads_by_feature_name(tmp_path):
    """A predictor fit before a feature existed loads with a zero cost for it and predicts what it did;
    one naming a feature this version does not know is refused with one line."""
    from autocomp.predictor.features import group_feature_names

    rng = random.Random(4)
    cands = [SPACE.sample(rng) for _ in range(20)]
    names = group_feature_names()
    old = [i for i, n in enumerate(names) if not n.startswith("pad_macs_")]
    coef = np.abs(np.random.default_rng(0).normal(size=len(names))) * 0.01
    coef[[i for i in range(len(names)) if i not in old]] = 0.0
    pred = Predictor("sum", SPACE, {"device": "x"}, coef=coef)
    pred.save(tmp_path)
    d = json.loads((tmp_path / META_NAME).read_text())
    d["group_features"], d["coef"] = [names[i] for i in old], [d["coef"][i] for i in old]
    (tmp_path / META_NAME).write_text(json.dumps(d))
    np.testing.assert_allclose(Predictor.load(tmp_path).predict(cands), pred.predict(cands), rtol=1e-12)
    d["group_features"][0] = "macs_fp64_pw"
    (tmp_path / META_NAME).write_text(json.dumps(d))
    with pytest.raises(UserError, match="unknown latency features"):
        Predictor.load(tmp_path)


def test_layer_profile_trains_a_sum_layers_predictor(tmp_path, monkeypatch):
    """ONNX Runtime's profiler labels every conv of a table's candidates, paired one to one with the
    family's layer table; ``fit`` then compares ``sum+layers`` (refused without a profile), which saves
    its layer model as LightGBM text and loads, without pickle, to the same predictions."""
    from autocomp.measure import get_device
    from autocomp.predictor.campaign import profile
    from autocomp.predictor.layers import LAYERS_MODEL, PROFILE_NAME, conv_features, read_profile

    df = _small_table().head(40)
    cands, ids = candidates_of(df), df["id"].astype(str).tolist()
    prof = profile(cands, ids, SPACE, get_device("cpu-ort"), runs=3)
    _, owner = conv_features(cands, SPACE)
    per = prof.groupby("id").size()
    assert len(per) >= 36 and (prof["us"] > 0).all()  # (a candidate ONNX Runtime rewrote beyond one node per conv has none)
    assert all(per[cid] == np.sum(owner == i) for i, cid in enumerate(ids) if cid in per)
    prof = prof[prof["id"].isin(per.index)]
    df = df[df["id"].isin(per.index)].reset_index(drop=True)
    with pytest.raises(UserError, match="layer profile"):
        fit(df, kinds=("sum+layers",), max_train=30)
    _, report = fit(df, kinds=("sum", "sum+layers"), max_train=30, folds=3, profile=prof)
    assert set(report["selection"]) == {"sum", "sum+layers"}
    pred, _ = fit(df, kinds=("sum+layers",), max_train=30, profile=prof)
    assert pred.kind == "sum+layers" and len(pred.coef) == pred.design(cands[:2]).shape[1]
    pred.save(tmp_path)
    assert (tmp_path / LAYERS_MODEL).read_text().startswith("tree")

    def no_pickle(*a, **k):
        raise AssertionError("pickle used while loading a predictor")

    monkeypatch.setattr(pickle, "load", no_pickle)
    monkeypatch.setattr(pickle, "loads", no_pickle)
    again = Predictor.load(tmp_path)
    np.testing.assert_allclose(again.predict(cands), pred.predict(cands), rtol=1e-9)
    # a calibration from it (another host) keeps its layer model and adapts the conv column with the rest
    from autocomp.predictor.transfer import adapt

    y = df["median_ms"].to_numpy(float) * 1.5
    adapted = adapt(again, cands[:20], y[:20], "ridge", device="b")
    assert adapted.kind == "sum+layers" and adapted.layers is again.layers and adapted.coef.shape == again.coef.shape
    assert metrics(adapted.predict(cands[20:]), y[20:])["rmspe"] < metrics(again.predict(cands[20:]), y[20:])["rmspe"]
    adapted.save(tmp_path / "b")
    np.testing.assert_allclose(Predictor.load(tmp_path / "b").predict(cands), adapted.predict(cands), rtol=1e-9)
    (tmp_path / PROFILE_NAME).write_text("not parquet")
    with pytest.raises(UserError, match="unreadable layer profile"):
        read_profile(tmp_path / PROFILE_NAME)
    (tmp_path / LAYERS_MODEL).write_text("garbage")
    with pytest.raises(UserError, match="unreadable LightGBM model"):
        Predictor.load(tmp_path)


def test_profile_refuses_another_machines_table(tmp_path):
    """A profile belongs to the host that ran it: the table of another fingerprint is refused with
    one line before anything runs."""
    from typer.testing import CliRunner

    from autocomp.predictor.cli import app

    table_path("cpu-ort", "other-host-11111111", tmp_path).parent.mkdir(parents=True)
    table_path("cpu-ort", "other-host-11111111", tmp_path).write_bytes(SHIPPED.read_bytes())
    r = CliRunner().invoke(app, ["profile", "--root", str(tmp_path)])
    assert isinstance(r.exception, UserError) and "another machine" in str(r.exception)
    assert not (tmp_path / "cpu-ort" / "other-host-11111111" / "layers.parquet").exists()
