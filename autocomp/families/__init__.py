"""Model families: one module per family, found by name through one registry (timm's _registry style).

A search space names its family with the YAML key ``family:`` (default ``mbv2``). A family is the
one place that knows the shape of its networks; every stage of the flow asks it:

* :meth:`Family.build` — the uncompressed network of a candidate;
* :meth:`Family.weights` — the same network with trained weights: extracted from the space's
  supernet (``mbv2``) or the user's own weights, with skipped blocks removed (``network``);
* :meth:`Family.groups` — the candidate's *layer groups* (name, module paths, keep, rank,
  precision): read by ``compress/*`` (prune, low-rank, quantize), ``compress.inspect`` (which
  exported node belongs to which group), the report, and :meth:`Family.layer_table`;
* :meth:`Family.prune` / :meth:`Family.factorize` — the structural compression of its networks;
* :meth:`Family.layer_table` — one :class:`Layer` per fused layer (op, channels, kernel, stride,
  groups, spatial size, precision, residual), computed from the candidate alone, without exporting:
  what the latency predictor's features are made of (:mod:`autocomp.predictor.features`);
* :meth:`Family.teacher` — the default teacher of distillation.

A new family costs one module here: subclass :class:`Family`, decorate it with :func:`register`,
and list its module in ``_BUILTIN`` (or import it before use).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from autocomp.errors import UserError

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

    from autocomp.space import Candidate, SearchSpace

_REGISTRY: dict[str, type["Family"]] = {}
_INSTANCES: dict[str, "Family"] = {}
# the built-in families, imported on first use (so that importing the registry stays cheap)
_BUILTIN = {"mbv2": "autocomp.families.mbv2", "network": "autocomp.families.network", "fbnet": "autocomp.families.fbnet"}


def register(name: str) -> Callable[[type["Family"]], type["Family"]]:
    """Class decorator: make a :class:`Family` subclass available as ``name``."""

    def deco(cls: type["Family"]) -> type["Family"]:
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def list_families() -> list[str]:
    return sorted(set(_REGISTRY) | set(_BUILTIN))


def get_family(name_or_space: "str | SearchSpace") -> "Family":
    """The family called ``name`` (or the family a space names)."""
    name = name_or_space if isinstance(name_or_space, str) else getattr(name_or_space, "family", "mbv2")
    if name not in _REGISTRY and name in _BUILTIN:
        importlib.import_module(_BUILTIN[name])
    if name not in _REGISTRY:
        raise UserError("family", f"unknown model family {name!r}", f"one of {list_families()}")
    if name not in _INSTANCES:
        _INSTANCES[name] = _REGISTRY[name]()
    return _INSTANCES[name]


@dataclass(frozen=True)
class LayerGroup:
    """One layer group of a candidate: the unit of its keep, rank and precision genes.

    ``modules``: paths (``model.get_submodule``) of the modules the group's precision applies to, in
    the network the family builds (before compression)."""

    name: str  # stem | blocks.<i> | head  (mbv2 also: classifier)
    modules: tuple[str, ...]
    precision: str
    keep: float = 1.0
    rank: float = 1.0


MEMORY_OPS = ("add", "move")  # layer-table ops without weights or MACs (memory-bound)


@dataclass(frozen=True)
class Layer:
    """One fused layer of a compressed candidate as an inference engine runs it (conv + BN + act is
    one kernel; a low-rank conv is two or three rows). ``op``: ``conv``, ``gemm``, ``add`` (a
    residual add; ``cout`` its channels) or ``move`` (a copy that moves every element of a
    ``cout`` x ``out_hw`` activation and computes nothing: a channel shuffle, a transpose). ``kind``: ``full`` (dense kxk), ``pw`` (1x1), ``dw``
    (depthwise) or ``fc``. Areas are in pixels; ``level`` is the resolution level (number of
    stride-2 steps before it). ``blocked``: whether its channel counts enter the NCHWc-layout terms."""

    op: str
    kind: str
    cin: int
    cout: int
    kernel: int
    stride: int
    groups: int
    in_hw: float
    out_hw: float
    precision: str
    level: int
    group: str
    residual: bool = False
    fused: bool = True
    blocked: bool = True

    @property
    def macs(self) -> float:
        if self.op in MEMORY_OPS:
            return 0.0
        return self.cin / self.groups * self.cout * self.kernel * self.kernel * self.out_hw

    @property
    def params(self) -> float:
        return 0.0 if self.op in MEMORY_OPS else self.cin / self.groups * self.cout * self.kernel * self.kernel

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def stem_blocks_head(candidate: "Candidate") -> list[LayerGroup]:
    """The layer groups of a network made of a stem, the candidate's blocks in order and a head +
    classifier (``stem``, ``blocks.<i>``, ``head``, ``classifier``): mbv2's and fbnet's."""
    out = [LayerGroup("stem", ("stem",), candidate.stem_precision)]
    blocks = [b for s in candidate.stages for b in s.blocks]
    out += [LayerGroup(f"blocks.{i}", (f"blocks.{i}",), b.precision, b.keep, b.rank) for i, b in enumerate(blocks)]
    out += [LayerGroup("head", ("head",), candidate.head_precision),
            LayerGroup("classifier", ("classifier",), candidate.head_precision)]
    return out


class Family:
    """What a model family provides (see the module docs). Subclasses override the methods."""

    name = "base"
    # True when autocomp.predictor.features has a vectorised analysis of this family (mbv2); any
    # other family is analysed from its layer table
    vectorised = False

    def build(self, candidate: "Candidate", space: "SearchSpace", num_classes: int | None = None) -> "nn.Module":
        raise NotImplementedError

    def weights(self, candidate: "Candidate", space: "SearchSpace", data, settings) -> "nn.Module":
        """The uncompressed network of ``candidate`` with trained weights (fp32, eval mode)."""
        raise NotImplementedError

    def recover(self, model: "nn.Module", space: "SearchSpace", data, settings) -> "nn.Module":
        """Recovery after pruning and factorisation, before quantization: ``settings.finetune_steps``
        supervised steps (0: none)."""
        from autocomp.training import train

        return train(model, data, settings.finetune_steps, settings.batch_size, settings.lr / 3, settings.seed + 1,
                     getattr(settings, "train_device", "cpu"))

    def groups(self, candidate: "Candidate", space: "SearchSpace | None" = None) -> list[LayerGroup]:
        raise NotImplementedError

    def prune(self, model: "nn.Module", candidate: "Candidate", space: "SearchSpace", importance: Any = "l1",
              batches=None) -> "nn.Module":
        raise NotImplementedError

    def factorize(self, model: "nn.Module", candidate: "Candidate", space: "SearchSpace") -> "nn.Module":
        raise NotImplementedError

    def layer_table(self, candidate: "Candidate", space: "SearchSpace") -> list[Layer]:
        raise NotImplementedError

    def teacher(self, space: "SearchSpace", data=None, weights=None, bn_batches: int = 4) -> "nn.Module":
        raise NotImplementedError

    def policy(self, candidate: "Candidate", space: "SearchSpace | None" = None) -> dict[str, str]:
        """Layer group name -> the precision the candidate asks of it."""
        return {g.name: g.precision for g in self.groups(candidate, space)}

    def group_of(self, node_name: str, candidate: "Candidate", space: "SearchSpace | None" = None) -> str | None:
        """The layer group of an exported ONNX node (its name is the module scope, e.g.
        ``/layer1/layer1.0/conv1/Conv``), or None when it belongs to none."""
        return group_of_path(module_path(node_name), {m: g.name for g in self.groups(candidate, space) for m in g.modules})


def module_path(node_name: str) -> str:
    """The module path of an ONNX node exported by the TorchScript exporter: its scope segments
    ``/features/features.1/block/block.0/Conv`` read back as ``features.1.block.0`` (a segment that
    extends the previous one by ``.<name>`` replaces it)."""
    parts: list[str] = []
    segs = [s for s in node_name.split("/") if s]
    for seg in segs[:-1]:  # the last segment is the op
        if parts and seg.startswith(parts[-1] + "."):
            parts[-1] = seg
        else:
            parts.append(seg)
    return ".".join(parts)


# wrappers the compression operators insert between a group's module and its layers
_WRAPPERS = ("module", "layer")


def group_of_path(path: str, owners: dict[str, str]) -> str | None:
    """The group owning the longest module path that is a prefix of ``path`` (dotted components)."""
    comps = [c for c in path.split(".") if c]
    for n in range(len(comps), 0, -1):
        hit = owners.get(".".join(comps[:n]))
        if hit is not None:
            return hit
    # Half / QuantLayer wrappers add a component ("module", "layer") under the wrapped path
    stripped = [c for c in comps if c not in _WRAPPERS]
    if stripped != comps:
        return group_of_path(".".join(stripped), owners)
    return None
