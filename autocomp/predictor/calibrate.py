"""The latency model of a search: the predictor of the measuring device's own fingerprint.

A predictor is valid only for the fingerprint it was measured on (:mod:`autocomp.measure.fingerprint`).
:func:`latency_model` finds, for a device and the fingerprint probed on its node now:

1. a predictor of exactly that fingerprint: the user's cache first (``$AUTOCOMP_CACHE/predictors``,
   earlier calibrations), then the shipped ``predictors/`` (which wins where it was fit on more
   measurements of the fingerprint than the cached one: a calibration made before it shipped);
2. otherwise it **calibrates**: a short seeded campaign of ``k`` candidates spread over the latency
   range (evenly spaced quantiles of the source's predicted log latency over a seeded pool),
   measured on the device (on ONNX Runtime devices also profiled per conv), then the nearest
   fingerprint's predictor (the *source*) adapted to them (:func:`autocomp.predictor.transfer.adapt`:
   of ``profiled`` (with a layer model of this host's convs), ``ridge`` and ``loglinear``, the one of
   the lowest leave-one-out error). From ``REFIT_MIN``
   measurements of the fingerprint on (calibrations and the measurements of earlier runs accumulate
   in its table) a predictor fit on them alone is compared with the adaptation, and replaces it
   where it validates better: on the cross-host benchmark a fit needs 100-250 rows to beat a
   profiled adaptation. The result is cached per fingerprint and reused next time;
3. with calibration switched off (``k == 0``) the search runs without the budget filter.

A predictor found (1) was fit on measurements taken hours or months ago, and a shared host drifts:
this project's 2-vCPU VM ran the same models 6-13 % faster one day than when its table was measured,
and a matched search's first evaluations were over-predicted by 15-30 %. Before such a search
:func:`anchor` therefore re-measures ``ANCHORS`` of the fingerprint's own table rows (spread over
their latency range) and rescales the predictor by the median of now / then: the drift of the
host since its table. (A calibration made now needs none; ``k == 0`` measures nothing.)

A cached calibration that cannot be read is refused with one line, set aside (renamed, not
deleted) and calibrated again.

During the search :class:`OnlineLatency` wraps the predictor: every evaluation is a measurement,
and each one re-fits a log-linear correction (ridge-pulled toward the identity) of the
calibrated predictor on the run's own measurements. The filter margin follows the live error: a
candidate is skipped only when its prediction exceeds the budget by more than two standard
deviations of the (log) errors seen so far: replayed on this project's tables, 0.4-2.5 % of the
candidates predicted just over the limit in fact fit, against 6-9 % with the 90th percentile of
|error| used before (``benchmarks/skip_margin.py``).
"""

from __future__ import annotations

import datetime as _dt
import json
import random
import shutil
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from autocomp.cliutil import spinner
from autocomp.errors import UserError
from autocomp.measure import Device
from autocomp.measure.fingerprint import differences, fingerprint_id
from autocomp.predictor import find_predictor, fit_size, nearest_predictor, predictor_dir, space_root
from autocomp.predictor.model import Predictor, candidates_of, fit, host_info, metrics
from autocomp.resources import predictors_dir, user_predictors_dir
from autocomp.space import Candidate, SearchSpace

DEFAULT_K = 20
REFIT_MIN = 50
# without a source predictor a calibration is a fit, which holds one measurement in five out and
# needs 10 to train on: 20 leave enough (with 10, 1 - 0.8^10 = 89 % of draws had fewer than 10)
FIT_MIN_K = 20
POOL_PER_POINT = 50  # the spread is chosen from a seeded pool of k * POOL_PER_POINT samples
CALIBRATION_SEED = 7919
# see transfer.METHODS: of these, the calibration keeps the one whose leave-one-out error is the
# lowest ("profiled" only where the device runs ONNX Runtime, whose profiler gives the candidates'
# conv times). On the cross-host benchmark at k = 20 the best was "profiled" on cpu-ort (82 % within
# ±10 %, ridge 69 %), "loglinear" on cpu-openvino (92 %, ridge 87 %)
METHODS = ("profiled", "ridge", "loglinear")
PROFILE_RUNS = 100  # profiled runs per calibration candidate (the median of each conv's times is kept)
MIN_MARGIN, MAX_MARGIN = 0.05, 0.5
ANCHORS = 4  # table rows re-measured before a search with an older predictor (the host's drift since)
DRIFT_SAY = 0.05  # a drift beyond this is said in the run
MARGIN_SD = 2.0  # the filter's margin in standard deviations of the latency model's log error


@dataclass
class LatencyModel:
    """What filters a search, and why: ``predictor`` is None when nothing filters."""

    predictor: Predictor | None
    how: str  # matched | cached | calibrated | refit | off | unavailable
    fingerprint: dict[str, Any]
    notice: str | None = None
    calibration: dict[str, Any] = field(default_factory=dict)
    anchor: dict[str, Any] = field(default_factory=dict)  # the drift re-measured before the search (:func:`anchor`)

    def describe(self) -> dict[str, Any]:
        return {"how": self.how, "fingerprint_id": fingerprint_id(self.fingerprint), "fingerprint": self.fingerprint,
                "predictor_fingerprint_id": self.predictor.fingerprint_id if self.predictor else None,
                **({"calibration": self.calibration} if self.calibration else {}),
                **({"anchor": self.anchor} if self.anchor else {}),
                **({"notice": self.notice} if self.notice else {})}


def load_model(device: str, space: SearchSpace, fingerprint: dict) -> Predictor | None:
    """The predictor of exactly this fingerprint for ``space`` (of the user's cache's and the shipped
    one, the one fit on more of its measurements), or None. What the search's controller loads, in
    every process."""
    pred = find_predictor(device, fingerprint, space=space.name)
    return pred if pred is not None and pred.space.name == space.name else None


def _load_cached(device: str, fp: dict, space: SearchSpace, say: Callable[[str], None]) -> Predictor | None:
    """This fingerprint's predictor of ``space`` from the user's cache; a corrupt one is set aside and
    None returned."""
    d = predictor_dir(device, fingerprint_id(fp), user_predictors_dir(), space.name)
    if not (d / "predictor.json").exists():
        return None
    try:
        pred = Predictor.load(d)
        if pred.fingerprint_id != fingerprint_id(fp):
            raise UserError(str(d / "predictor.json"), f"fingerprint {pred.fingerprint_id!r}", fingerprint_id(fp))
        if pred.space.name != space.name:  # written before calibrations were kept per space
            raise UserError(str(d / "predictor.json"), f"a predictor of space {pred.space.name!r}", f"one of {space.name!r}")
        return pred
    except UserError as e:
        aside = d.with_name(d.name + f".corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
        shutil.move(str(d), str(aside))
        say(f"refused the cached calibration ({e}); set aside as {aside.name}, calibrating again")
        return None


def latency_model(device: Device, space: SearchSpace, fingerprint: dict[str, Any], *, k: int = DEFAULT_K,
                  seed: int = CALIBRATION_SEED, say: Callable[[str], None] = print, progress: bool = True,
                  source_devices: Sequence[str] = ()) -> LatencyModel:
    """The latency model of ``device`` (whose node has ``fingerprint`` now) for ``space``; see the module docs."""
    fid = fingerprint_id(fingerprint)
    cached = _load_cached(device.name, fingerprint, space, say)
    shipped = find_predictor(device.name, fingerprint, [predictors_dir()], space.name)
    if cached is not None and shipped is not None and fit_size(shipped) > fit_size(cached):
        cached = None  # a calibration made before a predictor of this fingerprint shipped, on fewer measurements
    if cached is not None and cached.space.name == space.name:
        info = dict(cached.meta.get("calibration") or {})
        rows = _table_rows(device.name, fid, space)
        if rows < REFIT_MIN or rows < int(info.get("n_table", 0)) + REFIT_MIN // 2:
            lm = LatencyModel(cached, "cached", fingerprint, calibration=info)
        else:  # earlier runs added their measurements to the fingerprint's table: refit on all of them
            say(f"{rows} measurements of {fid} since its calibration on {info.get('n_table')}: refitting its latency model "
                "(or adapting the nearest host's again, whichever validates better)")
            source = _source(device, fingerprint, space, source_devices)
            pred, info = calibrate(device, space, fingerprint, source, 0, seed, progress=progress)  # no new measurement
            lm = LatencyModel(pred, info["how"], fingerprint, calibration=info)
        return anchor(lm, device, space, user_predictors_dir(), say, progress) if k > 0 else lm
    if shipped is not None and shipped.space.name == space.name:
        lm = LatencyModel(shipped, "matched", fingerprint)
        return anchor(lm, device, space, predictors_dir(), say, progress) if k > 0 else lm
    source = _source(device, fingerprint, space, source_devices)
    why = (f"the latency predictor of {device.name!r} was measured on {source.fingerprint_id} "
           f"({'; '.join(differences(fingerprint, source.fingerprint)[:3])})" if source is not None
           else f"{device.name!r} has no latency predictor for space {space.name!r}")
    if k <= 0:
        return LatencyModel(None, "off", fingerprint, notice=f"{why}, not on this device's fingerprint {fid}; "
                            "--no-calibrate: candidates are not filtered by the budget")
    if source is None and k < FIT_MIN_K:
        return LatencyModel(None, "unavailable", fingerprint, notice=f"{why}; {k} calibration measurements cannot fit one "
                            f"(use --calibrate {FIT_MIN_K} or more): candidates are not filtered by the budget")
    say(f"{why}; calibrating on {fid}: {k} measurements spread over the latency range")
    pred, info = calibrate(device, space, fingerprint, source, k, seed, progress=progress)
    return LatencyModel(pred, info["how"], fingerprint, calibration=info)


def anchor(lm: LatencyModel, device: Device, space: SearchSpace, root, say: Callable[[str], None] = print,
           progress: bool = True) -> LatencyModel:
    """``lm`` with its predictor rescaled by the host's drift since its table: ``ANCHORS`` rows of the
    fingerprint's table in ``root`` (of this space, exported as the device exports now, unflagged
    where enough are), evenly spread over their latency, re-measured on the device; the factor is
    the median of now / then. The predictor on disk is not changed (a rescaled copy is returned).
    Without such rows, ``lm`` as it is."""
    import copy

    from autocomp.cluster import on_device
    from autocomp.predictor.campaign import read_table, table_path

    fid = fingerprint_id(lm.fingerprint)
    table = read_table(table_path(device.name, fid, space_root(root, space.name)))
    if not len(table):
        return lm
    ok = (table["space"] == space.name) & (table["fingerprint_id"] == fid)
    if "int8_export" in table:
        ok &= table["int8_export"].fillna("dequant").isin({"", device.int8_scheme().label})
    if (ok & ~table["flagged"].astype(bool)).sum() >= ANCHORS:  # unflagged rows where there are enough
        ok &= ~table["flagged"].astype(bool)
    rows = table[ok].sort_values("median_ms", kind="stable").reset_index(drop=True)
    if len(rows) < ANCHORS:
        return lm
    picks = rows.iloc[[int((i + 0.5) * len(rows) / ANCHORS) for i in range(ANCHORS)]]
    t0 = time.time()
    with spinner(f"re-measuring {ANCHORS} of the latency model's table rows (the host's drift since)", progress):
        now = [on_device(device, _measure_json, r["candidate"], space, device.name)["median_ms"] for _, r in picks.iterrows()]
    ratios = np.asarray(now, float) / picks["median_ms"].to_numpy(float)
    drift = float(np.exp(np.median(np.log(ratios))))
    pred = copy.copy(lm.predictor)
    pred.meta = dict(pred.meta)
    cal = dict(pred.calibration or {"a": 0.0, "b": 1.0})
    cal["a"] = float(cal["a"]) + float(np.log(drift))
    pred.calibration = cal
    info = {"n": ANCHORS, "drift": drift, "ratios": [round(float(r), 4) for r in ratios],
            "ids": picks["id"].astype(str).tolist(), "measure_s": round(time.time() - t0, 1)}
    if abs(drift - 1) > DRIFT_SAY:
        say(f"this host runs its latency model's table rows {abs(drift - 1):.0%} {'slower' if drift > 1 else 'faster'} than "
            f"when they were measured ({ANCHORS} re-measured): predictions rescaled by {drift:.3f}")
    return LatencyModel(pred, lm.how, lm.fingerprint, lm.notice, lm.calibration, info)


def _source(device: Device, fingerprint: dict, space: SearchSpace, source_devices: Sequence[str]) -> Predictor | None:
    """The predictor of the nearest other fingerprint for ``space`` (what a calibration adapts), or None."""
    return nearest_predictor(device.name, fingerprint, list(source_devices), space=space.name)


def _table_rows(device: str, fid: str, space: SearchSpace) -> int:
    """Rows of ``space`` in the fingerprint's table in the user's cache."""
    from autocomp.predictor.campaign import read_table, table_path

    table = read_table(table_path(device, fid, space_root(user_predictors_dir(), space.name)))
    return int((table["space"] == space.name).sum()) if len(table) else 0


def spread(space: SearchSpace, k: int, seed: int, source: Predictor | None) -> list[Candidate]:
    """``k`` seeded candidates spread over the latency range: the samples of a seeded pool nearest to
    evenly spaced quantiles of the source's predicted log latency (the first ``k`` without a source)."""
    rng = random.Random(seed)
    pool = list({c.id: c for c in (space.sample(rng) for _ in range(k * POOL_PER_POINT))}.values())
    if source is None or len(pool) <= k:
        return pool[:k]
    order = np.argsort(np.log(source.predict(pool)))
    picks = np.unique(np.round(np.linspace(0, len(pool) - 1, k)).astype(int))
    return [pool[i] for i in order[picks]]


def calibrate(device: Device, space: SearchSpace, fingerprint: dict, source: Predictor | None, k: int, seed: int,
              progress: bool = True, methods: Sequence[str] = METHODS) -> tuple[Predictor, dict[str, Any]]:
    """Measure ``k`` spread candidates on ``device`` into the fingerprint's table in the user's cache
    (on ONNX Runtime devices also their convs, for ``profiled``), then adapt ``source`` to every row
    of that table with the one of ``methods`` of the lowest leave-one-out error (``loo_by_method``); once it holds ``REFIT_MIN`` rows, also fit a predictor on them alone and keep it where
    its CV RMSPE beats the adaptation's leave-one-out (``compared``). Saves and returns the predictor
    and a description of the calibration."""
    from autocomp.predictor.campaign import read_table, run_campaign, table_path
    from autocomp.predictor.transfer import adapt, profiled_convs

    fid = fingerprint_id(fingerprint)
    root = space_root(user_predictors_dir(), space.name)
    chosen = spread(space, k, seed, source)
    t0 = time.time()
    run_campaign(space, device, k, root, seed, progress=progress, candidates=chosen,
                 label=f"calibrating {device.name} on this fingerprint", fingerprint=fingerprint)
    table = read_table(table_path(device.name, fid, root))
    # (a table from before tables were kept per space may hold other spaces' rows: only this space's)
    table = table[(table["fingerprint_id"] == fid) & (table["space"] == space.name)].reset_index(drop=True)
    info: dict[str, Any] = {"k": k, "seed": seed, "fingerprint_id": fid, "n_table": int(len(table)),
                            "source_fingerprint_id": source.fingerprint_id if source else None,
                            "source_device": source.meta.get("device") if source else None,
                            "measure_s": round(time.time() - t0, 1),
                            "at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    profile = None
    methods = [m for m in methods if m != "profiled" or device.backend == "onnxruntime"]
    if source is not None and "profiled" in methods:
        from autocomp.predictor.campaign import extend_profile
        from autocomp.predictor.layers import table_profile

        path = table_path(device.name, fid, root)
        profile = table_profile(path)  # earlier calibrations' (a refit measures nothing new)
        if chosen:
            t1 = time.time()
            with spinner(f"profiling the {len(chosen)} calibration candidates' convs", progress):
                profile = extend_profile(path, chosen, space, device, PROFILE_RUNS)
            info["profile_s"] = round(time.time() - t1, 1)
    pred = loo = None
    if source is not None:  # every measurement of this fingerprint: this calibration's, earlier ones', the runs'
        # (profiled falls back to ridge without enough profiled convs: not a method of its own then)
        if profiled_convs(candidates_of(table), space, profile) is None:
            methods = [m for m in methods if m != "profiled"] or ["ridge"]
        if len(table) >= 5:
            by_method = {m: leave_one_out(source, table, m, fingerprint, profile) for m in methods}
            method = min(methods, key=lambda m: by_method[m]["rmspe"])
            loo = by_method[method]
            info["loo_by_method"] = {m: v["rmspe"] for m, v in by_method.items()}
        else:
            method = methods[0]
        # the source's model on this fingerprint's features (its NCHWc block), fit and used alike
        pred = adapt(source, candidates_of(table), table["median_ms"].to_numpy(float), method, device=device.name,
                     fingerprint=fingerprint, profile=profile)
        pred.meta.update(host_info(table))
        info.update(how="calibrated", method=method, n_fit=int(len(table)), loo=loo,
                    **({"n_profiled": pred.meta.get("n_profiled")} if method == "profiled" else {}))
    if len(table) >= REFIT_MIN or source is None:
        # enough of this host's own measurements: a predictor fit on them alone, where it cross-validates
        # better than the adaptation's leave-one-out (at 50 rows it mostly does not: crosshost benchmark)
        refit, report = fit(table, space, max_train=len(table))
        cv = min((v["rmspe"] for v in report["selection"].values()), default=None)
        if loo is not None:
            info["compared"] = {"refit_cv_rmspe": None if cv is None else round(float(cv), 4), "adapted_loo_rmspe": loo["rmspe"]}
        if source is None or (loo is not None and cv is not None and cv < loo["rmspe"]):
            pred = refit
            info.update(how="refit", method=f"fit {refit.kind} on {len(table)} measurements", n_fit=int(report["n_train"]))
            info.pop("n_profiled", None)
            if "test" in report:
                info["held_out"] = report["test"]
    pred.meta["calibration"] = info
    pred.save(predictor_dir(device.name, fid, root))
    return pred, info


LOO_MAX = 40  # leave-one-out over at most this many of the rows (evenly spaced): a refit's table grows


def leave_one_out(source: Predictor, rows, method: str, fingerprint: dict, profile=None) -> dict[str, float]:
    """Leave-one-out error of adapting ``source`` on ``rows`` (measured on ``fingerprint``; ``profile``:
    their profiled convs): the calibration's own error estimate (each of at most ``LOO_MAX`` rows
    left out in turn)."""
    from autocomp.predictor.transfer import adapt

    cands, y = candidates_of(rows), rows["median_ms"].to_numpy(float)
    out = np.unique(np.round(np.linspace(0, len(y) - 1, min(len(y), LOO_MAX))).astype(int))
    pred = np.empty(len(out))
    for j, i in enumerate(out):
        keep = np.arange(len(y)) != i
        p = adapt(source, [c for c, m in zip(cands, keep) if m], y[keep], method, fingerprint=fingerprint, profile=profile)
        pred[j] = p.predict([cands[i]])[0]
    return {k: round(v, 4) for k, v in metrics(pred, y[out]).items() if isinstance(v, float)}



def record_measurements(device: str, fingerprint: dict, space: SearchSpace, rows: list[dict]) -> int:
    """Append a run's measured latencies (results rows whose fingerprint is ``fingerprint``) to that
    fingerprint's table in the user's cache, so the next calibration refits on them. Returns how
    many rows were added."""
    import pandas as pd

    from autocomp.predictor.campaign import COLUMNS, SCHEMA_VERSION, read_table, table_path, write_table

    fid = fingerprint_id(fingerprint)
    path = table_path(device, fid, space_root(user_predictors_dir(), space.name))
    table = read_table(path)
    have = set(table["id"])
    new = []
    for r in rows:
        if r.get("status") != "ok" or r.get("fingerprint_id") != fid or r["id"] in have or not r.get("policy"):
            continue
        cand = Candidate.from_json(r["policy"])
        have.add(r["id"])
        new.append({"schema_version": SCHEMA_VERSION, "id": r["id"], "space": space.name, "candidate": r["policy"],
                    "encoding": space.encode(cand), "precision": cand.precision, "params": r.get("params"),
                    "onnx_bytes": r.get("onnx_bytes"), "seed": -1, "index": int(r["trial"]),
                    **{c: r.get(c) for c in ("device", "backend", "backend_version", "host", "fingerprint", "fingerprint_id")},
                    **{c: int(r[c]) for c in ("batch", "threads", "warmup", "repeats")},
                    "statistic": "median", "median_ms": float(r["latency_ms"]), "mean_ms": None,
                    "p90_ms": r.get("latency_p90_ms"), "p99_ms": None, "cv": r.get("latency_cv"),
                    "flagged": str(r.get("latency_flagged")) == "True", "cpu_model": fingerprint.get("cpu_model"),
                    "notes": json.dumps({"from_run": True}), "measured_at": None,
                    "int8_export": r.get("int8_export") or "dequant"})  # empty: a run from before the column (dequant then)
    if new:
        write_table(pd.concat([table, pd.DataFrame(new, columns=COLUMNS)], ignore_index=True), path)
    return len(new)


class OnlineLatency:
    """A calibrated predictor re-adapted from the run's own measurements as they arrive.

    ``predict`` = the base prediction times ``exp(a + (b - 1) * log(base))``, where (a, b) is a
    log-linear fit of measured on predicted latency over the run's measurements, ridge-pulled
    toward (0, 1) with the weight of ``PRIOR`` pseudo-measurements at the measurements' mean log
    latency (the correction there, and the slope), so a single noisy one moves it by at most half
    its error while a consistent bias is corrected within a few measurements. ``margin`` is the
    filter's tolerance: ``exp(MARGIN_SD * rms) - 1``, with ``rms`` the root mean square of
    log(predicted / measured) over the predictions made before each measurement (``MIN_MARGIN`` to
    ``MAX_MARGIN``; from the calibration's leave-one-out error until 5 measurements are in)."""

    PRIOR = 1.0

    def __init__(self, base: Predictor, margin: float = 0.1):
        self.base = base
        self.space = base.space
        self.meta = base.meta
        self.a, self.b = 0.0, 1.0
        self.initial_margin = margin
        self._margin: float | None = None  # a replayed state's margin, until the next measurement
        self.points: list[tuple[float, float]] = []  # (log base prediction, log measured)
        self.errors: list[float] = []  # relative error of the prediction in force when it was measured

    @property
    def margin(self) -> float:
        if self._margin is not None:
            return self._margin
        if len(self.errors) < 5:
            return self.initial_margin
        return _margin_of(float(np.sqrt(np.mean(np.log1p(np.asarray(self.errors)) ** 2))))

    def limit(self, budget_ms: float) -> float:
        """Skip a candidate only when predicted above this."""
        return budget_ms * (1.0 + self.margin)

    def predict(self, candidates: Sequence[Candidate]) -> np.ndarray:
        return self._corrected(self.base.predict(candidates))

    def _corrected(self, base: np.ndarray) -> np.ndarray:
        return np.exp(self.a + self.b * np.log(np.maximum(base, 1e-6)))

    def state(self) -> dict[str, float]:
        return {"a": round(self.a, 6), "b": round(self.b, 6), "margin": round(self.margin, 6), "n": len(self.points)}

    def set_state(self, state: dict[str, float]) -> None:
        self.a, self.b, self._margin = float(state["a"]), float(state["b"]), float(state["margin"])

    def observe(self, candidate: Candidate, measured_ms: float, predicted_ms: float | None = None) -> None:
        """One measurement of the run: ``predicted_ms`` is what was predicted for it before (default:
        the prediction now)."""
        base = float(self.base.predict([candidate])[0])
        before = predicted_ms if predicted_ms is not None else float(self._corrected(np.array([base]))[0])
        self.errors.append(before / measured_ms - 1.0)
        self.points.append((float(np.log(base)), float(np.log(measured_ms))))
        self._margin = None
        x, y = np.array(self.points).T
        # ridge toward (a, b) = (0, 1), centred on the data: minimise
        # sum (y - a - b x)^2 + PRIOR * ((a + (b - 1) xbar)^2 + (b - 1)^2), i.e. the correction at the
        # mean log latency and the slope. (A penalty on a itself, the correction at 1 ms, far from
        # the data, tilted the fit: a constant factor 2 was never learnt, b stayed ~0.88.)
        xm = float(np.mean(x))
        w = np.sqrt(self.PRIOR)
        design = np.vstack([np.stack([np.ones_like(x), x], 1), [[w, w * xm], [0.0, w]]])
        target = np.concatenate([y, [w * xm, w]])
        self.a, self.b = (float(v) for v in np.linalg.lstsq(design, target, rcond=None)[0])


def _margin_of(rms_log_error: float) -> float:
    return float(np.clip(np.expm1(MARGIN_SD * rms_log_error), MIN_MARGIN, MAX_MARGIN))


def initial_margin(model: LatencyModel) -> float:
    """The filter's tolerance before the run has measured anything: from the calibration's
    leave-one-out RMSPE when known (as :attr:`OnlineLatency.margin` from the live error), else 10 %."""
    loo = (model.calibration or {}).get("loo") or {}
    if loo.get("rmspe") is not None:
        return _margin_of(float(loo["rmspe"]))
    return 0.1


def live_error(rows: list[dict]) -> dict[str, Any]:
    """The latency model's error on this run: each evaluation's prediction (made before it was
    measured) against its measurement."""
    pairs = [(float(r["predicted_latency_ms"]), float(r["latency_ms"])) for r in rows
             if r.get("status") == "ok" and r.get("predicted_latency_ms") not in (None, "") and r.get("latency_ms") not in (None, "")]
    if not pairs:
        return {"n": 0}
    p, y = np.array(pairs).T
    m = metrics(p, y)
    rel = np.abs(p / y - 1)
    return {"n": len(pairs), "median_abs_error": round(float(np.median(rel)), 4), "within_10pct": round(m["within_10pct"], 4),
            "spearman": round(m["spearman"], 4) if len(pairs) > 2 else None, "rmspe": round(m["rmspe"], 4)}


AUDIT_SHARE = 10  # measure one skipped candidate in this many
AUDIT_MIN = 2
AUDIT_MAX = 4  # and at most this many (the budget search scores thousands; the nearest tell the most)


def skip_audit(skipped: list[tuple[Candidate, float]], budget_ms: float, space: SearchSpace, device: Device,
               progress: bool = True, predict: Callable[[list[Candidate]], Sequence[float]] | None = None) -> dict[str, Any]:
    """Measure a share of the candidates the filter skipped (one in ``AUDIT_SHARE``, at least
    ``AUDIT_MIN``, at most ``AUDIT_MAX``): those predicted nearest the budget, where a wrong skip is
    likeliest. ``predict`` is the run's latency model as it ended (the online correction has learnt
    from every measurement since a candidate was skipped): it picks them, and each row keeps both
    predictions. Reports how many in fact fit the budget (the target is none). Runs on the device's
    node when Ray runs."""
    from autocomp.cluster import on_device

    out: dict[str, Any] = {"skipped": len(skipped), "audited": 0, "fit_budget": 0, "rows": []}
    if not skipped:
        return out
    n = min(len(skipped), AUDIT_MAX, max(AUDIT_MIN, -(-len(skipped) // AUDIT_SHARE)))
    now = [float(p) for p in predict([c for c, _ in skipped])] if predict is not None else [p for _, p in skipped]
    chosen = sorted(((c, p_now, p) for (c, p), p_now in zip(skipped, now)), key=lambda t: t[1])[:n]
    bar = None
    if progress:
        from rich.progress import Progress

        bar = Progress()
        bar.start()
        task = bar.add_task("skip audit: measuring skipped candidates", total=n)
    try:
        for cand, predicted, at_skip in chosen:
            row = on_device(device, _measure_json, cand.to_json(), space, device.name)
            fits = row["median_ms"] <= budget_ms
            out["rows"].append({"id": cand.id, "predicted_ms": round(predicted, 4), "predicted_at_skip_ms": round(float(at_skip), 4),
                                "measured_ms": round(row["median_ms"], 4), "fits": fits, "fingerprint_id": row.get("fingerprint_id")})
            out["fit_budget"] += int(fits)
            if bar is not None:
                bar.advance(task)
    finally:
        if bar is not None:
            bar.stop()
    out["audited"] = len(out["rows"])
    return out


def _measure_json(cand_json: str, space: SearchSpace, device_name: str) -> dict:
    from autocomp.measure import get_device
    from autocomp.predictor.campaign import measure_candidate

    return measure_candidate(Candidate.from_json(cand_json), space, get_device(device_name))
