"""Measurement campaigns: sample candidates (seeded), export each, measure it on a device and
append the result to ``<predictors>/<device>/<fingerprint id>/measurements.parquet`` — the table
predictors are fit on. A table holds the measurements of one device fingerprint
(:mod:`autocomp.measure.fingerprint`): the fingerprint is probed on the measuring node before the
first measurement, and every row records the one it was measured with.

:func:`profile` re-runs a table's candidates under ONNX Runtime's profiler: the per-conv labels of
the ``sum+layers`` predictor (``layers.parquet``, :mod:`autocomp.predictor.layers`).

The campaign is resumable: candidate ``i`` of a campaign is the ``i``-th sample of
``random.Random(seed)``, and ids already in the table are skipped, so running the same command
twice measures nothing twice, and a larger ``n`` continues where the last run stopped. The table
is rewritten atomically after every measurement, so an interrupted campaign loses at most the
candidate in flight.

Weights are random (latency does not depend on their values); int8 layers are calibrated on
random inputs, which gives valid QDQ scales for timing.

On a Ray cluster (``address`` given, or Ray already initialised) the export runs on the driver and
the measurement runs as a Ray task that needs the device's custom resource (``device:<name>``), so
it lands on the node holding the device, one measurement at a time per device unit.

Table schema (``SCHEMA_VERSION`` 2), one row per measured candidate:

=================  =========================================================================
schema_version     int, 2
id                 candidate id (``Candidate.id``), unique in the table
space              search-space name
candidate          canonical candidate JSON (``Candidate.to_json()``)
encoding           list<float>: ``space.encode(candidate)``
precision          fp32 / fp16 / int8 when every layer group agrees, else ``mixed``
params             parameter count of the exported (compressed) model
onnx_bytes         size of the exported ONNX file
seed, index        campaign seed and sample index (reproduces the candidate)
device, backend, backend_version, batch, threads, warmup, repeats, statistic, host
                   the measurement protocol (:class:`autocomp.measure.base.Measurement`)
median_ms, mean_ms, p90_ms, p99_ms, cv, flagged
                   the figures; ``median_ms`` is the latency, ``flagged`` marks a CV above the
                   backend's threshold after its re-measurements
cpu_model          the measuring host's CPU model (``/proc/cpuinfo``)
notes              backend-specific protocol details (JSON string; e.g. the trtexec command)
measured_at        UTC timestamp (ISO 8601)
fingerprint        the device fingerprint of the measurement (JSON), fingerprint_id its name
int8_export        how the int8 layers were exported: fused | fused-7bit | dequant (the
                   device's :meth:`autocomp.measure.Device.int8_scheme` on the measuring node;
                   tables written before the column existed read as ``dequant``). The latencies of
                   int8 layers differ by scheme: fit on rows of the device's current one.
pass_ms            list<float>: the median of each pass (``passes``); the figures are those of the
                   fastest pass (a shared host's slow phases can outlast one measurement window)
=================  =========================================================================

With ``passes`` > 1 every candidate of the campaign is measured again after the whole first pass
(minutes later, in another phase of the host) and keeps its fastest pass; ``pass_ms`` records them all,
so a later run with more passes continues where the last stopped.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import random
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from autocomp.errors import UserError
from autocomp.measure.base import Device, get_device
from autocomp.measure.fingerprint import cpu_model, fingerprint_id
from autocomp.resources import predictors_dir
from autocomp.space import Candidate, SearchSpace, get_space

SCHEMA_VERSION = 2
TABLE_NAME = "measurements.parquet"

COLUMNS = [
    "schema_version", "id", "space", "candidate", "encoding", "precision", "params", "onnx_bytes", "seed", "index",
    "device", "backend", "backend_version", "batch", "threads", "warmup", "repeats", "statistic", "host",
    "median_ms", "mean_ms", "p90_ms", "p99_ms", "cv", "flagged", "cpu_model", "notes", "measured_at",
    "fingerprint", "fingerprint_id", "int8_export", "pass_ms",
]
# the figures a later, faster pass replaces
PASS_FIELDS = ("statistic", "median_ms", "mean_ms", "p90_ms", "p99_ms", "cv", "flagged", "notes", "repeats", "measured_at")


def table_path(device: str, fp_id: str, out_dir: Path | str | None = None) -> Path:
    """``<out_dir or predictors/>/<device>/<fingerprint id>/measurements.parquet``."""
    base = Path(out_dir) if out_dir is not None else predictors_dir()
    return base / device / fp_id / TABLE_NAME


def tables(device: str, out_dir: Path | str | None = None) -> list[Path]:
    """Every table of ``device`` under ``out_dir`` (one per fingerprint), sorted."""
    base = Path(out_dir) if out_dir is not None else predictors_dir()
    return sorted((base / device).glob(f"*/{TABLE_NAME}"))


def probe_fingerprint(device: Device, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The device's fingerprint, probed on the node that holds it when Ray runs (else here)."""
    from autocomp.cluster import on_device

    return on_device(device, _probe, device.name, dict(overrides or {}))


def _probe(device_name: str, overrides: dict[str, Any]) -> dict[str, Any]:
    return get_device(device_name).fingerprint(**overrides)


# --------------------------------------------------------------------------- table I/O


def read_table(path: Path) -> pd.DataFrame:
    """A measurement table, checked for its schema; an empty frame when the file does not exist."""
    if not path.exists():
        return pd.DataFrame(columns=COLUMNS)
    try:
        df = pd.read_parquet(path)
    except Exception as e:  # pyarrow raises several types for corrupt files
        raise UserError(str(path), f"not a readable parquet table ({type(e).__name__})", "a measurement table written by `autocomp measure`") from None
    missing = [c for c in ("schema_version", "id", "candidate", "median_ms") if c not in df.columns]
    if missing:
        raise UserError(str(path), f"missing columns {missing}", f"a measurement table (schema {SCHEMA_VERSION})")
    versions = set(int(v) for v in df["schema_version"].unique())
    if versions - {SCHEMA_VERSION}:
        raise UserError(str(path), f"schema_version {sorted(versions)}", f"schema_version {SCHEMA_VERSION}")
    if "int8_export" not in df.columns:  # written before the column: the int8 export then was dequant
        df["int8_export"] = "dequant"
    return df


def write_table(df: pd.DataFrame, path: Path) -> None:
    """Atomic rewrite (temp file + rename): a crash never leaves a half-written table."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    df.to_parquet(tmp, index=False)
    os.replace(tmp, path)


# --------------------------------------------------------------------------- export


def export_candidate(candidate: Candidate, space: SearchSpace, path: Path, calib_batches: int = 2, seed: int = 0,
                     int8: Any = None) -> tuple[Path, int]:
    """Build ``candidate`` with random weights and export it compressed (:func:`export_compressed`)."""
    import torch

    from autocomp.families import get_family

    torch.manual_seed(seed)
    with torch.no_grad():
        model = get_family(space).build(candidate, space).eval()
    return export_compressed(model, candidate, space, path, calib_batches, int8)


def export_compressed(model, candidate: Candidate, space: SearchSpace, path: Path, calib_batches: int = 2,
                      int8: Any = None) -> tuple[Path, int]:
    """Compress ``model`` as ``candidate`` says (prune -> low-rank -> quantize with random calibration
    inputs) and export ONNX to ``path``. Returns (path, parameter count). ``int8``: the device's
    int8 export scheme (:class:`autocomp.measure.base.Int8Scheme`; None: ``dequant``)."""
    from autocomp.measure.base import Int8Scheme

    import torch

    from autocomp.compress import compress
    from autocomp.export import to_onnx
    from autocomp.models.mbv2 import count_params

    shape = (space.input.channels, space.input.height, space.input.width)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: more threads only fight the measurement (and other jobs)
    try:
        with torch.no_grad():
            calib = [torch.randn(8, *shape) for _ in range(calib_batches)]
            model = compress(model, candidate, None, space, calib, **(int8 or Int8Scheme()).compress_kwargs())
            params = count_params(model)
        to_onnx(model, path, shape)
    finally:
        torch.set_num_threads(threads)
    return path, params


def campaign_candidates(space: SearchSpace, n: int, seed: int) -> list[Candidate]:
    """The first ``n`` candidates of a campaign with ``seed`` (deterministic)."""
    rng = random.Random(seed)
    return [space.sample(rng) for _ in range(n)]


def measure_candidate(candidate: Candidate, space: SearchSpace, device: Device, **overrides: Any) -> dict:
    """Export and measure one candidate here (int8 exported as the device's scheme on this node, the
    one it measures on); returns the table row (without campaign fields)."""
    int8 = device.int8_scheme()
    with tempfile.TemporaryDirectory() as tmp:
        path, params = export_candidate(candidate, space, Path(tmp) / "model.onnx", int8=int8)
        onnx_bytes = path.stat().st_size
        m = device.measure(path, candidate.precision, **overrides)
    d = m.to_dict()
    d.pop("precision", None)
    return {
        "schema_version": SCHEMA_VERSION, "id": candidate.id, "space": space.name, "candidate": candidate.to_json(),
        "encoding": space.encode(candidate), "precision": candidate.precision,
        "params": int(params), "onnx_bytes": int(onnx_bytes), **d, "cpu_model": cpu_model(),
        "measured_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "int8_export": int8.label,
    }


def _remote_measure(space: SearchSpace, device: Device, overrides: dict[str, Any]) -> Callable[[Candidate], dict]:
    import ray

    @ray.remote(num_cpus=1, max_retries=1)
    def task(cand_json: str, space: SearchSpace, device_name: str, overrides: dict[str, Any]) -> dict:
        return measure_candidate(Candidate.from_json(cand_json), space, get_device(device_name), **overrides)

    fn = task.options(resources={device.resource: 1})
    return lambda c: ray.get(fn.remote(c.to_json(), space, device.name, overrides))


# --------------------------------------------------------------------------- the campaign


def run_campaign(space: SearchSpace | str, device: Device | str, n: int, out_dir: Path | str | None = None, seed: int = 0,
                 progress: bool = True, address: str | None = None, use_ray: bool | None = None,
                 on_row: Callable[[dict], Any] | None = None, overrides: dict[str, Any] | None = None,
                 candidates: Sequence[Candidate] | None = None, label: str | None = None,
                 fingerprint: dict[str, Any] | None = None, passes: int = 1) -> pd.DataFrame:
    """Measure the first ``n`` candidates of the seeded campaign (or the given ``candidates``) on
    ``device``, skipping ids already in the table of the device's fingerprint
    (``<out_dir>/<device>/<fingerprint id>/measurements.parquet``); returns that whole table.

    ``use_ray`` (default: when ``address`` is given or Ray is initialised) probes the fingerprint and
    runs each measurement as a Ray task on the node advertising ``device:<name>``. ``overrides``
    replace device options (e.g. ``{"repeats": 50, "retries": 1}``); the recorded protocol reflects them.
    ``fingerprint``: the device's, when the caller has just probed it (else it is probed here).
    ``passes``: measure every candidate of the campaign this many times, a whole pass apart, and keep
    the fastest (see the module doc).
    """
    overrides = dict(overrides or {})
    device = get_device(device) if isinstance(device, str) else device
    space = get_space(space) if isinstance(space, str) else space
    space = space.restrict_precisions(list(device.precisions))
    if n < 0:
        raise UserError("--n", f"{n} is negative", "a number of candidates >= 0")
    if passes < 1:
        raise UserError("--passes", f"{passes}", "a number of passes >= 1")
    if use_ray is None:
        try:
            import ray

            from autocomp.cluster import measures_here

            use_ray = address is not None or (ray.is_initialized() and not measures_here(device))
        except ImportError:
            use_ray = False
    if use_ray:
        from autocomp.cluster import init_ray

        init_ray(address, device)
    # on the device's node when measuring through Ray, else here (a Device need not be registered to measure here)
    fp = fingerprint if fingerprint is not None else (
        probe_fingerprint(device, overrides) if use_ray else device.fingerprint(**overrides))
    if out_dir is None:  # the shipped tables: predictors/ for the default space, predictors/spaces/<space>/ otherwise
        from autocomp.predictor import space_root

        out_dir = space_root(predictors_dir(), space.name)
    path = table_path(device.name, fingerprint_id(fp), out_dir)
    table = read_table(path)
    scheme = device.int8_scheme(fp).label
    stale = int(sum('"int8"' in c and e != scheme for c, e in zip(table["candidate"], table["int8_export"])))
    if stale:  # kept (ids are unique in a table): the fitting code must not mix them with this scheme's rows
        from rich.console import Console

        Console(stderr=True).print(f"[yellow]notice:[/] {path} holds {stale} int8 rows exported other than as "
                                   f"{scheme} (column int8_export); they are not measured again")
    wanted = list(candidates if candidates is not None else campaign_candidates(space, n, seed))
    rows = table.to_dict("records")
    by_id = {r["id"]: r for r in rows}
    todo: list[tuple[int, Candidate, int]] = []  # (campaign index, candidate, pass)
    for p in range(1, passes + 1):
        seen: set[str] = set()
        for i, c in enumerate(wanted):
            if c.id in seen:
                continue  # a duplicate sample (rare) is measured once
            seen.add(c.id)
            row = by_id.get(c.id)
            if p == 1 and row is None or p > 1 and (row is None or len(_passes(row)) < p):
                todo.append((i, c, p))
    if use_ray and todo:
        measure = _remote_measure(space, device, overrides)
    else:
        measure = lambda c: measure_candidate(c, space, device, **overrides)  # noqa: E731

    prog = None
    if progress:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        prog = Progress(TextColumn(label or f"measuring on {device.name}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.description}"))
        prog.start()
        task = prog.add_task("", total=len(todo))
    try:
        for i, cand, p in todo:
            t0 = time.perf_counter()
            new = {**measure(cand), "seed": seed, "index": i}
            old = by_id.get(cand.id)
            if old is None:
                row = {**new, "pass_ms": [new["median_ms"]]}
                rows.append(row)
                by_id[cand.id] = row
            else:  # a later pass: keep the faster figures, record every pass
                row = old
                row["pass_ms"] = _passes(old) + [new["median_ms"]]
                if new["median_ms"] < old["median_ms"]:
                    row.update({k: new[k] for k in PASS_FIELDS})
            write_table(pd.DataFrame(rows, columns=COLUMNS), path)
            if on_row:
                on_row(row)
            if prog is not None:
                flag = " [yellow]flagged[/]" if row["flagged"] else ""
                prog.update(task, advance=1, description=f"pass {p} {cand.id} {new['median_ms']:.3f} ms cv {new['cv']:.2f}{flag} ({time.perf_counter() - t0:.1f}s)")
    finally:
        if prog is not None:
            prog.stop()
    return pd.DataFrame(rows, columns=COLUMNS)


def _passes(row: dict) -> list[float]:
    """The per-pass medians of a table row (rows from before passes count as one pass)."""
    v = row.get("pass_ms")
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return [float(row["median_ms"])]
    return [float(x) for x in v]


def noise_floor(candidate: Candidate, space: SearchSpace, device: Device, repeats: int = 5, **overrides: Any) -> dict:
    """Measure one model ``repeats`` times (fresh sessions): the run-to-run CV of the median and
    the mean within-run CV — the floor below which predictor error cannot go."""
    with tempfile.TemporaryDirectory() as tmp:
        path, _ = export_candidate(candidate, space, Path(tmp) / "model.onnx", int8=device.int8_scheme())
        ms = [device.measure(path, candidate.precision, **overrides) for _ in range(repeats)]
    med = np.array([m.median_ms for m in ms])
    return {
        "id": candidate.id, "repeats": repeats, "medians_ms": med.round(4).tolist(),
        "between_run_cv": float(med.std(ddof=1) / med.mean()) if repeats > 1 else 0.0,
        "within_run_cv": float(np.mean([m.cv for m in ms])),
    }


CONV_OPS = {"Conv", "FusedConv", "QLinearConv", "NhwcFusedConv", "NhwcConv"}  # the profiled nodes that are convs


def profile(candidates: Sequence[Candidate], ids: Sequence[str], space: SearchSpace, device: Any, runs: int = 25,
            progress: Any = None) -> pd.DataFrame:
    """Profile each candidate (exported as a campaign exports it) under ONNX Runtime on this host:
    the rows of ``layers.parquet`` (:mod:`autocomp.predictor.layers`): per conv node, in execution
    order, its median time. A candidate whose conv nodes do not pair one to one with its layer
    table's conv rows (ONNX Runtime rewrote the graph beyond one node per conv) gets no rows.
    ``progress``: called once per candidate."""
    from autocomp.measure.onnxruntime import session
    from autocomp.predictor.layers import conv_features

    batch = int(device.options.get("batch", 1))
    threads = int(device.options.get("threads", 1))
    _, owner = conv_features(candidates, space)
    n_convs = np.bincount(owner, minlength=len(candidates))
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for cid, c, n in zip(ids, candidates, n_convs):
            path, _ = export_candidate(c, space, tmp / "m.onnx", int8=device.int8_scheme())
            sess = session(path, threads=threads, profile_prefix=str(tmp / "profile"))
            shape = [batch if not isinstance(d, int) else d for d in sess.get_inputs()[0].shape]
            feed = {sess.get_inputs()[0].name: np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
            for _ in range(runs + 3):
                sess.run(None, feed)
            trace = Path(sess.end_profiling())
            events = json.loads(trace.read_text())
            trace.unlink()
            order, times = [], defaultdict(list)
            run_ms = float(np.median([e["dur"] for e in events if e.get("name") == "model_run"][3:])) / 1000.0
            for e in events:
                if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["args"].get("op_name") in CONV_OPS:
                    if e["name"] not in times:
                        order.append(e["name"])
                    times[e["name"]].append(e["dur"])
            if len(order) == n:
                out += [(str(cid), j, float(np.median(times[name][3:] or times[name])), run_ms) for j, name in enumerate(order)]
            if progress is not None:
                progress()
    return pd.DataFrame(out, columns=["id", "conv", "us", "run_ms"])


def extend_profile(table: Path, candidates: Sequence[Candidate], space: SearchSpace, device: Any, runs: int = 25,
                   progress: Any = None, again: bool = False) -> pd.DataFrame:
    """Profile those of ``candidates`` (rows of ``table``, a table of this device's host) that the layer
    profile beside it lacks (all of them with ``again``), on the device's node when Ray runs, and write
    the merged profile there (``layers.parquet``); returns it."""
    from autocomp.cluster import measures_here, on_device
    from autocomp.predictor.layers import PROFILE_NAME, read_profile

    out = Path(table).parent / PROFILE_NAME
    done = read_profile(out) if out.exists() else pd.DataFrame(columns=["id", "conv", "us", "run_ms"])
    todo = [c for c in candidates if again or c.id not in set(done["id"])]
    if again:
        done = done[~done["id"].isin({c.id for c in todo})]
    if not todo:
        return done
    ids = [c.id for c in todo]
    if measures_here(device):
        new = profile(todo, ids, space, device, runs, progress)
    else:  # (no progress from another node)
        new = on_device(device, profile, todo, ids, space, device, runs)
    prof = pd.concat([done, new], ignore_index=True) if len(done) else new
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(PROFILE_NAME + ".tmp")
    prof.to_parquet(tmp, index=False)
    tmp.replace(out)
    return prof
