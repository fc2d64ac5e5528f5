"""The end of a run: distil the winners from the teacher, export them, verify them on the device.

For the top-k candidates under the budget (most accurate first): weights -> prune -> low-rank ->
int8 fake-quant (calibrated) -> distillation from the teacher (QAT through the int8 layers) -> fp16
casts -> ONNX (opset >= 17, checker, QDQ placement checked against the policy, outputs compared
with PyTorch on real test images) -> latency on the target device with the predictor's protocol.
A winner measured over budget is flagged and the next candidate is promoted in its place.

Artifacts per winner: ``<run>/models/<id>/`` model.onnx, policy.json, metrics.json, trtexec.sh
(and model.engine when TensorRT is importable).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import replace
from pathlib import Path

import torch
from rich.console import Console
from torch import nn

from autocomp.compress import apply_fp16 as compress_fp16
from autocomp.data import Dataset
from autocomp.distill import KDConfig, distill
from autocomp.errors import UserError
from autocomp.evaluate import EvalSettings, _chain
from autocomp.export import OPSET, check_onnx, compare_outputs, to_onnx, trtexec_script
from autocomp.measure import Device
from autocomp.measure.base import Int8Scheme
from autocomp.measure.onnxruntime import ACCURACY_BATCH
from autocomp.measure.onnxruntime import accuracies as ort_accuracies
from autocomp.families import get_family
from autocomp.measure.trtexec import onnx_policy
from autocomp.models.mbv2 import count_params
from autocomp.rundir import load_context, positive_ms, under_budget
from autocomp.space import Candidate, SearchSpace

SCHEMA_VERSION = 1
# test images on which PyTorch and ONNX Runtime outputs are compared (a check of the export: the
# accuracies come from the whole splits; 256 cost 6.5 s on a fake-quant int8 model, 64 cost 1.6 s)
COMPARE_IMAGES = 64


def _without_fp16(c: Candidate) -> Candidate:
    """The same policy with fp16 groups left in fp32 (fp16 casts are applied after distillation)."""
    f = lambda p: "fp32" if p == "fp16" else p  # noqa: E731
    stages = tuple(replace(s, blocks=tuple(replace(b, precision=f(b.precision)) for b in s.blocks)) for s in c.stages)
    return replace(c, stem_precision=f(c.stem_precision), head_precision=f(c.head_precision), stages=stages)


def apply_fp16(model: nn.Module, candidate: Candidate, space: SearchSpace | None = None) -> nn.Module:
    """The fp16 casts of the candidate's fp16 layer groups (of its family)."""
    return compress_fp16(model, candidate, None, space)


def split_accuracy(path: Path, data: Dataset, splits: tuple[str, ...] = ("val", "test")) -> dict[str, float]:
    """Accuracy of an exported model (ONNX Runtime), per split, on as many threads as PyTorch uses here
    (a Ray worker's: the CPUs it holds)."""
    return ort_accuracies(path, {s: data.batches(getattr(data, s), ACCURACY_BATCH) for s in splits}, torch.get_num_threads())


def onnx_accuracy(model: nn.Module, data: Dataset, splits: tuple[str, ...] = ("val", "test")) -> dict[str, float]:
    """Accuracy of the model as exported (ONNX Runtime), per split."""
    with tempfile.TemporaryDirectory() as tmp:
        return split_accuracy(to_onnx(model, Path(tmp) / "m.onnx", data.input_shape), data, splits)


def onnx_precision_report(path: Path, candidate: Candidate, space: SearchSpace | None = None) -> tuple[dict[str, int], list[str]]:
    """Conv/Gemm node counts by effective precision, and mismatches with the candidate's policy."""
    from autocomp.compress.inspect import check_placement, layer_precisions

    counts: dict[str, int] = {}
    for lp in layer_precisions(path):
        counts[lp.precision] = counts.get(lp.precision, 0) + 1
    return counts, check_placement(path, candidate, None, space)


def export_winner(
    candidate: Candidate, space: SearchSpace, data: Dataset, device: Device, teacher: nn.Module | None, out_dir: Path,
    settings: EvalSettings, kd: KDConfig | None, predicted_latency_ms: float | None = None, budget_ms: float | None = None,
    console: Console | None = None, int8: Int8Scheme | None = None,
) -> dict:
    """Distil (when ``teacher`` and ``kd`` are given), export and verify one candidate into ``out_dir``.
    ``int8``: the int8 export scheme (a search's row records the one it scored with); None: the device's."""
    from autocomp.evaluate import device_int8_scheme

    console = console or Console()
    space.validate_candidate(candidate)
    out_dir.mkdir(parents=True, exist_ok=True)
    int8 = int8 or device_int8_scheme(device)
    # weights -> prune -> low-rank -> BN recalibration -> recovery -> int8 (fp16 casts after distillation)
    model = _chain(candidate, space, data, settings, "no-fp16", int8)
    macs = int(sum(layer.macs for layer in get_family(space).layer_table(candidate, space)))
    distilled = teacher is not None and kd is not None and kd.steps > 0
    # without distillation the model scored "before" is the one exported: it is scored once, below
    before = onnx_accuracy(apply_fp16(_clone(model), candidate, space), data) if distilled else None
    kd_summary = None
    if distilled:
        console.print(f"  distilling {candidate.id} ({'+'.join(kd.kinds)}, {kd.steps} steps; int8 layers trained through fake-quant)")
        kd_summary = distill(model, teacher, data, kd)
    model = apply_fp16(model, candidate, space)

    onnx_path = to_onnx(model, out_dir / "model.onnx", data.input_shape)
    opset = check_onnx(onnx_path)
    layer_counts, placement_problems = onnx_precision_report(onnx_path, candidate, space)
    after = split_accuracy(onnx_path, data)
    before = before or dict(after)
    x, _ = next(data.batches(data.test, COMPARE_IMAGES))
    diff, agreement = compare_outputs(model, onnx_path, x)
    precision = candidate.precision
    (out_dir / "trtexec.sh").write_text(trtexec_script("model.onnx", precision, onnx_policy(onnx_path)))
    (out_dir / "trtexec.sh").chmod(0o755)
    engine = _maybe_build_engine(onnx_path, precision, out_dir)
    measured = device.measure(onnx_path, precision).to_dict()
    metrics = {
        "schema_version": SCHEMA_VERSION,
        "id": candidate.id,
        "summary": candidate.summary(),
        "accuracy_before": before,
        "accuracy_after": after,
        "accuracy_val": after["val"],
        "accuracy_test": after["test"],
        "distillation": {"kinds": list(kd.kinds), "steps": kd.steps, **(kd_summary or {})} if kd_summary else None,
        "predicted_latency_ms": predicted_latency_ms,
        "measured_latency_ms": measured["median_ms"],
        "measurement": measured,
        "budget_ms": budget_ms,
        "over_budget": bool(budget_ms is not None and measured["median_ms"] > budget_ms),
        "params": count_params(model),
        "macs": macs,
        "onnx_bytes": onnx_path.stat().st_size,
        "opset": opset,
        "onnx_layer_precisions": layer_counts,
        "precision_placement_problems": placement_problems,
        "max_abs_output_diff_vs_torch": diff,
        "top1_agreement_vs_torch": agreement,
        "tensorrt_engine": engine,
        "int8_export": int8.label,
    }
    (out_dir / "policy.json").write_text(json.dumps({"schema_version": SCHEMA_VERSION, "candidate": candidate.to_dict()}, indent=2))
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def _clone(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model)


def _maybe_build_engine(onnx_path: Path, precision: str, out_dir: Path) -> str | None:
    """Build and save a TensorRT engine where TensorRT is importable; None otherwise."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return None
    from autocomp.measure.tensorrt import build_engine

    engine, _ = build_engine(onnx_path, "int8" if precision == "mixed" else precision)
    path = out_dir / "model.engine"
    path.write_bytes(bytes(engine))
    return path.name


def load_policy(path: Path) -> Candidate:
    """A candidate from policy.json (ours) or a bare candidate JSON."""
    from autocomp.config import read_json_file

    raw = read_json_file(Path(path), "--policy", "a policy.json written by autocomp")
    if isinstance(raw, dict) and "candidate" in raw:
        if raw.get("schema_version") != SCHEMA_VERSION:
            raise UserError("--policy", f"schema_version {raw.get('schema_version')!r}", f"schema_version {SCHEMA_VERSION}")
        raw = raw["candidate"]
    if not isinstance(raw, dict):
        raise UserError("--policy", f"{path} holds {type(raw).__name__}", "a candidate object")
    return Candidate.from_dict(raw)


def teacher_figures(teacher: nn.Module, data: Dataset, device: Device, out_dir: Path) -> dict:
    """The teacher's accuracy (val/test, exported) and measured latency on the device."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = to_onnx(teacher, out_dir / "teacher.onnx", data.input_shape)
    acc = split_accuracy(path, data)
    lat = device.measure(path, "fp32").to_dict()
    return {"accuracy_val": acc["val"], "accuracy_test": acc["test"], "measured_latency_ms": lat["median_ms"],
            "measurement": lat, "params": count_params(teacher), "opset": OPSET}


def deploy_run(run_dir: Path, top_k: int, kd: KDConfig | None, teacher_spec: str | None = None, teacher_weights: str | None = None,
               console: Console | None = None) -> dict:
    """Distil, export and verify the top-k candidates of a finished run (the first of
    :func:`autocomp.rundir.under_budget`, over-budget ones replaced by the next); writes models/winners.json."""
    from autocomp.models.teacher import check_teacher, load_teacher

    console = console or Console()
    run = load_context(run_dir)
    budget = run.budget_ms
    queue = under_budget(run.rows, budget)
    if not queue:
        raise UserError("RUN", f"no evaluated candidate of {run_dir} fits {budget:g} ms", "a run with at least one candidate under budget")
    device, space, data, settings = run.device, run.space, run.data, run.settings
    teacher = load_teacher(teacher_spec, teacher_weights, space=space, data=data) if kd else None
    if teacher is not None:
        check_teacher(teacher, data)
    models_dir = run_dir / "models"
    teacher_info = teacher_figures(teacher, data, device, models_dir / "_teacher") if teacher is not None else None
    winners, flagged = [], []
    for row in queue:
        if len(winners) >= top_k:
            break
        cand = Candidate.from_json(row["policy"])
        console.print(f"[bold]winner candidate[/] {cand.id}: search accuracy {row['accuracy']:.4f}, {row['latency_ms']:.3f} ms")
        m = export_winner(cand, space, data, device, teacher, models_dir / cand.id, settings, kd,
                          predicted_latency_ms=positive_ms(row.get("predicted_latency_ms")), budget_ms=budget, console=console,
                          int8=Int8Scheme.from_label(row.get("int8_export")))  # as the search scored and measured it
        m["search_accuracy_val"] = row["accuracy"]
        m["search_latency_ms"] = row["latency_ms"]
        (models_dir / cand.id / "metrics.json").write_text(json.dumps(m, indent=2))
        line = (f"  {cand.id}: test accuracy {m['accuracy_before']['test']:.4f} -> {m['accuracy_test']:.4f}; "
                f"predicted {_fmt(m['predicted_latency_ms'])} ms, measured {m['measured_latency_ms']:.3f} ms")
        if m["over_budget"]:
            flagged.append(m)
            console.print(line + f" [red]over budget ({budget:g} ms): promoting the next candidate[/]")
        else:
            winners.append(m)
            console.print(line)
    out = {"schema_version": SCHEMA_VERSION, "budget_ms": budget, "teacher": teacher_info,
           "winners": winners, "over_budget": flagged}
    (models_dir / "winners.json").write_text(json.dumps(out, indent=2))
    return out


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def export_policy(candidate: Candidate, out_dir: Path, space_name: str | None = None, device_name: str = "cpu-ort",
                  data_spec: str = "mnist", settings: EvalSettings | None = None, console: Console | None = None) -> dict:
    """Export any policy (no distillation) into ``out_dir``."""
    from autocomp.data import load_dataset
    from autocomp.measure import get_device
    from autocomp.space import get_space

    space = get_space(space_name or candidate.space)
    device = get_device(device_name)
    data = load_dataset(data_spec, (space.input.channels, space.input.height, space.input.width))
    return export_winner(candidate, space, data, device, None, out_dir, settings or EvalSettings(), None, console=console)


def reexport(run_dir: Path, cand_id: str, kd: KDConfig | None, console: Console | None = None) -> dict:
    """Re-export one candidate of a run into ``<run>/models/<id>/``."""
    from autocomp.models.teacher import load_teacher

    run = load_context(run_dir)
    rows = {r["id"]: r for r in run.rows}
    if cand_id not in rows:
        raise UserError("ID", f"no candidate {cand_id!r} in {run_dir}/results.csv", f"one of {sorted(rows)[:5]}...")
    cand = Candidate.from_json(rows[cand_id]["policy"])
    teacher = load_teacher(None, None, space=run.space, data=run.data) if kd else None
    return export_winner(cand, run.space, run.data, run.device, teacher, run_dir / "models" / cand_id, run.settings, kd,
                         predicted_latency_ms=positive_ms(rows[cand_id].get("predicted_latency_ms")),
                         budget_ms=run.budget_ms, console=console, int8=Int8Scheme.from_label(rows[cand_id].get("int8_export")))
