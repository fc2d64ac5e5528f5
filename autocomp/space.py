"""Search spaces (YAML data in search_spaces/) and the Candidate that travels through a run.

A Candidate is a frozen, JSON-serialisable value: architecture (stem width, per-stage width and
depth, per-block kernel and expansion) plus the compression policy of every layer group
(per-block channel keep ratio, low-rank ratio and precision; stem and head precision).
Its id is a hash of its canonical JSON, so it is stable across processes and machines.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from autocomp.errors import UserError, clip
from autocomp.resources import data_dir

SCHEMA_VERSION = 1
PRECISIONS = ("fp32", "fp16", "int8")
PRECISION_CODES = {p: i for i, p in enumerate(PRECISIONS)}
Precision = Literal["fp32", "fp16", "int8"]


# --------------------------------------------------------------------------- YAML schema


def _nonempty_unique(v: list, what: str) -> list:
    if not v:
        raise ValueError(f"must list at least one {what}")
    if len(set(v)) != len(v):
        raise ValueError(f"must not repeat values, got {v}")
    return sorted(v)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputSpec(_Strict):
    channels: int = Field(gt=0)
    height: int = Field(gt=0)
    width: int = Field(gt=0)


class WidthSpec(_Strict):
    width: list[int]

    @field_validator("width")
    @classmethod
    def _w(cls, v: list[int]) -> list[int]:
        if any(x <= 0 for x in v):
            raise ValueError(f"widths must be positive integers, got {v}")
        return _nonempty_unique(v, "width")


class StemSpec(WidthSpec):
    stride: Literal[1, 2] = 1  # read by families whose stem may downsample (fbnet); mbv2's stem keeps stride 1


class StageSpec(_Strict):
    stride: Literal[1, 2]
    depth: list[int]
    width: list[int]
    kernel: list[int] = []  # required unless ``ops`` names the block choices
    expand: list[int] = []
    # named block choices (FBNet style: ``k3_e6``, ``k5_e1_g2``, ``skip``; see :func:`op_genes`): a block
    # picks one op uniformly instead of a kernel and an expansion independently
    ops: list[str] | None = None
    # whether a block of this stage has channels that pruning may remove (its keep gene is live);
    # None: the mbv2 rule, a block with expand != 1 (its hidden channels). A skip op never has any.
    prunable: bool | None = None

    @field_validator("ops")
    @classmethod
    def _ops(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return v
        if not v or len(set(v)) != len(v):
            raise ValueError(f"must list at least one op, without repeats, got {v}")
        for op in v:
            op_genes(op)  # raises ValueError for a name outside the grammar
        return v

    @model_validator(mode="after")
    def _choices(self) -> "StageSpec":
        if self.ops is None and not (self.kernel and self.expand):
            raise ValueError("a stage lists kernel and expand, or ops")
        if self.ops is not None and (self.kernel or self.expand):
            raise ValueError("a stage lists ops or kernel and expand, not both")
        return self

    @field_validator("depth", "width", "expand")
    @classmethod
    def _pos(cls, v: list[int], info) -> list[int]:
        if any(x <= 0 for x in v):
            raise ValueError(f"values must be positive integers, got {v}")
        if not v and info.field_name == "expand":
            return v  # a stage of ops (checked in _choices)
        return _nonempty_unique(v, "value")

    @field_validator("kernel")
    @classmethod
    def _odd(cls, v: list[int]) -> list[int]:
        if any(x <= 0 or x % 2 == 0 for x in v):
            raise ValueError(f"kernel sizes must be odd positive integers, got {v}")
        return _nonempty_unique(v, "kernel size") if v else v


class CompressionSpec(_Strict):
    keep_ratio: list[float] = [1.0]
    rank_ratio: list[float] = [1.0]
    precision: list[Precision] = ["fp32"]

    @field_validator("keep_ratio", "rank_ratio")
    @classmethod
    def _ratio(cls, v: list[float]) -> list[float]:
        if any(not (0.0 < x <= 1.0) for x in v):
            raise ValueError(f"ratios must lie in (0, 1], got {v}")
        return _nonempty_unique(v, "ratio")

    @field_validator("precision")
    @classmethod
    def _prec(cls, v: list[str]) -> list[str]:
        _nonempty_unique(v, "precision")
        return [p for p in PRECISIONS if p in v]


class NetworkSpec(_Strict):
    """The user's network of a ``family: network`` space (see autocomp.families.network)."""

    model: str = Field(min_length=1)  # torchvision:NAME or package.module:factory
    weights: str | None = None  # a state_dict (torch.load(weights_only=True)); relative paths: to the YAML's folder


class SearchSpace(_Strict):
    """A search space, validated from YAML. Look one up by name with :func:`get_space`."""

    schema_version: Literal[1] = 1
    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # it names files: one safe path component
    family: str = Field(default="mbv2", min_length=1)  # the model family (autocomp.families registry)
    network: NetworkSpec | None = None  # family network: the user's model and weights
    input: InputSpec
    num_classes: int = Field(gt=1)
    stem: StemSpec
    stages: list[StageSpec] = Field(min_length=1)
    head: WidthSpec
    compression: CompressionSpec = CompressionSpec()

    @field_validator("family")
    @classmethod
    def _known_family(cls, v: str) -> str:
        from autocomp.families import list_families

        if v not in list_families():
            raise ValueError(f"unknown model family {v!r}; expected one of {list_families()}")
        return v

    @model_validator(mode="after")
    def _family_network(self) -> "SearchSpace":
        if (self.family == "network") != (self.network is not None):
            raise ValueError("family network needs a 'network: {model: ..., weights: ...}' mapping (and only it does)")
        return self

    @model_validator(mode="after")
    def _fits_input(self) -> "SearchSpace":
        down = self.stem.stride * 2 ** sum(1 for s in self.stages if s.stride == 2)
        if min(self.input.height, self.input.width) < down:
            raise ValueError(f"input {self.input.height}x{self.input.width} is smaller than the total stride {down}")
        return self

    # ----------------------------------------------------------------------- candidates

    def sample(self, rng: random.Random) -> "Candidate":
        stages = []
        for st in self.stages:
            depth = rng.choice(st.depth)
            stages.append(Stage(rng.choice(st.width), tuple(self._sample_block(st, rng) for _ in range(depth))))
        return Candidate(
            space=self.name,
            stem_width=rng.choice(self.stem.width),
            stem_precision=rng.choice(self.compression.precision),
            stages=tuple(stages),
            head_width=rng.choice(self.head.width),
            head_precision=rng.choice(self.compression.precision),
        )

    def _sample_block(self, st: StageSpec, rng: random.Random) -> "Block":
        c = self.compression
        if st.ops is not None:
            kernel, expand = op_genes(rng.choice(st.ops))
        else:
            expand = rng.choice(st.expand)
            kernel = rng.choice(st.kernel)
        return Block(
            kernel=kernel,
            expand=expand,
            keep=rng.choice(c.keep_ratio) if _prunable(st, expand) else 1.0,
            rank=rng.choice(c.rank_ratio),
            precision=rng.choice(c.precision),
        )

    def largest(self, precision: str = "fp32") -> "Candidate":
        """The biggest architecture, uncompressed (the default teacher and supernet top)."""
        return self._extreme(max, precision)

    def smallest(self, precision: str = "fp32") -> "Candidate":
        """The smallest architecture, uncompressed."""
        return self._extreme(min, precision)

    def _extreme(self, pick, precision: str) -> "Candidate":
        def genes(st: StageSpec) -> tuple[int, int]:
            return op_genes(pick(st.ops, key=_op_size)) if st.ops is not None else (pick(st.kernel), pick(st.expand))

        stages = tuple(
            Stage(pick(st.width), tuple(Block(*genes(st), 1.0, 1.0, precision) for _ in range(pick(st.depth))))
            for st in self.stages
        )
        return Candidate(self.name, pick(self.stem.width), precision, stages, pick(self.head.width), precision)

    def mutate(self, cand: "Candidate", rng: random.Random, prob: float = 0.2) -> "Candidate":
        """Resample each gene with probability ``prob``; the result stays inside the space."""
        c = self.compression

        def maybe(cur, choices):
            return rng.choice(choices) if rng.random() < prob else cur

        stages = []
        for st, cs in zip(self.stages, cand.stages):
            depth = maybe(cs.depth, st.depth)
            blocks = []
            for i in range(depth):
                if i >= cs.depth:
                    blocks.append(self._sample_block(st, rng))
                    continue
                b = cs.blocks[i]
                if st.ops is not None:
                    kernel, expand = op_genes(maybe(b.op, st.ops))
                else:
                    expand = maybe(b.expand, st.expand)
                    kernel = maybe(b.kernel, st.kernel)
                blocks.append(Block(
                    kernel=kernel,
                    expand=expand,
                    keep=maybe(b.keep if b.keep in c.keep_ratio else c.keep_ratio[-1], c.keep_ratio) if _prunable(st, expand) else 1.0,
                    rank=maybe(b.rank, c.rank_ratio),
                    precision=maybe(b.precision, c.precision),
                ))
            stages.append(Stage(maybe(cs.width, st.width), tuple(blocks)))
        return replace(
            cand,
            stem_width=maybe(cand.stem_width, self.stem.width),
            stem_precision=maybe(cand.stem_precision, c.precision),
            stages=tuple(stages),
            head_width=maybe(cand.head_width, self.head.width),
            head_precision=maybe(cand.head_precision, c.precision),
        )

    def crossover(self, a: "Candidate", b: "Candidate", rng: random.Random) -> "Candidate":
        """Uniform crossover, gene by gene (blocks slot by slot); the child stays inside the space."""
        pick = lambda x, y: x if rng.random() < 0.5 else y  # noqa: E731
        stages = []
        for sa, sb in zip(a.stages, b.stages):
            depth = pick(sa.depth, sb.depth)
            blocks = []
            for i in range(depth):
                ba = sa.blocks[i] if i < sa.depth else None
                bb = sb.blocks[i] if i < sb.depth else None
                blocks.append(pick(ba, bb) if ba and bb else (ba or bb))
            stages.append(Stage(pick(sa.width, sb.width), tuple(blocks)))
        return Candidate(
            space=self.name,
            stem_width=pick(a.stem_width, b.stem_width),
            stem_precision=pick(a.stem_precision, b.stem_precision),
            stages=tuple(stages),
            head_width=pick(a.head_width, b.head_width),
            head_precision=pick(a.head_precision, b.head_precision),
        )

    def validate_candidate(self, cand: "Candidate") -> None:
        """Raise UserError naming the first gene that lies outside this space."""
        c = self.compression

        def need(ok: bool, field: str, got: Any, choices: Any) -> None:
            if not ok:
                raise UserError(f"candidate.{field}", f"{got!r} is not in space {self.name!r}", f"one of {choices}")

        need(cand.space == self.name, "space", cand.space, [self.name])
        need(cand.stem_width in self.stem.width, "stem_width", cand.stem_width, self.stem.width)
        need(cand.head_width in self.head.width, "head_width", cand.head_width, self.head.width)
        need(cand.stem_precision in c.precision, "stem_precision", cand.stem_precision, c.precision)
        need(cand.head_precision in c.precision, "head_precision", cand.head_precision, c.precision)
        need(len(cand.stages) == len(self.stages), "stages", len(cand.stages), f"{len(self.stages)} stages")
        for i, (st, cs) in enumerate(zip(self.stages, cand.stages)):
            need(cs.width in st.width, f"stages[{i}].width", cs.width, st.width)
            need(cs.depth in st.depth, f"stages[{i}].depth", cs.depth, st.depth)
            for j, b in enumerate(cs.blocks):
                f = f"stages[{i}].blocks[{j}]"
                if st.ops is not None:
                    need(b.op in st.ops, f + ".op", b.op, st.ops)
                else:
                    need(b.kernel in st.kernel, f + ".kernel", b.kernel, st.kernel)
                    need(b.expand in st.expand, f + ".expand", b.expand, st.expand)
                live = _prunable(st, b.expand)
                need(b.keep in c.keep_ratio if live else b.keep == 1.0, f + ".keep", b.keep, c.keep_ratio if live else [1.0])
                need(b.rank in c.rank_ratio, f + ".rank", b.rank, c.rank_ratio)
                need(b.precision in c.precision, f + ".precision", b.precision, c.precision)

    # ----------------------------------------------------------------------- encoding

    @property
    def max_depths(self) -> list[int]:
        return [max(st.depth) for st in self.stages]

    def encode(self, cand: "Candidate") -> list[float]:
        """Fixed-length numeric vector (for predictors): inactive block slots are zeros."""
        one_hot = lambda p: [float(p == q) for q in PRECISIONS]  # noqa: E731
        v: list[float] = [cand.stem_width, *one_hot(cand.stem_precision), cand.head_width, *one_hot(cand.head_precision)]
        for cs, dmax in zip(cand.stages, self.max_depths):
            v += [cs.depth, cs.width]
            for i in range(dmax):
                if i < cs.depth:
                    b = cs.blocks[i]
                    v += [1.0, b.kernel, b.expand, b.keep, b.rank, *one_hot(b.precision)]
                else:
                    v += [0.0] * 8
        return [float(x) for x in v]

    def restrict_precisions(self, allowed: list[str]) -> "SearchSpace":
        """This space with precisions limited to those a device supports."""
        keep = [p for p in self.compression.precision if p in allowed]
        if not keep:
            raise UserError("precision", f"space {self.name!r} allows {self.compression.precision} but the device supports none of them", f"one of {allowed}")
        return self.model_copy(update={"compression": self.compression.model_copy(update={"precision": keep})})


def _prunable(st: StageSpec, expand: int) -> bool:
    """Whether a block's keep gene is live: never for a skip op; the stage says so, else (mbv2) when it expands."""
    if expand == 0:
        return False
    return st.prunable if st.prunable is not None else expand != 1


# --------------------------------------------------------------------------- named block ops

_OP = re.compile(r"k(\d+)_e(\d+)(?:_g(\d+))?")
GROUPED = 100  # expand gene of a grouped op: groups * GROUPED + expansion


def op_genes(op: str) -> tuple[int, int]:
    """The (kernel, expand) genes of a named block op, the numbers a Block carries (and the latency
    predictor reads): ``k3_e6`` -> (3, 6); a grouped op ``k5_e1_g2`` (1x1 convs in 2 groups) ->
    (5, 2 * GROUPED + 1); ``skip`` -> (0, 0). :attr:`Block.op` reads them back."""
    if op == "skip":
        return 0, 0
    m = _OP.fullmatch(op)
    if not m:
        raise ValueError(f"unknown op {op!r}; expected skip or k<kernel>_e<expand>[_g<groups>], e.g. k3_e6, k5_e1_g2")
    k, e, g = int(m.group(1)), int(m.group(2)), int(m.group(3) or 1)
    if k % 2 == 0 or not (0 < e < GROUPED) or g < 1:
        raise ValueError(f"op {op!r}: the kernel must be odd, the expansion in 1..{GROUPED - 1}, the groups >= 1")
    return k, e + (g * GROUPED if g > 1 else 0)


def op_name(kernel: int, expand: int) -> str:
    """The op name of (kernel, expand) genes (the inverse of :func:`op_genes`)."""
    if kernel == 0 and expand == 0:
        return "skip"
    g, e = divmod(expand, GROUPED)
    return f"k{kernel}_e{e}" + (f"_g{g}" if g > 1 else "")


def _op_size(op: str) -> tuple[int, int, int]:
    """Order of ops by size, for the largest / smallest architecture: expansion, kernel, fewer groups."""
    k, code = op_genes(op)
    g, e = divmod(code, GROUPED)
    return e, k, -max(g, 1)


# --------------------------------------------------------------------------- candidate


@dataclass(frozen=True)
class Block:
    kernel: int
    expand: int
    keep: float  # share of the block's hidden (expanded) channels kept by structured pruning
    rank: float  # low-rank ratio of the block's 1x1 convolutions (1.0 = full rank)
    precision: str  # fp32 | fp16 | int8

    @property
    def op(self) -> str:
        """The block's op name (``k3_e6``; see :func:`op_genes`)."""
        return op_name(self.kernel, self.expand)

    def __post_init__(self) -> None:
        # the block's numeric genes as the latency predictor reads them (active, kernel, expand, keep,
        # rank, precision code): built once here so that batched scoring does no per-gene Python
        object.__setattr__(self, "_row", (1.0, float(self.kernel), float(self.expand), float(self.keep), float(self.rank),
                                          float(PRECISION_CODES.get(self.precision, -1))))


@dataclass(frozen=True)
class Stage:
    width: int
    blocks: tuple[Block, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "_row", tuple(g for b in self.blocks for g in b._row))  # the blocks' genes, in order

    @property
    def depth(self) -> int:
        return len(self.blocks)


@dataclass(frozen=True)
class Candidate:
    space: str
    stem_width: int
    stem_precision: str
    stages: tuple[Stage, ...]
    head_width: int
    head_precision: str

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        """Canonical JSON (sorted keys, no spaces): the basis of the id."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, d: dict) -> "Candidate":
        try:
            stages = tuple(
                Stage(int(s["width"]), tuple(
                    Block(int(b["kernel"]), int(b["expand"]), float(b["keep"]), float(b["rank"]), str(b["precision"])) for b in s["blocks"]
                ))
                for s in d["stages"]
            )
            return cls(str(d["space"]), int(d["stem_width"]), str(d["stem_precision"]), stages, int(d["head_width"]), str(d["head_precision"]))
        except (KeyError, TypeError, ValueError) as e:
            raise UserError("candidate", f"malformed candidate JSON ({type(e).__name__}: {e})", "the output of Candidate.to_json()") from None

    @classmethod
    def from_json(cls, s: str) -> "Candidate":
        try:
            return cls.from_dict(json.loads(s))
        except json.JSONDecodeError as e:
            raise UserError("candidate", f"not valid JSON ({e})", "the output of Candidate.to_json()") from None

    @property
    def id(self) -> str:
        return hashlib.sha1(self.to_json().encode()).hexdigest()[:12]

    def layer_precisions(self) -> list[str]:
        return [self.stem_precision, *(b.precision for s in self.stages for b in s.blocks), self.head_precision]

    @property
    def precision(self) -> str:
        """fp32 / fp16 / int8 when every layer group agrees, else ``mixed`` (the label measurements carry)."""
        precs = set(self.layer_precisions())
        return precs.pop() if len(precs) == 1 else "mixed"

    def summary(self) -> str:
        """A short human-readable description: d<depths> w<widths> and the compression mix."""
        depths = "".join(str(s.depth) for s in self.stages)
        widths = "-".join(str(s.width) for s in self.stages)
        blocks = [b for s in self.stages for b in s.blocks]
        keep = sum(b.keep for b in blocks) / len(blocks)
        rank = sum(b.rank for b in blocks) / len(blocks)
        precs = self.layer_precisions()
        mix = "/".join(f"{p}:{precs.count(p)}" for p in PRECISIONS if p in precs)
        return f"d{depths} w{self.stem_width}-{widths}-{self.head_width} keep{keep:.2f} rank{rank:.2f} {mix}"


# --------------------------------------------------------------------------- registry


def spaces_dir() -> Path:
    return data_dir("search_spaces")


def list_spaces() -> list[str]:
    return sorted(p.stem for p in spaces_dir().glob("*.yaml"))


DEFAULT_SPACE = "mnist-mbv2"


def get_space(name_or_path: str | Path = DEFAULT_SPACE) -> SearchSpace:
    """Look a space up by name (search_spaces/<name>.yaml) or load it from a YAML path. A space file
    that takes the name of a shipped space must be that space: the name keys its supernet,
    predictors and tables."""
    p = Path(name_or_path)
    if not (p.suffix in (".yaml", ".yml") or p.exists()):
        p = spaces_dir() / f"{name_or_path}.yaml"
        if not p.exists() or not _SAFE_NAME.fullmatch(str(name_or_path)):
            raise UserError("--space", f"unknown search space {clip(str(name_or_path), 80)!r}", f"a YAML path or one of {list_spaces()}")
        return load_space(p)
    space = load_space(p)
    shipped = spaces_dir() / f"{space.name}.yaml"
    if shipped.is_file() and shipped.resolve() != p.resolve():
        if load_space(shipped).model_dump() != space.model_dump():
            raise UserError(f"{p.name}: name", f"{space.name!r} is the name of a shipped space with other content",
                            "a name of its own for a custom space")
    return space


_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def safe_name(name: str, field: str) -> str:
    """``name`` if it can become one path component (letters, digits, '.', '_', '-'; no '..'), else UserError."""
    if not isinstance(name, str) or not _SAFE_NAME.fullmatch(name):
        raise UserError(field, f"{clip(repr(name), 80)} cannot name a file", "letters, digits, '.', '_' or '-' (at most 100)")
    return name


def load_space(path: Path) -> SearchSpace:
    from autocomp.config import read_yaml

    path = Path(path)
    if not path.is_file():
        raise UserError("--space", f"no such file {clip(str(path), 200)!r}", "a search-space YAML file")
    raw = read_yaml(path, str(path), "a search-space YAML mapping")
    if not isinstance(raw, dict):
        raise UserError(str(path), f"top level is {type(raw).__name__}", "a YAML mapping")
    try:
        space = SearchSpace.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        loc = "".join(f"[{x}]" if isinstance(x, int) else f".{x}" for x in err["loc"]).lstrip(".") or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        got = err.get("input")
        got_s = "" if isinstance(got, dict) or err["type"] == "missing" else f" (got {clip(repr(got), 80)})"
        raise UserError(f"{path.name}: {loc}", msg + got_s) from None
    net = space.network
    if net is not None and net.weights and not Path(net.weights).is_absolute():  # relative to the YAML's folder
        space = space.model_copy(update={"network": net.model_copy(update={"weights": str((path.parent / net.weights).resolve())})})
    return space
