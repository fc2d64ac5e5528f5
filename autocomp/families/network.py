"""The ``network`` family: the user's own trained CNN (``--model torchvision:resnet18 --weights w.pt``
or ``--model package.module:factory``, input ``--input 3x224x224``; from Python, the nn.Module object
itself: :func:`live_space`, whose copy Ray's workers receive through the object store, see
:class:`LiveModule`).

Its space is derived from the network (:func:`derive_space`, ``autocomp space --model ... --write``):

* **blocks**: the children of an ``nn.Sequential`` that are modules with convolutions of their own
  (a ResNet's BasicBlocks, a MobileNet's inverted residuals); what runs before the first block is
  the *stem*, what runs after the last the *head* (each a layer group of its own);
* **depth**: a block whose input and output shapes match can be skipped. A stage is a block that
  cannot be skipped followed by the skippable ones after it; its depth gene keeps the first ``d``;
* **keep** (per block): the share of the channels kept in every channel group of Torch-Pruning's
  dependency graph that lies wholly inside the block (a BasicBlock's inner channels, an inverted
  residual's hidden channels, a squeeze-excitation's); kept counts are rounded to multiples of
  ``round_to`` (8). Channel groups coupled across blocks by residual adds are not pruned;
* **rank** (per block): the low-rank ratio of the block's dense convolutions (SVD for 1x1,
  Tucker-2 for kxk, where it makes the layer smaller);
* **precision**: per block, stem and head.

A candidate starts from the user's weights: skipped blocks are removed, the rest pruned and
factorised (the compress chain), BatchNorm recalibrated, recovered by a short distillation from the
unmodified network (``--recovery-steps``, ``EvalSettings.finetune_steps``; 0: none), quantized, exported. The
unmodified network is the family's teacher. Its layer table is computed from the traced shapes
and the dependency graph, without building the candidate.
"""

from __future__ import annotations

import copy
import functools
import importlib
import math
import operator
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import PrivateAttr

from autocomp.errors import UserError
from autocomp.families import Family, Layer, LayerGroup, register
from autocomp.space import Candidate, NetworkSpec, SearchSpace

ROUND_TO = 8
MODEL_HELP = "'torchvision:NAME' (with --weights) or 'package.module:factory' returning an nn.Module"


def parse_input(text: str) -> tuple[int, int, int]:
    """``3x224x224`` -> (3, 224, 224)."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*[xX]\s*(\d+)\s*", str(text))
    if not m or min(int(g) for g in m.groups()) <= 0:
        raise UserError("--input", f"cannot read {text!r}", "CxHxW with positive integers, e.g. 3x224x224")
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


def kept(size: int, keep: float, round_to: int = ROUND_TO) -> int:
    """Channels a group of ``size`` keeps at ratio ``keep``: a multiple of ``round_to``, at least one
    multiple, never more than ``size`` (a group of at most ``round_to`` channels is left whole)."""
    if keep >= 1.0 or size <= round_to:
        return size
    return min(size, max(round_to, round_to * round(size * keep / round_to)))


# --------------------------------------------------------------------------- loading the user's network


def _state_dict(weights: str) -> dict:
    from autocomp.models import load_weights
    import torch

    sd = load_weights(weights, "--weights", "a state_dict of tensors saved with torch.save (not a pickled model)")
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise UserError("--weights", f"{weights!r} is not a state_dict", "a dict of parameter name -> tensor")
    return sd


def _load_into(model, sd: dict, spec: str, weights: str) -> None:
    try:
        model.load_state_dict(sd)
    except RuntimeError as e:
        lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
        why = lines[1] if len(lines) > 1 else lines[0]
        raise UserError("--weights", f"{weights} does not fit {spec} ({why[:160]})", f"a state_dict of {spec}") from None


def load_network(spec: str, weights: str | None = None):
    """The user's network in eval mode, its weights loaded (``torch.load(weights_only=True)``)."""
    from torch import nn

    if spec.startswith("torchvision:"):
        import torchvision

        name = spec.split(":", 1)[1]
        if name not in torchvision.models.list_models(module=torchvision.models):
            raise UserError("--model", f"unknown torchvision model {name!r}", "a name from torchvision.models.list_models()")
        if weights is None:
            raise UserError("--weights", f"{spec} needs the trained weights", "a state_dict path (torch.load(weights_only=True))")
        sd = _state_dict(weights)
        probe = torchvision.models.get_model(name, weights=None)
        last = [n for n, m in probe.named_modules() if isinstance(m, nn.Linear)]
        num_classes = sd[f"{last[-1]}.weight"].shape[0] if last and f"{last[-1]}.weight" in sd else 1000
        try:
            model = torchvision.models.get_model(name, weights=None, num_classes=int(num_classes))
        except Exception as e:  # noqa: BLE001 - a builder's own refusal
            raise UserError("--model", f"cannot build {spec} ({type(e).__name__}: {str(e)[:120]})", MODEL_HELP) from None
        _load_into(model, sd, spec, weights)
        return model.eval()
    if spec.startswith("python:"):  # what autocomp.search records for an nn.Module object it was handed
        raise UserError("--model", f"the run's network {spec[:60]!r} was a Python object handed to autocomp.search; it cannot be rebuilt here",
                        "the Python session that holds the object: the Run autocomp.search(model, ...) returned (run.export), "
                        "or autocomp.search(model, ..., out=RUN_DIR, resume=True)")
    mod_name, _, fn_name = spec.partition(":")
    if not mod_name or not fn_name:
        raise UserError("--model", f"{spec!r} is neither 'torchvision:NAME' nor 'module:factory'", MODEL_HELP)
    try:
        mod = importlib.import_module(mod_name)
    except Exception as e:  # noqa: BLE001 - ImportError or an error inside the user's module
        raise UserError("--model", f"cannot import module {mod_name!r} ({type(e).__name__}: {str(e)[:120]})", MODEL_HELP) from None
    fn = getattr(mod, fn_name, None)
    if not callable(fn):
        raise UserError("--model", f"module {mod_name!r} has no callable {fn_name!r}", MODEL_HELP)
    try:
        model = fn()
    except Exception as e:  # noqa: BLE001
        raise UserError("--model", f"{spec}() failed ({type(e).__name__}: {str(e)[:120]})", MODEL_HELP) from None
    if not isinstance(model, nn.Module):
        raise UserError("--model", f"{spec}() returned {type(model).__name__}", "an nn.Module")
    if weights is not None:
        _load_into(model, _state_dict(weights), spec, weights)
    return model.eval()


# --------------------------------------------------------------------------- the traced structure


@dataclass
class ConvInfo:
    path: str
    linear: bool
    cin: int
    cout: int
    kernel: int
    stride: int
    groups: int
    in_hw: int
    out_hw: int
    out_side: int
    owner: str  # "stem" | "head" | block path
    in_group: int | None = None  # index into Structure.groups (internal channel groups only)
    out_group: int | None = None


@dataclass
class BlockInfo:
    path: str
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    adds: int
    groups: list[int] = field(default_factory=list)  # internal channel groups

    @property
    def skippable(self) -> bool:
        return self.in_shape == self.out_shape


@dataclass
class Structure:
    """What the family knows of a user's network (traced once per model, weights and input)."""

    model: Any
    input: tuple[int, int, int]
    num_classes: int
    blocks: list[BlockInfo]
    convs: list[ConvInfo]
    stem: list[str]
    head: list[str]
    group_sizes: list[int]
    stem_side: int  # spatial side entering the first block

    def block_index(self) -> dict[str, int]:
        return {b.path: i for i, b in enumerate(self.blocks)}


def _has_conv(m) -> bool:
    from torch import nn

    return any(isinstance(x, nn.Conv2d) for x in m.modules())


def _find_blocks(model) -> list[str]:
    from torch import nn

    found: list[str] = []

    def visit(mod, path: str) -> None:
        for name, child in mod.named_children():
            p = f"{path}.{name}" if path else name
            if (isinstance(mod, nn.Sequential) and not isinstance(child, nn.Sequential)
                    and len(list(child.children())) > 0 and _has_conv(child)):
                found.append(p)
            else:
                visit(child, p)

    visit(model, "")
    return found


def _count_adds(block) -> int:
    import torch
    import torch.fx

    try:
        g = torch.fx.symbolic_trace(block).graph
    except Exception:  # noqa: BLE001 - not traceable by fx: a shape-preserving block is taken as residual
        return -1
    n = 0
    for node in g.nodes:
        if node.op == "call_function" and node.target in (operator.add, operator.iadd, torch.add):
            n += 1
        elif node.op == "call_method" and node.target in ("add", "add_"):
            n += 1
    return n


def _inside(path: str, block: str) -> bool:
    return path == block or path.startswith(block + ".")


@functools.lru_cache(maxsize=8)
def _structure(spec: str, weights: str | None, input_shape: tuple[int, int, int], _mtime: float) -> Structure:
    return _trace(load_network(spec, weights), spec, input_shape)


def _trace(model, spec: str, input_shape: tuple[int, int, int], field: str = "--model") -> Structure:
    """The structure of ``model`` (eval mode, not the user's own object: hooks and tracing run on it)."""
    import torch
    import torch_pruning as tp
    from torch import nn

    names = {id(m): n for n, m in model.named_modules()}
    blocks = _find_blocks(model)
    if not blocks:
        raise UserError(field, f"no blocks found in {spec} (no nn.Sequential of modules with convolutions)",
                        "a CNN whose stages are nn.Sequential containers of blocks (torchvision ResNet, MobileNet, ...)")
    x = torch.zeros(1, *input_shape)
    shapes: dict[str, tuple] = {}
    order: list[str] = []

    def hook(m, inp, out):
        n = names[id(m)]
        shapes[n] = (tuple(inp[0].shape), tuple(out.shape) if isinstance(out, torch.Tensor) else None)
        order.append(n)

    watched = [m for n, m in model.named_modules() if n in set(blocks) or isinstance(m, (nn.Conv2d, nn.Linear))
               or (n and not list(m.children()) and any(True for _ in m.parameters(recurse=False)))]
    handles = [m.register_forward_hook(hook) for m in watched]
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as e:  # noqa: BLE001
        raise UserError(field, f"{spec} fails on input {'x'.join(map(str, input_shape))} ({type(e).__name__}: {str(e)[:120]})",
                        f"a model that accepts N x C x H x W images of the {'input' if field == 'model' else '--input'} size") from None
    finally:
        for h in handles:
            h.remove()
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise UserError(field, f"{spec} returns {type(out).__name__ if not isinstance(out, torch.Tensor) else tuple(out.shape)}",
                        "logits of shape (N, classes)")
    blocks = [b for b in blocks if b in shapes]
    pos = {n: i for i, n in enumerate(order)}
    first_block, last_block = min(pos[b] for b in blocks), max(pos[b] for b in blocks)

    def owner(path: str, at: int) -> str:
        for b in blocks:
            if _inside(path, b):
                return b
        return "stem" if at < first_block else "head"

    # the dependency graph: channel groups that lie wholly inside one block
    try:
        ignored = [m for m in model.modules() if isinstance(m, nn.Linear)][-1:]
        with torch.enable_grad():  # traced through autograd
            dg = tp.DependencyGraph().build_dependency(model, example_inputs=x)
        raw_groups = list(dg.get_all_groups(ignored_layers=ignored, root_module_types=[nn.Conv2d, nn.Linear]))
    except Exception as e:  # noqa: BLE001
        raise UserError(field, f"{spec} cannot be traced by Torch-Pruning's dependency graph ({type(e).__name__}: {str(e)[:120]})",
                        "a model built from standard torch.nn layers") from None
    binfo = {b: BlockInfo(b, shapes[b][0][1:], shapes[b][1][1:] if shapes[b][1] else (), _count_adds(model.get_submodule(b))) for b in blocks}
    for b in binfo.values():
        if b.adds < 0:
            b.adds = 1 if b.skippable else 0
    member: dict[tuple[str, str], int] = {}
    sizes: list[int] = []
    for g in raw_groups:
        deps = [(names.get(id(d.target.module)), d.handler.__name__) for d, _ in g]
        named = [(n, h) for n, h in deps if n]
        home = next((b for b in blocks if named and all(_inside(n, b) for n, _ in named)), None)
        if home is None:
            continue
        gi = len(sizes)
        sizes.append(len(g[0].idxs))
        binfo[home].groups.append(gi)
        for n, h in named:
            member[(n, "out" if "out" in h else "in")] = gi
    convs = []
    for n in order:
        m = model.get_submodule(n)
        if not isinstance(m, (nn.Conv2d, nn.Linear)) or n in {c.path for c in convs}:
            continue
        (ins, outs) = shapes[n]
        lin = isinstance(m, nn.Linear)
        c = ConvInfo(n, lin, m.in_features if lin else m.in_channels, m.out_features if lin else m.out_channels,
                     1 if lin else m.kernel_size[0], 1 if lin else m.stride[0], 1 if lin else m.groups,
                     1 if lin else ins[2] * ins[3], 1 if lin else outs[2] * outs[3], 1 if lin else outs[2], owner(n, pos[n]))
        c.out_group = member.get((n, "out"))
        c.in_group = member.get((n, "in"))
        if not lin and c.groups > 1 and c.groups == c.cin == c.cout:  # depthwise: its input is its output group
            c.in_group = c.out_group
        convs.append(c)

    def pure(side: str) -> list[str]:
        """Maximal modules outside the blocks whose parameter layers all run on ``side``."""
        leaves = {n: owner(n, pos[n]) for n in order if n not in blocks and not any(_inside(n, b) for b in blocks)}
        out: list[str] = []

        def visit(mod, path: str) -> None:
            for name, child in mod.named_children():
                p = f"{path}.{name}" if path else name
                if any(_inside(b, p) for b in blocks):
                    if p not in blocks:
                        visit(child, p)
                    continue
                mine = [leaves[q] for q in leaves if _inside(q, p)]
                if mine and all(s == side for s in mine):
                    out.append(p)
                elif mine:
                    visit(child, p)

        visit(model, "")
        return out

    stem_side = shapes[blocks[0]][0][2] if len(shapes[blocks[0]][0]) == 4 else 1
    ordered = sorted(blocks, key=lambda b: pos[b])
    return Structure(model, input_shape, int(out.shape[1]), [binfo[b] for b in ordered], convs, pure("stem"), pure("head"),
                     sizes, stem_side)


_STRUCTURE_LOCK = threading.Lock()


def structure(spec: str, weights: str | None, input_shape: tuple[int, int, int]) -> Structure:
    mtime = Path(weights).stat().st_mtime if weights and Path(weights).is_file() else 0.0
    # one at a time: the latency predictor scores candidates on threads, and torch.fx's tracing (in
    # _count_adds) patches nn.Module.__call__ process-wide, which broke another thread's forward pass
    # (NameError: module is not installed as a submodule); the others then find it in the cache
    with _STRUCTURE_LOCK:
        return _structure(spec, weights, tuple(input_shape), mtime)


def structure_of(space: SearchSpace) -> Structure:
    if space.network is None:
        raise UserError("network", f"space {space.name!r} of family network names no network", "a 'network: {model: ..., weights: ...}' mapping")
    shape = (space.input.channels, space.input.height, space.input.width)
    if isinstance(space.network, LiveNetwork):
        return space.network.structure(shape)
    if space.network.model.startswith("python:"):  # the space of an object, read back from JSON (a saved predictor)
        key = _live_key(space)
        if key is not None:
            return _live_structure(key, shape)
    return structure(space.network.model, space.network.weights, shape)


# --------------------------------------------------------------------------- the derived space


def _stages(st: Structure) -> list[list[int]]:
    """Block indices per stage: a block that cannot be skipped starts a stage (and so does the first)."""
    out: list[list[int]] = []
    for i, b in enumerate(st.blocks):
        if not out or not b.skippable:
            out.append([i])
        else:
            out[-1].append(i)
    return out


def derive_space(spec: str, weights: str | None, input_shape: tuple[int, int, int], name: str | None = None,
                 keep_ratio: tuple[float, ...] = (1.0, 0.75, 0.5), rank_ratio: tuple[float, ...] = (1.0, 0.5),
                 precision: tuple[str, ...] = ("fp32", "fp16", "int8")) -> SearchSpace:
    """The search space of the user's network (see the module docs)."""
    st = structure(spec, weights, input_shape)
    model_name = spec.split(":", 1)[1] if spec.startswith("torchvision:") else spec.replace(":", ".")
    network = {"model": spec, "weights": str(Path(weights).resolve()) if weights else None}
    return _space_of(st, spec, network, name or f"{model_name}-{'x'.join(map(str, input_shape))}", keep_ratio, rank_ratio, precision)


def _space_of(st: Structure, spec: str, network, name: str, keep_ratio: tuple[float, ...] = (1.0, 0.75, 0.5),
              rank_ratio: tuple[float, ...] = (1.0, 0.5), precision: tuple[str, ...] = ("fp32", "fp16", "int8"),
              field: str = "--model") -> SearchSpace:
    input_shape = st.input
    stages = []
    kernels = {}
    for c in st.convs:
        kernels.setdefault(c.owner, set()).add(c.kernel)
    for idx in _stages(st):
        first = st.blocks[idx[0]]
        side_in = first.in_shape[1] if len(first.in_shape) == 3 else 1
        side_out = first.out_shape[1] if len(first.out_shape) == 3 else 1
        ks = sorted(k for i in idx for k in kernels.get(st.blocks[i].path, {1}) if k % 2 == 1) or [1]
        stages.append({
            "stride": 2 if side_out < side_in else 1,
            "depth": list(range(1, len(idx) + 1)),
            "width": [int(st.blocks[idx[-1]].out_shape[0])],
            "kernel": [ks[-1]], "expand": [1],
            "prunable": any(any(st.group_sizes[g] > ROUND_TO for g in st.blocks[i].groups) for i in idx),
        })
    stem_c = next((c.cout for c in st.convs if c.owner == "stem"), input_shape[0])
    head_c = next((c.cout for c in st.convs if c.owner == "head"), st.num_classes)
    raw = {
        "name": name,
        "family": "network",
        "network": network,
        "input": {"channels": input_shape[0], "height": input_shape[1], "width": input_shape[2]},
        "num_classes": st.num_classes,
        "stem": {"width": [int(stem_c)]},
        "stages": stages,
        "head": {"width": [int(head_c)]},
        "compression": {"keep_ratio": list(keep_ratio), "rank_ratio": list(rank_ratio), "precision": list(precision)},
    }
    try:
        return SearchSpace.model_validate(raw)
    except Exception as e:  # noqa: BLE001 - a network whose shape the schema cannot express
        raise UserError(field, f"cannot derive a search space from {spec} ({str(e).splitlines()[0][:160]})",
                        "a CNN of blocks with stride 1 or 2") from None


def space_yaml(space: SearchSpace) -> str:
    import yaml

    head = (f"# The search space of {space.network.model if space.network else space.name}, derived by `autocomp space`.\n"
            "# Blocks, widths and strides are the network's; edit the depth lists (which blocks may be skipped)\n"
            "# and the compression lists (keep ratios, low-rank ratios, precisions).\n")
    return head + yaml.safe_dump(space.model_dump(mode="json", exclude_none=True), sort_keys=False, default_flow_style=None, width=120)


# --------------------------------------------------------------------------- the user's nn.Module object


_LIVE: dict[str, Any] = {}  # LiveModule key -> the private copy of the user's network, in this process


def _ray_session() -> tuple | None:
    """What identifies this process's Ray connection (None: Ray is not running here)."""
    try:
        import ray
    except ImportError:  # pragma: no cover
        return None
    if not ray.is_initialized():
        return None
    ctx = ray.get_runtime_context()
    return (ctx.gcs_address, ctx.namespace, ctx.get_job_id())


class LiveModule:
    """A handle on the nn.Module object a user handed to ``autocomp.search``: the process it was handed
    to holds a private copy (:data:`_LIVE`); pickled while Ray runs (a trial's parameters, a
    measuring task's space), the handle carries a reference to one copy of the network in Ray's object
    store, put there the first time it is shipped and fetched once per worker process. Nothing else
    pickles it: without Ray the handle carries its key alone, and no copy of the network is written to
    any file."""

    def __init__(self, key: str, ref: tuple | None = None):
        self.key, self._ref = key, ref  # _ref: (Ray session, ObjectRef) of the shipped copy

    def module(self):
        m = _LIVE.get(self.key)
        if m is None:
            if self._ref is None or self._ref[0] != _ray_session():
                raise UserError("model", f"the network object {self.key.split('@')[0]} is not in this process",
                                "autocomp.search(model, ...) in the Python session that holds the object")
            import ray

            m = _LIVE.setdefault(self.key, ray.get(self._ref[1]))
        return m

    def __reduce__(self):
        session = _ray_session()
        if session is not None and (self._ref is None or self._ref[0] != session) and self.key in _LIVE:
            import ray

            self._ref = (session, ray.put(_LIVE[self.key]))  # once per Ray session
        return (LiveModule, (self.key, self._ref if session is not None else None))

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self


class LiveNetwork(NetworkSpec):
    """The network of a space derived from an nn.Module object: ``model`` is ``python:ClassName``,
    ``weights`` the ``sha256:`` of its state_dict (config.json records both), the object rides along."""

    _handle: Any = PrivateAttr(default=None)

    def structure(self, input_shape: tuple[int, int, int]) -> Structure:
        self._handle.module()  # here: fetched from Ray's object store once per process
        return _live_structure(self._handle.key, tuple(input_shape))


@functools.lru_cache(maxsize=8)
def _live_structure(key: str, input_shape: tuple[int, int, int]) -> Structure:
    return _trace(copy.deepcopy(_LIVE[key]).eval(), key.split('@')[0], input_shape, field="model")


def _live_key(space: SearchSpace) -> str | None:
    """The key of the object in this process that ``space`` (a plain copy of a live space) was derived from."""
    sha = (space.network.weights or "").removeprefix("sha256:")
    for key in _LIVE:
        spec, _, rest = key.partition("@")
        arch, _, short = rest.partition("-")
        if spec == space.network.model and sha.startswith(short) and f"-{arch}-" in space.name:
            return key
    return None


def state_sha256(model) -> str:
    """The SHA-256 of ``model``'s state_dict: names, dtypes, shapes and the bytes of every tensor."""
    import hashlib

    import torch

    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode() + b"\0")
        if isinstance(v, torch.Tensor):
            t = v.detach().cpu().contiguous().reshape(-1)
            h.update(f"{t.dtype}{tuple(v.shape)}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        else:  # a module's extra state
            h.update(repr(v).encode())
    return h.hexdigest()


def live_space(model, input_shape: tuple[int, int, int], keep_ratio: tuple[float, ...] = (1.0, 0.75, 0.5),
               rank_ratio: tuple[float, ...] = (1.0, 0.5), precision: tuple[str, ...] = ("fp32", "fp16", "int8")) -> SearchSpace:
    """The search space of an nn.Module object (as :func:`derive_space` derives it from a spec). The
    object is copied (its copy on the CPU, in eval mode, is what the search compresses; the object
    itself is never changed), traced and exported to ONNX once at ``input_shape``: a network that
    cannot be is refused here, in one line."""
    import hashlib
    import tempfile

    from torch import nn

    from autocomp.data import _ship_by_value
    from autocomp.export import to_onnx

    if not isinstance(model, nn.Module):
        raise UserError("model", f"a {type(model).__name__}", "a torch nn.Module")
    cls = type(model).__name__
    try:
        snapshot = copy.deepcopy(model).cpu().eval()
    except Exception as e:  # noqa: BLE001 - a module holding what cannot be copied
        raise UserError("model", f"the {cls} object cannot be copied ({type(e).__name__}: {str(e)[:120]})",
                        "an nn.Module that copy.deepcopy can copy (autocomp compresses a copy, never the object)") from None
    sha = state_sha256(snapshot)
    arch = hashlib.sha256(f"{type(model).__module__}.{type(model).__qualname__}\n{snapshot!r}".encode()).hexdigest()[:8]
    spec = f"python:{cls}"
    key = f"{spec}@{arch}-{sha[:16]}"
    _LIVE.setdefault(key, snapshot)
    _ship_by_value(snapshot)  # a class from the user's own (not installed) module travels by value to Ray workers
    shape = tuple(int(v) for v in input_shape)
    st = _live_structure(key, shape)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            to_onnx(copy.deepcopy(st.model), Path(tmp) / "model.onnx", shape)
    except Exception as e:  # noqa: BLE001 - the exporter's refusal
        raise UserError("model", f"{spec} cannot be exported to ONNX at input {'x'.join(map(str, shape))} "
                        f"({type(e).__name__}: {str(e).strip().splitlines()[0][:120] if str(e).strip() else ''})",
                        "a network that torch.onnx.export handles (standard torch.nn layers)") from None
    net = LiveNetwork(model=spec, weights=f"sha256:{sha}")
    net._handle = LiveModule(key)
    name = re.sub(r"[^A-Za-z0-9._-]", "_", cls)[:60].lstrip("._-") or "network"
    return _space_of(st, spec, net, f"{name}-{arch}-{'x'.join(map(str, shape))}", keep_ratio, rank_ratio, precision, field="model")


def live_sha256(space: SearchSpace) -> str | None:
    """The state_dict hash of the nn.Module object a space was derived from (None: not from an object)."""
    return space.network.weights.removeprefix("sha256:") if isinstance(space.network, LiveNetwork) else None


# --------------------------------------------------------------------------- the family


@register("network")
class Network(Family):
    """The user's own CNN (see the module docs)."""

    def _active(self, candidate: Candidate, st: Structure) -> list[tuple[BlockInfo, Any]]:
        """(block, its gene) of every block the candidate keeps, in order."""
        out = []
        for idx, cs in zip(_stages(st), candidate.stages):
            for i, gene in zip(idx, cs.blocks):
                out.append((st.blocks[i], gene))
        return out

    def build(self, candidate: Candidate, space: SearchSpace, num_classes: int | None = None):
        """The user's network (their weights) with the blocks the candidate skips removed."""
        from torch import nn

        st = structure_of(space)
        model = copy.deepcopy(st.model)
        keep = {b.path for b, _ in self._active(candidate, st)}
        for b in st.blocks:
            if b.path not in keep:
                parent, _, attr = b.path.rpartition(".")
                setattr(model.get_submodule(parent) if parent else model, attr, nn.Identity())
        return model.eval()

    def weights(self, candidate: Candidate, space: SearchSpace, data, settings):
        st = structure_of(space)
        if data is not None and data.num_classes != st.num_classes:
            raise UserError("--data", f"dataset has {data.num_classes} classes but {space.network.model} outputs {st.num_classes}",
                            f"a dataset with {st.num_classes} classes")
        return self.build(candidate, space)

    def recover(self, model, space: SearchSpace, data, settings):
        """A short distillation from the unmodified network (``settings.finetune_steps``; 0: none)."""
        if settings.finetune_steps <= 0:
            return model
        from autocomp.distill import KDConfig, distill

        cfg = KDConfig(kinds=("logits",), steps=settings.finetune_steps, batch_size=settings.batch_size, lr=settings.lr / 3,
                       seed=settings.seed + 1, device=getattr(settings, "train_device", "auto"))
        distill(model, self.teacher(space), data, cfg, progress=False)
        return model.eval()

    def teacher(self, space: SearchSpace, data=None, weights=None, bn_batches: int = 4):
        return copy.deepcopy(structure_of(space).model).eval()

    def groups(self, candidate: Candidate, space: SearchSpace | None = None) -> list[LayerGroup]:
        st = structure_of(space)
        out = [LayerGroup("stem", tuple(st.stem), candidate.stem_precision)]
        out += [LayerGroup(b.path, (b.path,), g.precision, g.keep, g.rank) for b, g in self._active(candidate, st)]
        out.append(LayerGroup("head", tuple(st.head), candidate.head_precision))
        return out

    def prune(self, model, candidate: Candidate, space: SearchSpace, importance: Any = "l1", batches=None):
        """Prune each kept block's internal channel groups to its keep ratio (Torch-Pruning)."""
        import torch
        import torch_pruning as tp
        from torch import nn

        from autocomp.compress.prune import _tp_importance, accumulate_gradients, get_importance

        st = structure_of(space)
        keeps = {b.path: g.keep for b, g in self._active(candidate, st) if g.keep < 1.0}
        if not keeps:
            return model
        imp = get_importance(importance)
        if getattr(imp, "needs_grad", False):
            if batches is None:
                raise ValueError("Taylor importance needs batches=[(x, y), ...] to compute gradients")
            accumulate_gradients(model, batches)
        names = {id(m): n for n, m in model.named_modules()}
        ignored = [m for m in model.modules() if isinstance(m, nn.Linear)][-1:]
        with torch.enable_grad():  # the graph is traced through autograd (callers may run under no_grad)
            dg = tp.DependencyGraph().build_dependency(model, example_inputs=torch.zeros(1, *st.input))
        roots = []
        for g in dg.get_all_groups(ignored_layers=ignored, root_module_types=[nn.Conv2d, nn.Linear]):
            named = [names.get(id(d.target.module)) for d, _ in g]
            named = [n for n in named if n]
            home = next((b for b in keeps if named and all(_inside(n, b) for n in named)), None)
            if home is not None:
                roots.append((g[0].dep.target.module, g[0].dep.handler, len(g[0].idxs), keeps[home]))
        scorer = _tp_importance(imp)
        for module, handler, size, keep in roots:
            n_keep = kept(size, keep)
            if n_keep >= size:
                continue
            group = dg.get_pruning_group(module, handler, list(range(size)))
            scores = scorer(group)
            drop = torch.argsort(scores)[: size - n_keep].tolist()
            with torch.no_grad():
                dg.get_pruning_group(module, handler, sorted(drop)).prune()
        model.zero_grad(set_to_none=True)
        return model

    def factorize(self, model, candidate: Candidate, space: SearchSpace):
        from autocomp.compress.lowrank import factorize_model

        st = structure_of(space)
        for b, g in self._active(candidate, st):
            if g.rank < 1.0:
                factorize_model(model.get_submodule(b.path), g.rank)
        return model

    def layer_table(self, candidate: Candidate, space: SearchSpace) -> list[Layer]:
        from autocomp.compress.lowrank import _rank, tucker2_params

        st = structure_of(space)
        active = {b.path: g for b, g in self._active(candidate, st)}
        n_levels = 1 + sum(1 for s in space.stages if s.stride == 2)
        blocks = {b.path: b for b in st.blocks}

        def level(side: int) -> int:
            return max(0, min(n_levels - 1, round(math.log2(max(st.stem_side, 1) / max(side, 1)))))

        def size(gi: int | None, full: int, keep: float) -> int:
            return full if gi is None else kept(full, keep)

        rows: list[Layer] = []
        for c in st.convs:
            if c.owner in ("stem", "head"):
                prec = candidate.stem_precision if c.owner == "stem" else candidate.head_precision
                gene_keep, gene_rank, group = 1.0, 1.0, c.owner
            elif c.owner in active:
                g = active[c.owner]
                prec, gene_keep, gene_rank, group = g.precision, g.keep, g.rank, c.owner
            else:
                continue  # a skipped block
            cin, cout = size(c.in_group, c.cin, gene_keep), size(c.out_group, c.cout, gene_keep)
            lv = 0 if c.owner == "stem" else (n_levels - 1 if c.owner == "head" else level(c.out_side))
            if c.linear:
                r = _rank(gene_rank, min(cin, cout))
                if gene_rank < 1.0 and r * (cin + cout) < cin * cout:
                    rows += [Layer("gemm", "fc", cin, r, 1, 1, 1, 1, 1, prec, lv, group),
                             Layer("gemm", "fc", r, cout, 1, 1, 1, 1, 1, prec, lv, group)]
                else:
                    rows.append(Layer("gemm", "fc", cin, cout, 1, 1, 1, 1, 1, prec, lv, group))
                continue
            groups = cin if c.groups > 1 and c.groups == c.cin == c.cout else c.groups
            kind = "dw" if groups > 1 and groups == cin == cout else ("pw" if c.kernel == 1 else "full")
            k, s = c.kernel, c.stride
            if gene_rank < 1.0 and groups == 1 and k == 1:
                r = _rank(gene_rank, min(cin, cout))
                if r * (cin + cout) < cin * cout:
                    rows += [Layer("conv", "pw", cin, r, 1, s, 1, c.in_hw, c.out_hw, prec, lv, group),
                             Layer("conv", "pw", r, cout, 1, 1, 1, c.out_hw, c.out_hw, prec, lv, group)]
                    continue
            if gene_rank < 1.0 and groups == 1 and k > 1:
                r_in, r_out = _rank(gene_rank, cin), _rank(gene_rank, cout)
                if tucker2_params(cin, cout, k * k, r_in, r_out) < cout * cin * k * k:
                    rows += [Layer("conv", "pw", cin, r_in, 1, 1, 1, c.in_hw, c.in_hw, prec, lv, group),
                             Layer("conv", "full", r_in, r_out, k, s, 1, c.in_hw, c.out_hw, prec, lv, group),
                             Layer("conv", "pw", r_out, cout, 1, 1, 1, c.out_hw, c.out_hw, prec, lv, group)]
                    continue
            rows.append(Layer("conv", kind, cin, cout, k, s, groups, c.in_hw, c.out_hw, prec, lv, group))
        # residual adds, after the last layer of their block
        out: list[Layer] = []
        for i, r in enumerate(rows):
            out.append(r)
            nxt = rows[i + 1].group if i + 1 < len(rows) else None
            b = blocks.get(r.group)
            if b is not None and nxt != r.group and b.adds > 0:
                shape = b.out_shape
                hw = shape[1] * shape[2] if len(shape) == 3 else 1
                for _ in range(b.adds):
                    out.append(Layer("add", "pw", r.cout, r.cout, 1, 1, 1, hw, hw, r.precision, r.level, r.group, residual=True))
        return out


def space_for(space: str, model: str | None = None, weights: str | None = None, input_shape: str | None = None) -> SearchSpace:
    """The space of a run: the user's network's (``model`` given: derived, see :func:`derive_space`)
    or the named / YAML space. ``weights`` other than a path (auto, supernet, scratch) mean none."""
    from autocomp.space import get_space

    if not model:
        return get_space(space)
    if weights in ("auto", "supernet", "scratch"):
        weights = None
    return derive_space(model, weights, parse_input(input_shape or "3x224x224"))
