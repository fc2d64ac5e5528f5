"""The latency model follows the machine it runs on: a predictor of another fingerprint is never
used to filter; the device is calibrated first (and the calibration cached, and a corrupt cached
one refused, set aside and redone); --no-calibrate filters nothing and says so; the online model
learns from the run's measurements, replays exactly, and the skip audit measures what was skipped.

Real measurements throughout, on a tiny space and a fast protocol (``cpu-ort-tiny``); the shipped
predictors folder is a temporary one holding a predictor measured here whose fingerprint says
another CPU, and the user cache ($AUTOCOMP_CACHE) is a temporary folder."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest

import autocomp.predictor
import autocomp.predictor.calibrate as calibrate_mod
import autocomp.resources
from autocomp.measure import base as measure_base
from autocomp.measure.base import Device, register_device
from autocomp.measure.fingerprint import fingerprint_id
from autocomp.predictor import predictor_dir, space_root
from autocomp.predictor.calibrate import (
    AUDIT_MAX,
    AUDIT_MIN,
    OnlineLatency,
    initial_margin,
    latency_model,
    live_error,
    load_model,
    record_measurements,
    skip_audit,
)
from autocomp.predictor.campaign import read_table, run_campaign, table_path, write_table
from autocomp.predictor.features import group_features, nchwc_block
from autocomp.predictor.model import Predictor, candidates_of, fit
from autocomp.space import Candidate, get_space

DEVICE = Device("cpu-ort-tiny", "onnxruntime", ("fp32", "int8"), {"threads": 1, "warmup": 2, "repeats": 20, "min_time_s": 0.05})
K = 6  # calibration measurements
AVX2 = ["avx", "avx2", "f16c", "fma", "sse4_1"]
AMX = ["amx_bf16", "amx_int8", "amx_tile", "avx", "avx2", "avx512_bf16", "avx512_fp16", "avx512_vnni", "avx512bw",
       "avx512f", "avx512vl", "avx_vnni", "f16c", "fma", "sse4_1"]


@pytest.fixture(scope="module", autouse=True)
def no_ray_here():
    """These tests measure on a device registered in this process only: through a Ray started
    earlier in the same pytest process, its measurements would wait for a node holding it."""
    import ray

    if ray.is_initialized():
        pytest.skip("Ray is running in this pytest process (run this file before the Ray tests, as the suite does)")


@pytest.fixture(scope="module")
def device():
    register_device(DEVICE)
    yield DEVICE
    measure_base._IN_CODE.pop(DEVICE.name, None)
    dict.pop(measure_base.DEVICES, DEVICE.name, None)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_yaml):
    path = tmp_path_factory.mktemp("space") / "tiny.yaml"
    path.write_text(tiny_yaml("tiny-calibrate"))
    return get_space(path)


@pytest.fixture(scope="module")
def measured(tmp_path_factory, tiny, device):
    """A sum predictor fit here, on a tiny campaign table measured here (fingerprint: this machine)."""
    root = tmp_path_factory.mktemp("measured")
    table = run_campaign(tiny, device, 16, root, seed=3, progress=False, use_ray=False)
    pred, _ = fit(table, tiny, kinds=("sum",))
    assert pred.fingerprint_id == fingerprint_id(device.fingerprint())
    return pred, table


@pytest.fixture(scope="module")
def shipped(tmp_path_factory, measured, device):
    """A temporary "shipped" predictors folder holding the measured predictor with its fingerprint
    edited to another CPU (another ISA class than this one)."""
    pred, _ = measured
    here = device.fingerprint()
    avx512 = "avx512f" in here["isa"]
    other = {**here, "cpu_model": "AMD EPYC 7B12 64-Core Processor" if avx512 else "Intel(R) Xeon(R) Platinum 8480+",
             "isa": AVX2 if avx512 else AMX, "qdq_fusion": not avx512}
    source = Predictor(pred.kind, pred.space, {**pred.meta, "fingerprint": other, "fingerprint_id": fingerprint_id(other)},
                       pred.coef, pred.booster, pred.calibration)
    root = tmp_path_factory.mktemp("shipped")
    source.save(predictor_dir(device.name, source.fingerprint_id, root, pred.space.name))
    return root, source


@pytest.fixture
def env(tmp_path, monkeypatch, shipped, device):
    """The shipped predictors are the temporary ones; the user cache is empty."""
    root, source = shipped
    for module in (autocomp.resources, autocomp.predictor, calibrate_mod):
        monkeypatch.setattr(module, "predictors_dir", lambda: root)
    cache = tmp_path / "cache"
    monkeypatch.setenv("AUTOCOMP_CACHE", str(cache))
    here = device.fingerprint()
    return {"root": root, "source": source, "cache": cache, "user": cache / "predictors", "here": here,
            "fid": fingerprint_id(here)}


# --------------------------------------------------------------------------- calibration


def test_a_predictor_of_another_cpu_triggers_calibration_before_any_filtering(env, device, tiny):
    here, fid, source, user = env["here"], env["fid"], env["source"], env["user"]
    assert source.fingerprint_id != fid and source.fingerprint["cpu_model"] != here["cpu_model"]
    # the device has a predictor, but not of this fingerprint: nothing would filter with it
    assert load_model(device.name, tiny, here) is None
    # the user's table of this fingerprint already holds measurements of another space (earlier
    # runs): they are not this space's calibration and must not be fit on
    other_space = _another_space_rows(here, device.name)
    if other_space is not None:
        write_table(other_space, table_path(device.name, fid, space_root(user, tiny.name)))

    said: list[str] = []
    lm = latency_model(device, tiny, here, k=K, say=said.append, progress=False)
    assert lm.how == "calibrated" and lm.notice is None
    assert lm.predictor.fingerprint_id == fid and lm.predictor.fingerprint == here
    assert lm.predictor.block == nchwc_block(here)  # this host's kernels, not the source's
    assert len(said) == 1 and "calibrating" in said[0] and source.fingerprint_id in said[0] and "cpu_model" in said[0]
    cal = lm.calibration
    assert (cal["k"], cal["n_fit"], cal["n_table"]) == (K, K, K)
    # of the methods (profiled needs PROFILED_MIN candidates: not with K), the lowest leave-one-out error
    assert set(cal["loo_by_method"]) == {"ridge", "loglinear"} and cal["method"] in cal["loo_by_method"]
    assert cal["loo"]["rmspe"] == min(cal["loo_by_method"].values()) == cal["loo_by_method"][cal["method"]]
    assert cal["source_fingerprint_id"] == source.fingerprint_id and cal["fingerprint_id"] == fid
    assert set(cal["loo"]) >= {"mape", "within_10pct", "rmspe"} and 0.05 <= initial_margin(lm) <= 0.5
    # k measurements of this fingerprint in the user's cache (the other space's rows kept beside them)
    table = read_table(table_path(device.name, fid, space_root(user, tiny.name)))
    mine = table[table["space"] == tiny.name]
    assert len(mine) == K and set(mine["fingerprint_id"]) == {fid} and (mine["median_ms"] > 0).all()
    assert len(table) == K + (0 if other_space is None else len(other_space))
    assert not (env["root"] / device.name / fid).exists()  # the shipped folder is not written
    # spread over the latency range: the lowest and highest of the source's predictions of a seeded pool
    pred_src = np.log(source.predict(candidates_of(mine)))
    pool = [tiny.sample(random.Random(i)) for i in range(300)]
    lo, hi = np.log(source.predict(pool)).min(), np.log(source.predict(pool)).max()
    assert pred_src.max() - pred_src.min() >= 0.5 * (hi - lo)
    # the calibration is the source's model adapted on this fingerprint's features
    from autocomp.predictor.transfer import adapt

    cands = candidates_of(mine)
    ref = adapt(source, cands, mine["median_ms"].to_numpy(float), cal["method"], fingerprint=here)
    np.testing.assert_allclose(lm.predictor.predict(cands), ref.predict(cands), rtol=1e-9)
    # what the controllers load now is the calibration, from the user's cache
    loaded = load_model(device.name, tiny, here)
    assert loaded is not None and loaded.fingerprint_id == fid
    np.testing.assert_allclose(loaded.predict(cands), lm.predictor.predict(cands), rtol=1e-9)

    # next time: the cached calibration, nothing calibrated, nothing added to the table; only
    # re-anchored: ANCHORS of its rows re-measured, the predictions rescaled by their drift
    again: list[str] = []
    lm2 = latency_model(device, tiny, here, k=K, say=again.append, progress=False)
    assert lm2.how == "cached" and not [m for m in again if "calibrat" in m] and lm2.calibration["k"] == K
    assert len(read_table(table_path(device.name, fid, space_root(user, tiny.name)))) == len(table)
    assert lm2.anchor["n"] == calibrate_mod.ANCHORS and set(lm2.anchor["ids"]) <= set(mine["id"])
    np.testing.assert_allclose(lm2.predictor.predict(cands), lm2.anchor["drift"] * lm.predictor.predict(cands), rtol=1e-9)
    assert Predictor.load(predictor_dir(device.name, fid, user, tiny.name)).calibration == lm.predictor.calibration  # not rewritten


def test_an_onnxruntime_calibration_profiles_its_candidates_and_learns_this_hosts_convs(env, device, tiny):
    """From PROFILED_MIN calibration measurements on an ONNX Runtime device the calibration also
    profiles them per conv (beside the table in the user cache) and adds a layer model of this host
    to the source's model; it saves as LightGBM text and loads to the same predictions."""
    from autocomp.predictor.layers import HOST_LAYERS_MODEL, PROFILE_NAME, read_profile
    from autocomp.predictor.transfer import PROFILED_MIN, adapt

    here, fid, source, user = env["here"], env["fid"], env["source"], env["user"]
    lm = latency_model(device, tiny, here, k=PROFILED_MIN, say=lambda m: None, progress=False)
    cal = lm.calibration
    assert lm.how == "calibrated" and set(cal["loo_by_method"]) == {"profiled", "ridge", "loglinear"}
    calibrate_mod.calibrate(device, tiny, here, source, PROFILED_MIN, calibrate_mod.CALIBRATION_SEED, progress=False,
                            methods=("profiled",))  # (the same measurements: the profiled adaptation, saved in its place)
    lm = latency_model(device, tiny, here, k=0, say=lambda m: None, progress=False)
    cal = lm.calibration
    assert lm.how == "cached" and cal["method"] == "profiled" and cal["n_profiled"] == PROFILED_MIN
    assert cal["profile_s"] >= 0 and set(cal["loo"]) >= {"within_10pct", "rmspe"}
    path = table_path(device.name, fid, space_root(user, tiny.name))
    table, prof = read_table(path), read_profile(path.parent / PROFILE_NAME)
    assert set(prof["id"]) == set(table["id"]) and len(table) == PROFILED_MIN and (prof["us"] > 0).all()
    pred = lm.predictor
    assert pred.host_layers is not None and set(pred.calibration) == {"a", "b", "c"} and pred.calibration["c"] != 0
    d = predictor_dir(device.name, fid, user, tiny.name)
    assert (d / HOST_LAYERS_MODEL).read_text().startswith("tree")  # LightGBM text, no pickle
    cands = candidates_of(table)
    ref = adapt(source, cands, table["median_ms"].to_numpy(float), "profiled", fingerprint=here, profile=prof)
    np.testing.assert_allclose(pred.predict(cands), ref.predict(cands), rtol=1e-9)
    pool = [tiny.sample(random.Random(i)) for i in range(50)]
    loaded = load_model(device.name, tiny, here)
    np.testing.assert_allclose(loaded.predict(pool), pred.predict(pool), rtol=1e-9)
    # the conv term is used: the same calibration without it predicts otherwise
    assert not np.allclose(Predictor(pred.kind, tiny, pred.meta, pred.coef, pred.booster,
                                     {**pred.calibration, "c": None}).predict(pool), pred.predict(pool))
    # a damaged layer model of the host is refused with one line, set aside, calibrated again
    (d / HOST_LAYERS_MODEL).write_text("not a model")
    said: list[str] = []
    assert latency_model(device, tiny, here, k=PROFILED_MIN, say=said.append, progress=False).how == "calibrated"
    assert "refused" in said[0] and HOST_LAYERS_MODEL in said[0] and "\n" not in said[0]


def test_a_matched_predictor_is_rescaled_by_the_hosts_drift_since_its_table(env, device, measured, tiny, monkeypatch, tmp_path):
    """A shipped predictor of this very fingerprint whose table was measured when the host ran four
    times slower (its latencies x4, and the predictor fit on them): the search re-measures ANCHORS
    of the table's rows first, finds the host about four times faster (the tiny protocol is noisy),
    says so, and predicts that much less. With
    --no-calibrate (k = 0) nothing is measured and the predictor is used as it is."""
    import shutil

    here, fid = env["here"], env["fid"]
    root = tmp_path / "shipped"
    shutil.copytree(env["root"], root)
    for module in (autocomp.resources, autocomp.predictor, calibrate_mod):
        monkeypatch.setattr(module, "predictors_dir", lambda: root)
    _, table = measured
    slow = table.copy()
    slow["median_ms"] = 4 * slow["median_ms"]
    path = table_path(device.name, fid, space_root(root, tiny.name))
    write_table(slow, path)
    pred, _ = fit(slow, tiny, kinds=("sum",))
    pred.save(path.parent)
    said: list[str] = []
    lm = latency_model(device, tiny, here, k=K, say=said.append, progress=False)
    assert lm.how == "matched" and lm.anchor["n"] == calibrate_mod.ANCHORS
    assert 0.08 < lm.anchor["drift"] < 0.6 and len(lm.anchor["ratios"]) == calibrate_mod.ANCHORS
    assert len(said) == 1 and "faster" in said[0] and "rescaled" in said[0]
    cands = candidates_of(table)
    np.testing.assert_allclose(lm.predictor.predict(cands), lm.anchor["drift"] * pred.predict(cands), rtol=1e-9)
    assert lm.describe()["anchor"]["drift"] == lm.anchor["drift"]
    assert Predictor.load(path.parent).calibration is None  # the shipped predictor is not rewritten
    off = latency_model(device, tiny, here, k=0, say=said.append, progress=False)
    assert off.how == "matched" and off.anchor == {} and len(said) == 1
    np.testing.assert_allclose(off.predictor.predict(cands), pred.predict(cands), rtol=1e-9)


def _another_space_rows(fp: dict, device_name: str):
    """60 real measurement rows of another space (the shipped cpu-ort table, mnist-mbv2), relabelled
    as this fingerprint's: more than REFIT_MIN, so fitting on them would be a refit, not a calibration."""
    from autocomp.measure.fingerprint import dumps
    from autocomp.predictor.campaign import tables
    from autocomp.resources import data_dir

    found = tables("cpu-ort", data_dir("predictors"))
    if not found:
        return None
    rows = read_table(found[0]).head(60).copy()
    rows["fingerprint"], rows["fingerprint_id"], rows["device"] = dumps(fp), fingerprint_id(fp), device_name
    assert len(rows) > calibrate_mod.REFIT_MIN
    return rows


def test_a_corrupt_cached_calibration_is_refused_with_one_line_set_aside_and_redone(env, device, tiny):
    here, fid, user = env["here"], env["fid"], env["user"]
    d = predictor_dir(device.name, fid, user, tiny.name)
    d.mkdir(parents=True)
    garbage = '{"schema_version": 1, "kind": "sum", "coef": [0.1, 0.2'  # a half-written file
    (d / "predictor.json").write_text(garbage)
    said: list[str] = []
    lm = latency_model(device, tiny, here, k=K, say=said.append, progress=False)
    refused = [m for m in said if "refused" in m]
    assert len(refused) == 1 and "\n" not in refused[0] and "predictor.json" in refused[0]
    assert said[0] == refused[0] and len(said) == 2 and "calibrating" in said[1]  # then it calibrates
    aside = [p for p in d.parent.iterdir() if p.name.startswith(fid + ".corrupt-")]
    assert len(aside) == 1 and aside[0].name in refused[0]
    assert (aside[0] / "predictor.json").read_text() == garbage  # kept as it was, for a look
    assert lm.how == "calibrated" and lm.predictor.fingerprint_id == fid
    assert Predictor.load(d).fingerprint_id == fid  # redone in its place
    # and the set-aside folder is no predictor to anyone: the next search takes the new calibration
    assert latency_model(device, tiny, here, k=K, say=said.append, progress=False).how == "cached"
    assert len([m for m in said if "rescaled" not in m]) == 2  # nothing new said but maybe the host's drift
    assert [p.name for p in autocomp.predictor.predictor_dirs(device.name, space=tiny.name)] == [fid, env["source"].fingerprint_id]


def test_no_calibrate_filters_nothing_and_says_so(env, device, tiny):
    here, user = env["here"], env["user"]
    said: list[str] = []
    lm = latency_model(device, tiny, here, k=0, say=said.append, progress=False)
    assert lm.predictor is None and lm.how == "off" and said == []
    assert "not filtered" in lm.notice and "--no-calibrate" in lm.notice and env["source"].fingerprint_id in lm.notice
    assert not user.exists()  # nothing measured, nothing cached
    # a space no predictor covers, too few measurements to fit one: unavailable, and said
    other = get_space("mnist-mbv2").restrict_precisions(list(device.precisions))
    lm = latency_model(device, other, here, k=calibrate_mod.FIT_MIN_K - 1, say=said.append, progress=False)
    assert lm.predictor is None and lm.how == "unavailable" and said == []
    assert "not filtered" in lm.notice and f"--calibrate {calibrate_mod.FIT_MIN_K}" in lm.notice
    assert not user.exists()


# --------------------------------------------------------------------------- online


def _synthetic(space, factor: float = 1.0) -> Predictor:
    """A sum predictor on ``space`` with fixed positive per-group costs, times ``factor``."""
    n = group_features([space.smallest()], space).shape[1]
    coef = np.abs(np.random.default_rng(0).normal(size=n)) * 0.01 + 1e-4
    return Predictor("sum", space, {"device": "synthetic"}, coef=coef,
                     calibration=None if factor == 1.0 else {"a": math.log(factor), "b": 1.0})


def test_online_latency_learns_a_constant_factor_and_its_state_round_trips():
    space = get_space("mnist-mbv2")
    truth, base = _synthetic(space), _synthetic(space, 2.0)
    rng = random.Random(5)
    cands = [space.sample(rng) for _ in range(110)]
    t = truth.predict(cands)
    assert t.max() / t.min() > 3  # a real spread of latencies
    ol = OnlineLatency(base, 0.1)
    np.testing.assert_allclose(ol.predict(cands) / t, 2.0)
    assert ol.margin == 0.1 and ol.limit(10.0) == pytest.approx(11.0)
    for c, ms in zip(cands[:10], t[:10]):
        ol.observe(c, float(ms))
    rel = np.abs(ol.predict(cands[10:]) / t[10:] - 1)
    assert rel.max() < 0.10, rel.max()
    assert ol.state()["n"] == 10 and ol.margin >= 0.3  # it saw errors near 100 %: the filter widened
    assert ol.limit(10.0) == pytest.approx(10.0 * (1 + ol.margin))
    # state round trip: a fresh model given the state filters the same
    copy = OnlineLatency(base, 0.1)
    copy.set_state(json.loads(json.dumps(ol.state())))
    np.testing.assert_allclose(copy.predict(cands), ol.predict(cands), rtol=1e-5)
    assert copy.margin == pytest.approx(ol.margin, abs=1e-6) and copy.limit(5.0) == pytest.approx(ol.limit(5.0), rel=1e-6)
    # a right base model is not pulled far by one noisy measurement
    right = OnlineLatency(truth, 0.1)
    right.observe(cands[0], float(t[0]) * 1.3)
    assert 1.0 < right.predict([cands[0]])[0] / t[0] <= math.sqrt(1.3) + 1e-9


@pytest.mark.parametrize("name", ["random", "evolution", "nsga2"])
def test_a_replay_restoring_the_recorded_state_proposes_the_same_candidates(name):
    """A live run tells results in a scrambled order (the online model sees them in that order);
    a replay tells each right after its ask, restoring the state recorded with each trial, as
    runner.ControllerSearcher does on resume: the same candidates."""
    from autocomp.search import get_controller

    space = get_space("mnist-mbv2")
    truth = _synthetic(space)
    base = _synthetic(space, 1.6)
    budget = float(np.percentile(base.predict([space.sample(random.Random(i)) for i in range(300)]), 40))
    opts = {"evolution": {"population": 4, "generation": 2}, "nsga2": {"population": 4}}.get(name, {})
    noise = np.random.default_rng(1)

    def result(c, trial, predicted):
        ms = float(truth.predict([c])[0]) * float(np.exp(noise.normal(0, 0.05)))
        return {"trial": trial, "status": "ok", "accuracy": 0.5 + 0.01 * (hash(c.id) % 37), "latency_ms": ms,
                "predicted_latency_ms": predicted}

    live = get_controller(name, space, 3, budget_ms=budget, predictor=OnlineLatency(base, 0.1), **opts)
    rng = random.Random(9)
    recorded: dict[int, tuple] = {}
    inflight: list[int] = []
    while len(recorded) < 14 or inflight:
        while len(inflight) < 3 and live.asked < 14:
            c = live.ask()
            if c is None:
                break
            trial = live.asked - 1
            recorded[trial] = (c, json.loads(json.dumps(live.latency_state())), result(c, trial, live.predicted[c.id]))
            inflight.append(trial)
        trial = inflight.pop(rng.randrange(len(inflight)))
        live.tell(recorded[trial][0], recorded[trial][2], trial=trial)
    states = [recorded[t][1] for t in sorted(recorded)]
    assert live.skipped > 0 and len({(s["a"], s["b"]) for s in states}) > 3  # the filter ran and the model moved

    replay = get_controller(name, space, 3, budget_ms=budget, predictor=OnlineLatency(base, 0.1), **opts)
    for trial in sorted(recorded):
        c, state, res = recorded[trial]
        replay.set_latency_state(state)
        got = replay.ask()
        assert got is not None and got.id == c.id, trial
        replay.tell(got, res, trial=trial)
    assert replay.skipped == live.skipped


def test_a_resumed_search_replays_the_run_with_its_online_model(tmp_path):
    """The resume path itself: the Tune searcher loads the run's latency model (<run>/latency_model/),
    records the online state with each trial, and a rebuilt searcher replays results.csv (told in
    a scrambled order) without proposing anything else, then carries on."""
    from autocomp.rundir import ResultsTable, read_results
    from autocomp.runner import ControllerFactory, ControllerSearcher

    space = get_space("mnist-mbv2")
    truth = _synthetic(space)
    _synthetic(space, 1.6).save(tmp_path / "latency_model")
    budget = float(np.percentile(_synthetic(space, 1.6).predict([space.sample(random.Random(i)) for i in range(300)]), 40))
    factory = ControllerFactory("evolution", space, 3, budget_ms=budget, options={"population": 4, "generation": 2},
                                model_dir=str(tmp_path / "latency_model"), margin=0.1)
    results = tmp_path / "results.csv"
    live = ControllerSearcher(factory, 16, results)
    assert isinstance(live.ctrl.predictor, OnlineLatency)
    table = ResultsTable(results)
    rng = random.Random(4)
    inflight: dict[str, dict] = {}  # Tune trial id -> config
    n = asked = 0
    while n < 10:
        while len(inflight) < 3:
            cfg = live.suggest(f"tune-{asked}")
            if cfg is None:  # the generation is out
                break
            inflight[f"tune-{asked}"] = cfg
            asked += 1
        tid = rng.choice(sorted(inflight))
        cfg = inflight.pop(tid)
        cand = Candidate.from_json(cfg["candidate"])
        result = {"status": "ok", "accuracy": 0.5 + 0.01 * (int(cand.id[:4], 16) % 37),
                  "latency_ms": float(truth.predict([cand])[0])}
        live.on_trial_complete(tid, result)
        table.append({**result, "trial": cfg["trial"], "id": cand.id, "summary": cand.summary(), "policy": cand.to_json(),
                      "predicted_latency_ms": cfg["predicted_latency_ms"], "latency_state": cfg["latency_state"]})
        n += 1
    table.close()
    rows = read_results(results)
    assert len(rows) == 10 and all(json.loads(r["latency_state"])["n"] <= r["trial"] for r in rows)
    assert live.skipped > 0 and live.ctrl.latency_state()["n"] == 10
    rebuilt = ControllerSearcher(factory, 16, results)  # the driver died with trials in flight
    assert rebuilt.replayed == 10  # every recorded trial proposed again, identically (else UserError --resume)
    lost = sorted(live.trial_ids[t] for t in inflight)
    assert [i for i, _ in rebuilt.queue] == lost
    assert [c.id for _, c in rebuilt.queue] == [live.cands[i].id for i in lost]
    assert rebuilt.ctrl.latency_state()["n"] == 10


def test_live_error_and_recorded_measurements(env, device, measured, tiny):
    rows = [{"status": "ok", "predicted_latency_ms": p, "latency_ms": m} for p, m in ((1.0, 1.0), (2.0, 2.1), (3.0, 3.6), (4.0, 4.0))]
    rows.append({"status": "error", "predicted_latency_ms": 1.0, "latency_ms": ""})
    live = live_error(rows)
    assert live["n"] == 4 and live["within_10pct"] == 0.75 and live["spearman"] == 1.0
    assert live["median_abs_error"] == pytest.approx(np.median([0, 0.1 / 2.1, 0.6 / 3.6, 0]), abs=1e-4)
    assert live_error([]) == {"n": 0}
    # a run's measurements of this fingerprint go to its table in the user's cache, once each
    _, table = measured
    fid = env["fid"]

    def run_row(i, **change):
        r = table.iloc[i]
        return {"status": "ok", "id": r["id"], "policy": r["candidate"], "trial": i, "device": device.name,
                "backend": r["backend"], "backend_version": r["backend_version"], "host": r["host"], "fingerprint": r["fingerprint"],
                "fingerprint_id": fid, "batch": 1, "threads": 1, "warmup": 2, "repeats": 20, "latency_ms": float(r["median_ms"]),
                "latency_p90_ms": float(r["p90_ms"]), "latency_cv": float(r["cv"]), "latency_flagged": "False",
                "params": int(r["params"]), "onnx_bytes": int(r["onnx_bytes"]), **change}

    run = [run_row(0), run_row(1), run_row(1), run_row(2, fingerprint_id="another-host-00000000"), run_row(3, status="error")]
    assert record_measurements(device.name, env["here"], tiny, run) == 2
    assert record_measurements(device.name, env["here"], tiny, run) == 0  # already there
    got = read_table(table_path(device.name, fid, space_root(env["user"], tiny.name)))
    assert list(got["id"]) == list(table["id"].iloc[:2]) and set(got["fingerprint_id"]) == {fid}
    assert all(json.loads(n)["from_run"] for n in got["notes"])


# --------------------------------------------------------------------------- skip audit


def test_skip_audit_of_a_pessimistic_predictor_finds_candidates_that_fit(env, device, measured, tiny):
    """A predictor 3x too pessimistic skips candidates that would fit; the audit measures the
    skipped ones predicted nearest the budget and reports that they in fact fit."""
    from autocomp.search import get_controller

    fitted, table = measured
    pessimistic = Predictor(fitted.kind, fitted.space, dict(fitted.meta), fitted.coef, None, {"a": math.log(3.0), "b": 1.0})
    pool = [tiny.sample(random.Random(i)) for i in range(200)]
    budget = float(np.percentile(pessimistic.predict(pool), 30))
    ctrl = get_controller("random", tiny, 0, budget_ms=budget, predictor=pessimistic)
    for t in range(4):
        c = ctrl.ask()
        ctrl.tell(c, {"status": "ok", "accuracy": 0.5, "latency_ms": 0.01}, trial=t)
    skipped = ctrl.skipped_log
    assert len(skipped) >= AUDIT_MIN and all(p > budget for _, p in skipped)
    audit = skip_audit(skipped, budget, tiny, device, progress=False)
    assert audit["skipped"] == len(skipped) and audit["audited"] == len(audit["rows"]) >= AUDIT_MIN
    assert audit["audited"] == min(AUDIT_MAX, max(AUDIT_MIN, -(-len(skipped) // 10)))
    nearest = sorted(p for _, p in skipped)[: audit["audited"]]
    assert [r["predicted_ms"] for r in audit["rows"]] == pytest.approx(nearest, abs=1e-4)
    for r in audit["rows"]:
        assert r["measured_ms"] > 0 and r["fits"] == (r["measured_ms"] <= budget) and r["fingerprint_id"] == env["fid"]
    assert audit["fit_budget"] == sum(r["fits"] for r in audit["rows"]) >= 1  # wrongly skipped, found
    # the run's latency model as it ended picks them (here it learnt they run at half the prediction)
    later = skip_audit(skipped, budget, tiny, device, progress=False, predict=lambda cs: 0.5 * pessimistic.predict(cs))
    assert [r["predicted_at_skip_ms"] for r in later["rows"]] == pytest.approx(nearest, abs=1e-4)
    assert [r["predicted_ms"] for r in later["rows"]] == pytest.approx([0.5 * p for p in nearest], abs=1e-4)


def test_a_cached_calibration_is_refit_once_runs_have_measured_enough(env, device, measured, tiny, monkeypatch):
    """Runs append their measurements to the fingerprint's table; once it has grown by REFIT_MIN / 2
    past what the cached calibration saw (and holds REFIT_MIN), the next search fits a predictor on
    all of them and adapts the source to all of them, without measuring anything new, and keeps the
    one that validates better."""
    monkeypatch.setattr(calibrate_mod, "REFIT_MIN", 12)
    here, fid = env["here"], env["fid"]
    assert latency_model(device, tiny, here, k=K, say=lambda m: None, progress=False).how == "calibrated"
    _, table = measured
    run = [{"status": "ok", "id": r["id"], "policy": r["candidate"], "trial": i, "device": device.name,
            "backend": r["backend"], "backend_version": r["backend_version"], "host": r["host"], "fingerprint": r["fingerprint"],
            "fingerprint_id": fid, "batch": 1, "threads": 1, "warmup": 2, "repeats": 20, "latency_ms": float(r["median_ms"]),
            "latency_p90_ms": float(r["p90_ms"]), "latency_cv": float(r["cv"]), "latency_flagged": "False",
            "params": int(r["params"]), "onnx_bytes": int(r["onnx_bytes"])} for i, r in table.iterrows()]
    added = record_measurements(device.name, here, tiny, run)
    before = read_table(table_path(device.name, fid, space_root(env["user"], tiny.name)))
    assert added >= 6 and len(before) >= 12
    said: list[str] = []
    lm = latency_model(device, tiny, here, k=K, say=said.append, progress=False)
    refits = [m for m in said if "rescaled" not in m]  # (and maybe the drift of the host since, re-anchored)
    assert len(refits) == 1 and "refitting" in refits[0] and lm.anchor["n"] == calibrate_mod.ANCHORS
    # the fit on the table alone and the source adapted to all of it, compared: the better one kept
    cal = lm.calibration
    cv, loo = cal["compared"]["refit_cv_rmspe"], cal["compared"]["adapted_loo_rmspe"]
    assert cv > 0 and loo > 0 and cal["source_fingerprint_id"] == env["source"].fingerprint_id
    if lm.how == "refit":
        assert cv < loo and cal["method"].startswith("fit ")
    else:
        assert lm.how == "calibrated" and cv >= loo and cal["n_fit"] == len(before) and cal["method"] in ("ridge", "loglinear")
    assert lm.calibration["n_table"] == len(before) and lm.predictor.fingerprint_id == fid
    assert len(read_table(table_path(device.name, fid, space_root(env["user"], tiny.name)))) == len(before)  # nothing new measured
    # and it is what the next search loads, without refitting again
    assert latency_model(device, tiny, here, k=K, say=said.append, progress=False).how == "cached"
    assert not [m for m in said if "rescaled" not in m][1:]


def test_a_shipped_predictor_of_this_fingerprint_supersedes_a_smaller_calibration(env, device, measured, tiny, monkeypatch, tmp_path):
    """A calibration cached before the package shipped a predictor of this very fingerprint gives way
    to it when the shipped one was fit on more of the fingerprint's measurements (and keeps its
    place when it was not), in the search's driver and in every controller alike."""
    import shutil

    here, fid = env["here"], env["fid"]
    assert latency_model(device, tiny, here, k=K, say=lambda m: None, progress=False).how == "calibrated"
    root = tmp_path / "shipped"
    shutil.copytree(env["root"], root)
    for module in (autocomp.resources, autocomp.predictor, calibrate_mod):
        monkeypatch.setattr(module, "predictors_dir", lambda: root)
    pred, table = measured
    assert pred.fingerprint_id == fid and pred.meta["n_train"] > K
    pred.save(predictor_dir(device.name, fid, root, tiny.name))
    cands = candidates_of(table)
    said: list[str] = []
    lm = latency_model(device, tiny, here, k=K, say=said.append, progress=False)
    assert lm.how == "matched" and said == []
    np.testing.assert_allclose(lm.predictor.predict(cands), pred.predict(cands), rtol=1e-9)
    np.testing.assert_allclose(load_model(device.name, tiny, here).predict(cands), pred.predict(cands), rtol=1e-9)
    small = Predictor(pred.kind, pred.space, {**pred.meta, "n_train": K - 1}, pred.coef)
    small.save(predictor_dir(device.name, fid, root, tiny.name))
    assert latency_model(device, tiny, here, k=K, say=said.append, progress=False).how == "cached"
    assert load_model(device.name, tiny, here).meta["calibration"]["k"] == K
