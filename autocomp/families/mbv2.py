"""The built-in family: MobileNetV2-style inverted-residual networks (``autocomp.models.mbv2``).

Weights come from the space's weight-sharing supernet (``supernets/<space>.pt``, extracted with
BatchNorm recalibrated), or a candidate is trained from scratch. Layer groups: ``stem``, one per
block (``blocks.<i>``: its keep, rank and precision genes), ``head`` and ``classifier`` (both at
the head precision). Its layer table mirrors the vectorised analysis of
:mod:`autocomp.predictor.features` row by row (a test holds the two equal).
"""

from __future__ import annotations

import math
from pathlib import Path

from autocomp.errors import UserError
from autocomp.families import Family, Layer, LayerGroup, register, stem_blocks_head
from autocomp.models.supernet import supernet_path  # noqa: F401  (the families' weights come from it)
from autocomp.space import Candidate, SearchSpace


def _lowrank(cin: int, cout: int, ratio: float) -> int | None:
    """The rank of a factorised 1x1 conv, or None when it stays whole (as compress.lowrank decides)."""
    r = max(1, min(min(cout, cin), math.ceil(ratio * min(cout, cin) - 1e-9)))
    return r if ratio < 1.0 and r * (cin + cout) < cin * cout else None


def _pw(cin: int, cout: int, rank: float, area_in: float, area_out: float, prec: str, level: int, group: str) -> list[Layer]:
    r = _lowrank(cin, cout, rank)
    if r is None:
        return [Layer("conv", "pw", cin, cout, 1, 1, 1, area_in, area_out, prec, level, group)]
    return [Layer("conv", "pw", cin, r, 1, 1, 1, area_in, area_out, prec, level, group),
            Layer("conv", "pw", r, cout, 1, 1, 1, area_in, area_out, prec, level, group)]


@register("mbv2")
class MBV2(Family):
    vectorised = True

    def build(self, candidate: Candidate, space: SearchSpace, num_classes: int | None = None):
        from autocomp.models.mbv2 import build

        return build(candidate, space, num_classes)

    def weights(self, candidate: Candidate, space: SearchSpace, data, settings):
        from autocomp.models.supernet import extract, inherited_or_trained

        return inherited_or_trained(self, candidate, space, data, settings, extract)

    def groups(self, candidate: Candidate, space: SearchSpace | None = None) -> list[LayerGroup]:
        return stem_blocks_head(candidate)

    def prune(self, model, candidate: Candidate, space: SearchSpace, importance="l1", batches=None):
        from autocomp.compress import prune

        return prune.apply(model, candidate, importance, batches)

    def factorize(self, model, candidate: Candidate, space: SearchSpace):
        from autocomp.compress import lowrank

        return lowrank.apply(model, candidate)

    def teacher(self, space: SearchSpace, data=None, weights=None, bn_batches: int = 4):
        from autocomp.models.supernet import default_checkpoint, extract

        ck = weights if weights is not None else default_checkpoint(space.name)
        if ck is None:
            raise UserError("--teacher", f"no trained supernet for space {space.name!r}",
                            f"supernets/{space.name}.pt (run `autocomp supernet train --space {space.name}`) or --teacher module:factory")
        return extract(space.largest(), space, ck, data, bn_batches=bn_batches).eval()

    def layer_table(self, candidate: Candidate, space: SearchSpace) -> list[Layer]:
        """Every fused layer of the compressed candidate, in execution order."""
        h, w = space.input.height, space.input.width
        hw = h * w
        c0 = space.input.channels
        rows = [Layer("conv", "full", c0, candidate.stem_width, 3, 1, 1, hw, hw, candidate.stem_precision, 0, "stem", blocked=False)]
        level, cin, i = 0, candidate.stem_width, 0
        for st_spec, st in zip(space.stages, candidate.stages):
            for j, b in enumerate(st.blocks):
                stride = st_spec.stride if j == 0 else 1
                in_hw = h * w
                if stride == 2:
                    h, w, level = math.ceil(h / 2), math.ceil(w / 2), level + 1
                out_hw = h * w
                g, p = f"blocks.{i}", b.precision
                hidden = cin * b.expand
                hid = max(1, round(hidden * b.keep)) if b.expand != 1 and b.keep < 1.0 else hidden
                if b.expand != 1:
                    rows += _pw(cin, hid, b.rank, in_hw, in_hw, p, level - (1 if stride == 2 else 0), g)
                rows.append(Layer("conv", "dw", hid, hid, b.kernel, stride, hid, in_hw, out_hw, p, level, g))
                rows += _pw(hid, st.width, b.rank, out_hw, out_hw, p, level, g)
                if stride == 1 and cin == st.width:
                    rows.append(Layer("add", "pw", st.width, st.width, 1, 1, 1, out_hw, out_hw, p, level, g, residual=True))
                cin, i = st.width, i + 1
        hp = candidate.head_precision
        rows.append(Layer("conv", "pw", cin, candidate.head_width, 1, 1, 1, h * w, h * w, hp, level, "head", blocked=False))
        rows.append(Layer("gemm", "fc", candidate.head_width, space.num_classes, 1, 1, 1, 1, 1, hp, level, "classifier", blocked=False))
        return rows
