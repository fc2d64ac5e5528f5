"""Measurement backends: the ORT clock and reference protocol, and a tiny real measurement campaign
(resume without duplicates). The TensorRT backends are tested in test_trt.py, the device registry in
test_devices.py."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import pytest

from autocomp.errors import UserError
from autocomp.measure.base import Device


# --------------------------------------------------------------------------- a tiny real campaign




def test_campaign_resume_no_duplicates(tmp_path, tiny_yaml):
    from autocomp.measure.fingerprint import fingerprint_id
    from autocomp.predictor.campaign import SCHEMA_VERSION, read_table, run_campaign, table_path, tables, write_table
    from autocomp.space import get_space

    (tmp_path / "tiny.yaml").write_text(tiny_yaml("tiny-measure"))
    space = get_space(tmp_path / "tiny.yaml")
    dev = Device("cpu-ort-test", "onnxruntime", ("fp32", "int8"),
                 {"threads": 1, "warmup": 2, "repeats": 10, "min_time_s": 0.0, "retries": 0, "clock": "thread_cpu"})
    seen: list[str] = []
    df1 = run_campaign(space, dev, 2, tmp_path, seed=0, progress=False, on_row=lambda r: seen.append(r["id"]))
    assert len(df1) == 2 and len(seen) == 2
    df2 = run_campaign(space, dev, 3, tmp_path, seed=0, progress=False, on_row=lambda r: seen.append(r["id"]))
    assert len(df2) == 3 and len(seen) == 3  # only the third candidate was measured
    run_campaign(space, dev, 3, tmp_path, seed=0, progress=False, on_row=lambda r: seen.append(r["id"]))
    assert len(seen) == 3
    # a second pass measures the first two again, keeps the faster figures and records both passes
    df3 = run_campaign(space, dev, 2, tmp_path, seed=0, progress=False, passes=2, on_row=lambda r: seen.append(r["id"]))
    assert seen[3:] == seen[:2] and len(df3) == 3
    twice = df3[df3["id"].isin(seen[:2])]
    assert all(len(p) == 2 and m == pytest.approx(min(p)) for p, m in zip(twice["pass_ms"], twice["median_ms"]))
    run_campaign(space, dev, 2, tmp_path, seed=0, progress=False, passes=2, on_row=lambda r: seen.append(r["id"]))
    assert len(seen) == 5  # resumed: both passes are done
    fid = fingerprint_id(dev.fingerprint())
    assert tables("cpu-ort-test", tmp_path) == [table_path("cpu-ort-test", fid, tmp_path)]  # one table: this fingerprint's
    table = read_table(table_path("cpu-ort-test", fid, tmp_path))
    assert table["id"].is_unique and len(table) == 3 and set(table["fingerprint_id"]) == {fid}
    row = table.iloc[0]
    assert row["schema_version"] == SCHEMA_VERSION and row["backend"] == "onnxruntime" and row["threads"] == 1
    assert row["median_ms"] > 0 and row["p90_ms"] >= row["median_ms"] * 0.5 and 0 <= row["cv"]
    assert json.loads(row["notes"])["clock"] == "thread_cpu"
    assert len(row["encoding"]) == len(space.encode(space.sample(__import__("random").Random(0))))
    # a corrupt table is a one-line UserError, and the file is left as it was
    bad = tmp_path / "bad" / "cpu-ort-test" / fid / "measurements.parquet"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not parquet")
    with pytest.raises(UserError, match="parquet"):
        run_campaign(space, dev, 1, tmp_path / "bad", progress=False)
    assert bad.read_bytes() == b"not parquet"
    write_table(pd.DataFrame({"schema_version": [99], "id": ["x"], "candidate": ["{}"], "median_ms": [1.0]}), bad)
    with pytest.raises(UserError, match="schema_version"):
        read_table(bad)


def test_measure_cli_errors_are_user_errors(tmp_path):
    from typer.testing import CliRunner

    from autocomp.measure.cli import app

    r = CliRunner().invoke(app, ["--device", "nope", "--n", "1", "--out", str(tmp_path)])
    assert isinstance(r.exception, UserError) and "--device" in str(r.exception)


def test_reference_protocol_measures_in_the_normal_phase(tmp_path, monkeypatch):
    """The reference model is a valid dynamic-batch ONNX model; its nominal latency is measured once
    and cached; a reference-protocol measurement reports real milliseconds of the candidate (close to
    a plain measurement of the same model) and records the protocol."""
    import numpy as np
    import onnx

    from autocomp.measure import reference
    from autocomp.measure.onnxruntime import measure, run_timer, session

    monkeypatch.setenv("AUTOCOMP_CACHE", str(tmp_path / "cache"))
    ref = reference.model_path()
    onnx.checker.check_model(onnx.load(str(ref)), full_check=True)
    for batch in (1, 8):
        out = session(ref).run(None, {"input": np.zeros((batch, 1, 28, 28), np.float32)})[0]
        assert out.shape == (batch, 10)
    def timer():
        return run_timer(session(ref), 1, "thread_cpu")

    nominal = reference.nominal_ms(timer, 1, 1, "thread_cpu", probes=20)
    cached = list((tmp_path / "cache" / "reference").glob("nominal-*.json"))
    assert len(cached) == 1 and nominal > 0
    assert reference.nominal_ms(timer, 1, 1, "thread_cpu", probes=20) == nominal  # from the cache, not re-measured
    # the reference itself measured with the protocol lands near its nominal latency
    m = measure(ref, device="t", precision="fp32", threads=1, warmup=5, repeats=40, min_time_s=0.2,
                clock="thread_cpu", reference=True, blocks=2)
    notes = json.loads(m.notes)
    assert notes["reference_nominal_ms"] == pytest.approx(nominal, rel=1e-3) and notes["blocks"] == 2
    assert m.statistic in ("median_fastest_blocks", "median_ref_scaled")
    assert m.flagged or m.statistic == "median_fastest_blocks"
    timed = run_timer(session(ref), 1, "thread_cpu")  # plain measurements: one session, warmed up
    for _ in range(20):
        timed()
    # the protocol reports the host's normal phase, so compare with the fastest of a few plain bursts
    # spread over a second (one burst of 16 ms can fall in a slow phase: 2x was seen in CI under load)
    bursts = []
    for _ in range(5):
        bursts.append(float(np.median([timed() for _ in range(100)])))
        time.sleep(0.2)
    plain = min(bursts)
    assert 0.5 * plain < m.median_ms < 2.0 * plain
    # reference "ratio": every block rescaled by the small reference's frames; the reference measured
    # against itself so lands at its nominal
    r = measure(ref, device="t", precision="fp32", threads=1, warmup=5, repeats=40, min_time_s=0.2,
                clock="thread_cpu", reference="ratio", blocks=2, window_s=0.5)
    notes = json.loads(r.notes)
    assert r.statistic == "median_ref_ratio" and notes["statistic"] == "ref-ratio" and notes["reference"] == f"v{reference.VERSION}"
    assert 0.8 * notes["reference_nominal_ms"] < r.median_ms < 1.25 * notes["reference_nominal_ms"]
    with pytest.raises(ValueError, match="reference mode"):
        measure(ref, device="t", precision="fp32", reference="fast")


def test_a_nominal_measured_in_a_slow_phase_is_lowered_by_later_frames(tmp_path, monkeypatch):
    """A nominal latency cached while the host was busy (here: 3x the real one, written by hand)
    would let slow blocks pass as normal forever. A measurement's frames run the reference faster
    than that, so the cache is lowered toward the real latency and remembers what it replaced; a
    nominal that is right is left alone."""
    from autocomp.measure import reference
    from autocomp.measure.onnxruntime import measure, run_timer, session

    monkeypatch.setenv("AUTOCOMP_CACHE", str(tmp_path / "cache"))
    ref = reference.model_path()
    real = reference.nominal_ms(lambda: run_timer(session(ref), 1, "thread_cpu"), 1, 1, "thread_cpu", probes=20)
    (cache,) = (tmp_path / "cache" / "reference").glob("nominal-*.json")
    record = json.loads(cache.read_text())
    cache.write_text(json.dumps({**record, "nominal_ms": 3 * real}))
    measure(ref, device="t", precision="fp32", warmup=2, repeats=20, min_time_s=0.1, clock="thread_cpu",
            reference=True, blocks=4)
    lowered = json.loads(cache.read_text())
    assert lowered["nominal_ms"] < 3 * real / reference.LOWER_MARGIN
    # the first entry is the hand-written one; a measurement may lower again below a `real` measured slow
    assert lowered["lowered_from"][0]["nominal_ms"] == pytest.approx(3 * real)
    # frames at the real speed do not lower a nominal that matches them (their quartile is not 8 % below)
    assert reference.lower_nominal(1, 1, "thread_cpu", [lowered["nominal_ms"]] * 10) is None
    assert reference.lower_nominal(1, 1, "thread_cpu", [lowered["nominal_ms"] / 2] * 3) is None  # too few frames


def test_forward_fill_of_precision_over_inactive_slots():
    import numpy as np

    from autocomp.predictor.features import _forward_fill

    active = np.array([[True, False, True, False], [False, False, False, False]])
    values = np.array([[5.0, 9.0, 7.0, 9.0], [1.0, 2.0, 3.0, 4.0]])
    out = _forward_fill(active, values, np.array([-1.0, 8.0]))
    # column i: the value of the last active slot before i (else the start); last column: after all slots
    assert out.tolist() == [[-1.0, 5.0, 5.0, 7.0, 7.0], [8.0, 8.0, 8.0, 8.0, 8.0]]


def test_accuracies_of_splits_on_two_threads_count_every_image_once(tmp_path):
    """Splits of unequal size scored by two threads from one queue give each split exactly the
    accuracy one thread gives it (a lost or doubled batch would change a count)."""
    import torch

    from autocomp.export import to_onnx
    from autocomp.measure.onnxruntime import accuracies, accuracy

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 10))
    path = to_onnx(model, tmp_path / "m.onnx", (1, 4, 4))
    splits = {name: [(torch.randn(n, 1, 4, 4), torch.randint(0, 10, (n,))) for n in sizes]
              for name, sizes in {"val": [8] * 5 + [3], "test": [8] * 37 + [1]}.items()}
    with torch.no_grad():  # the same counts from PyTorch's logits
        expected = {name: sum(int((model(x).argmax(1) == y).sum()) for x, y in b) / sum(len(y) for _, y in b)
                    for name, b in splits.items()}
    assert 0 < expected["test"] < 1
    assert accuracies(path, splits, workers=2) == pytest.approx(expected)
    assert accuracy(path, splits["test"]) == pytest.approx(expected["test"])


def test_random_weight_export_has_the_graph_of_a_trained_one(tmp_path):
    """Untrained weights give bit-identical tensors (zero biases of default-BatchNorm folds) that the
    TorchScript exporter shares through Identity nodes; ONNX Runtime then keeps those fp16 convs as
    NCHW fp16 + Casts (the same architecture timed 2.9x slower). The campaign's random-weight
    models must reach ONNX Runtime in the form trained models do: compared with the same
    architecture whose BatchNorms carry distinct, trained-like statistics (which convs ONNX Runtime
    can block depends on the host's vector width, so the reference is built on the same host)."""
    import random

    import onnx
    import onnxruntime as ort
    import torch

    from autocomp.predictor.campaign import export_candidate, export_compressed
    from autocomp.measure.onnxruntime import disabled_optimizers
    from autocomp.models.mbv2 import build
    from autocomp.space import get_space

    space = get_space("mnist-mbv2")
    rng = random.Random(3)
    cand = next(c for c in (space.sample(rng) for _ in range(50)) if c.precision == "mixed" and "fp16" in c.to_json())
    path, _ = export_candidate(cand, space, tmp_path / "m.onnx")
    assert not [n for n in onnx.load(str(path)).graph.node if n.op_type == "Identity"]

    torch.manual_seed(1)
    with torch.no_grad():
        ref = build(cand, space).eval()
        for m in ref.modules():
            if isinstance(m, torch.nn.BatchNorm2d):  # distinct statistics: nothing bit-identical to share
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
    export_compressed(ref, cand, space, tmp_path / "ref.onnx")

    def fp16_convs_left_nchw(model: Path) -> list[str]:
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.optimized_model_filepath = str(model.with_suffix(".opt.onnx"))
        ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"], disabled_optimizers=disabled_optimizers())
        opt = onnx.load(so.optimized_model_filepath).graph
        return sorted(n.name for n in opt.node if "Conv" in n.op_type and any("InsertedPrecisionFreeCast" in i for i in n.input))

    assert fp16_convs_left_nchw(path) == fp16_convs_left_nchw(tmp_path / "ref.onnx")


def test_fastest_blocks_ignore_a_slow_phase_the_reference_misses():
    """A model that runs 1.6x slower for the first half of the window (an L3-bound model while other
    tenants thrash the cache, which the small reference model does not feel) is measured at its
    normal-phase speed: the statistic is the median of the fastest normal blocks."""
    from autocomp.measure.onnxruntime import _normal_phase

    class Ref:  # the reference at its nominal speed throughout
        nominal = 0.05
        rescale = False
        seen: list = []

        def timed(self):
            return 0.05

        def observe(self, frames):
            self.seen.extend(frames)

    start = time.perf_counter()

    def timed():  # 1 ms of "work" per run, slow for the first 0.6 s
        time.sleep(0.0005)
        return 1.6 if time.perf_counter() - start < 0.6 else 1.0

    PROTOCOL = {"device": "t", "backend": "onnxruntime", "backend_version": "x", "precision": "fp32", "batch": 1,
                "threads": 1, "warmup": 0}
    ref = Ref()
    m = _normal_phase(timed, ref, repeats=20, min_time_s=0.2, blocks=4, max_time_s=3.0,
                      protocol=PROTOCOL, window_s=1.2)
    assert m.statistic == "median_fastest_blocks" and not m.flagged
    assert m.median_ms == 1.0 and time.perf_counter() - start >= 1.2
    assert len(ref.seen) >= 8  # every block was framed, and the frames went back to the reference

    # a reference that is slow throughout: nothing counts as normal, the fallback is flagged
    class SlowRef(Ref):
        def timed(self):
            return 0.09

    start = time.perf_counter()
    m = _normal_phase(timed, SlowRef(), repeats=20, min_time_s=0.2, blocks=4, max_time_s=0.8,
                      protocol=PROTOCOL, window_s=0.4)
    assert m.statistic == "median_ref_scaled" and m.flagged


def test_a_matched_reference_rescales_every_block_by_its_frames():
    """With the large (matched) reference, a phase that slows the candidate 1.6x slows the reference
    by the same factor, and every block is rescaled by its frames: the whole window counts and the
    statistic is the candidate's latency at the reference's nominal speed."""
    from autocomp.measure.onnxruntime import _normal_phase

    start = time.perf_counter()

    def slow() -> float:
        return 1.6 if time.perf_counter() - start < 0.4 else 1.0

    class Matched:
        nominal = 2.0
        rescale = True
        seen: list = []

        def timed(self):
            return 2.0 * slow()

        def observe(self, frames):
            self.seen.extend(frames)

    def timed():
        time.sleep(0.0005)
        return 3.0 * slow()

    ref = Matched()
    m = _normal_phase(timed, ref, repeats=20, min_time_s=0.2, blocks=4, max_time_s=3.0,
                      protocol={"device": "t", "backend": "onnxruntime", "backend_version": "x", "precision": "fp32",
                                "batch": 1, "threads": 1, "warmup": 0}, window_s=0.8)
    assert m.statistic == "median_ref_ratio" and not m.flagged
    assert m.median_ms == pytest.approx(3.0, rel=0.02) and m.repeats >= 4 * 5
    assert max(ref.seen) == pytest.approx(3.2) and min(ref.seen) == pytest.approx(2.0)  # both phases were framed


def test_large_inputs_are_framed_by_a_large_reference_at_their_own_size(tmp_path, monkeypatch):
    """A candidate whose input has at least LARGE_AREA pixels is measured against the large reference
    built at its input size (its own nominal, cached beside the small one's); smaller inputs keep the
    small reference. The large reference measured by the protocol lands at its own nominal."""
    import numpy as np
    import onnx

    from autocomp.measure import reference
    from autocomp.measure.onnxruntime import measure, session

    monkeypatch.setenv("AUTOCOMP_CACHE", str(tmp_path / "cache"))
    assert reference.name_for((3, 224, 224)) == f"large-v{reference.LARGE_VERSION}-3x224x224"
    assert reference.name_for((3, 32, 32)) == reference.name_for((1, 28, 28)) == reference.name_for(None) == ""
    assert reference.name_for((3, "h", "w")) == ""  # a dynamic size: the small reference
    name = reference.name_for((3, 64, 64))
    path = reference.model_path(name)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    out = session(path).run(None, {"input": np.zeros((2, 3, 64, 64), np.float32)})[0]
    assert out.shape == (2, 10)
    m = measure(path, device="t", precision="fp32", threads=1, warmup=3, repeats=20, min_time_s=0.1,
                clock="thread_cpu", reference=True, blocks=2, window_s=0.5)
    notes = json.loads(m.notes)
    assert notes["reference"] == name and notes["statistic"] == "ref-ratio" and m.statistic == "median_ref_ratio"
    record = json.loads(reference._nominal_path(1, 1, "thread_cpu", name).read_text())
    cached = [record["nominal_ms"]] + [e["nominal_ms"] for e in record.get("lowered_from", [])]  # its frames may lower it
    nominal = notes["reference_nominal_ms"]
    assert any(nominal == pytest.approx(c, rel=1e-3) for c in cached)
    assert 0.8 * nominal < m.median_ms < 1.25 * nominal  # itself, relative to itself: its nominal
    assert not reference._nominal_path(1, 1, "thread_cpu").exists()  # the small reference was not used
