"""Candidate features for latency prediction, computed analytically (no export, no torch), batched.

The unit is the *fused layer group* as inference engines run it: conv + BN + activation is one
kernel (BN folds into the conv, ReLU fuses), so every convolution of the network is one group with
its MACs, weights and activation traffic, at the precision of its candidate layer group. Low-rank
pairs are two groups; a residual add is its own (memory-bound) group; fp16 groups pay a Cast at each
border; int8 groups carry QuantizeLinear/DequantizeLinear pairs (QDQ) on their input activation.

:func:`block_arrays` turns candidates into fixed-size numpy arrays (one Python pass over the blocks,
the only per-candidate Python); everything else is vectorised over candidates, so scoring runs at
hundreds of thousands of candidates per second.

Two views of the same analysis:

* :func:`group_features` – per-(precision, op kind) sums of MACs / activation traffic / group counts:
  an additive model on these *is* a sum over layer groups of a per-group latency (``sum`` model).
* :func:`network_features` – those sums plus per-resolution MACs, casts, QDQ pairs, params per
  precision, totals and the raw encoding (depths, widths, per-slot genes): input of the whole-network
  LightGBM model.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from autocomp.space import Candidate, SearchSpace

PRECISIONS = ("fp32", "fp16", "int8")
_PCODE = {"fp32": 0, "fp16": 1, "int8": 2}
_P3 = np.arange(3.0)[None, :]
KINDS = ("full", "pw", "dw", "fc")  # dense kxk conv (stem), pointwise 1x1, depthwise kxk, Gemm
SLOT_FIELDS = ("active", "kernel", "expand", "keep", "rank", "prec")


def _slots(space: SearchSpace) -> tuple[np.ndarray, np.ndarray]:
    """(stage index, index within stage) of every block slot."""
    st, pos = [], []
    for s, d in enumerate(space.max_depths):
        st += [s] * d
        pos += list(range(d))
    return np.array(st), np.array(pos)


def block_arrays(candidates: Sequence[Candidate], space: SearchSpace) -> dict[str, np.ndarray]:
    """Candidates as arrays: per slot (N, B) ``active, kernel, expand, keep, rank, prec``; per stage
    (N, S) ``width``; (N,) ``stem_width, stem_prec, head_width, head_prec``."""
    n_slots = sum(space.max_depths)
    n_st = len(space.stages)
    per = 6 * n_slots + n_st + 4
    flat = np.zeros((len(candidates), per), dtype=np.float64)
    offsets = np.cumsum([0] + space.max_depths[:-1])
    pc = _PCODE
    rows = []
    for c in candidates:
        row = [0.0] * per
        row[-4] = c.stem_width
        row[-3] = pc[c.stem_precision]
        row[-2] = c.head_width
        row[-1] = pc[c.head_precision]
        for s, stage in enumerate(c.stages):
            row[6 * n_slots + s] = stage.width
            base = 6 * offsets[s]
            for j, b in enumerate(stage.blocks):
                i = base + 6 * j
                row[i:i + 6] = (1.0, b.kernel, b.expand, b.keep, b.rank, pc[b.precision])
        rows.append(row)
    if rows:
        flat[:] = rows
    slots = flat[:, : 6 * n_slots].reshape(len(candidates), n_slots, 6)
    out = {f: slots[:, :, i] for i, f in enumerate(SLOT_FIELDS)}
    out["width"] = flat[:, 6 * n_slots: 6 * n_slots + n_st]
    out["stem_width"], out["stem_prec"], out["head_width"], out["head_prec"] = (flat[:, -4], flat[:, -3], flat[:, -2], flat[:, -1])
    return out


def _lowrank_dims(cout: np.ndarray, cin: np.ndarray, ratio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(factorised?, rank) of a 1x1 conv, as autocomp.compress.lowrank.svd_conv1x1 decides."""
    r = np.maximum(1, np.ceil(ratio * np.minimum(cout, cin) - 1e-9))
    fact = (ratio < 1.0) & (r * (cout + cin) < cout * cin)
    return fact, r


class _Acc:
    """Accumulates per-(precision, kind) sums of MACs, traffic, groups and params."""

    def __init__(self, n: int, n_levels: int):
        # accumulated kind-major (contiguous (N, 3) per kind); finish() exposes (N, 3 precisions, kinds)
        self.macs = np.zeros((len(KINDS), n, 3))
        self.traffic = np.zeros((len(KINDS), n, 3))
        self.count = np.zeros((len(KINDS), n, 3))
        self.params = np.zeros((n, 3))
        self.level_macs = np.zeros((n, n_levels))
        self.qdq_elems = np.zeros(n)  # activation elements passing through Q/DQ (int8 inputs)
        self.qdq_pairs = np.zeros(n)
        self.cast_elems = np.zeros(n)  # elements cast at fp16 group borders
        self.casts = np.zeros(n)
        self.add_elems = np.zeros(n)
        self.adds = np.zeros(n)

    def conv(self, mask, prec, kind: int, macs, params, in_elems, out_elems, level: int) -> None:
        m = mask.astype(float)
        sel = (prec[:, None] == _P3) * m[:, None]  # (N, 3) one-hot precision of active groups
        mm = m * macs
        self.macs[kind] += sel * macs[:, None] if np.ndim(macs) else sel * macs
        io = in_elems + out_elems
        self.traffic[kind] += sel * io[:, None] if np.ndim(io) else sel * io
        self.count[kind] += sel
        self.params += sel * params[:, None] if np.ndim(params) else sel * params
        self.level_macs[:, level] += mm
        int8 = sel[:, 2]
        self.qdq_elems += int8 * in_elems
        self.qdq_pairs += int8 * 2  # activation QDQ + weight DQ

    def finish(self) -> "_Acc":
        self.macs, self.traffic, self.count = (np.ascontiguousarray(a.transpose(1, 2, 0)) for a in (self.macs, self.traffic, self.count))
        return self


def analyse(candidates: Sequence[Candidate], space: SearchSpace, arrays: dict[str, np.ndarray] | None = None) -> _Acc:
    a = arrays if arrays is not None else block_arrays(candidates, space)
    n = len(a["stem_width"])
    st_idx, pos = _slots(space)
    h, w = space.input.height, space.input.width
    strides = [s.stride for s in space.stages]
    n_levels = 1 + sum(1 for s in strides if s == 2)
    acc = _Acc(n, n_levels)
    one = np.ones(n, dtype=bool)
    cin0 = float(space.input.channels)
    stem_w = a["stem_width"]
    hw = h * w
    # stem: dense 3x3 conv at full resolution
    acc.conv(one, a["stem_prec"], 0, cin0 * stem_w * 9 * hw, cin0 * stem_w * 9, cin0 * hw, stem_w * hw, 0)
    prev_prec = a["stem_prec"].copy()
    fp16_border = (a["stem_prec"] == 1).astype(float) * (cin0 * hw)  # cast into the first fp16 group
    cur_h, cur_w, level = h, w, 0
    prev_width = stem_w
    last_out = stem_w.copy()
    for i in range(len(st_idx)):
        s, j = st_idx[i], pos[i]
        active = a["active"][:, i] > 0
        stride = strides[s] if j == 0 else 1
        if j == 0 and stride == 2:
            cur_h, cur_w, level = math.ceil(cur_h / 2), math.ceil(cur_w / 2), level + 1
            in_hw = (cur_h * 2) * (cur_w * 2)  # approximate input area of the strided block
        else:
            in_hw = cur_h * cur_w
        out_hw = cur_h * cur_w
        cout = a["width"][:, s]
        cin = prev_width if j == 0 else cout
        k, e, keep, rank, prec = (a[f][:, i] for f in ("kernel", "expand", "keep", "rank", "prec"))
        hidden = cin * e
        hid = np.where((e != 1) & (keep < 1.0), np.maximum(1, np.round(hidden * keep)), hidden)
        has_expand = active & (e != 1)
        # expand 1x1 (possibly low-rank)
        fact, r = _lowrank_dims(hid, cin, rank)
        for msk, cc_in, cc_out in ((has_expand & ~fact, cin, hid), (has_expand & fact, cin, r), (has_expand & fact, r, hid)):
            acc.conv(msk, prec, 1, cc_in * cc_out * in_hw, cc_in * cc_out, cc_in * in_hw, cc_out * in_hw, level - (1 if stride == 2 else 0))
        # depthwise kxk (carries the stride)
        acc.conv(active, prec, 2, hid * k * k * out_hw, hid * k * k, hid * in_hw, hid * out_hw, level)
        # project 1x1 (possibly low-rank)
        fact, r = _lowrank_dims(cout, hid, rank)
        for msk, cc_in, cc_out in ((active & ~fact, hid, cout), (active & fact, hid, r), (active & fact, r, cout)):
            acc.conv(msk, prec, 1, cc_in * cc_out * out_hw, cc_in * cc_out, cc_in * out_hw, cc_out * out_hw, level)
        residual = active & (stride == 1) & (cin == cout)
        acc.adds += residual
        acc.add_elems += residual * cout * out_hw
        # fp16 borders: a Cast wherever a group's precision differs from its predecessor's and one is fp16
        border = active & (prec != prev_prec) & ((prec == 1) | (prev_prec == 1))
        acc.casts += border
        fp16_border += border * cin * in_hw
        prev_prec = np.where(active, prec, prev_prec)
        last_out = np.where(active, cout, last_out)
        if j == 0:
            prev_width = cout
    # head 1x1 + pool + classifier (same precision)
    hw_last = cur_h * cur_w
    hp = a["head_prec"]
    head_w = a["head_width"]
    acc.conv(one, hp, 1, last_out * head_w * hw_last, last_out * head_w, last_out * hw_last, head_w * hw_last, level)
    ncls = float(space.num_classes)
    acc.conv(one, hp, 3, head_w * ncls, head_w * ncls, head_w, ncls, level)
    border = (hp != prev_prec) & ((hp == 1) | (prev_prec == 1))
    acc.casts += border + (hp == 1)  # into the head, and back to fp32 logits
    acc.cast_elems = fp16_border + border * last_out * hw_last + (hp == 1) * ncls
    return acc.finish()


def group_feature_names() -> list[str]:
    names = [f"{q}_{p}_{k}" for q in ("macs", "traffic", "groups") for p in PRECISIONS for k in KINDS]
    return names + ["cast_elems", "casts", "qdq_elems", "add_elems", "adds", "const"]


def group_features(candidates: Sequence[Candidate], space: SearchSpace, acc: _Acc | None = None) -> np.ndarray:
    """(N, F) additive per-group sums (MACs in millions, traffic in 1e5 elements), see module docs."""
    acc = acc or analyse(candidates, space)
    n = acc.macs.shape[0]
    cols = [acc.macs.reshape(n, -1) / 1e6, acc.traffic.reshape(n, -1) / 1e5, acc.count.reshape(n, -1),
            (acc.cast_elems / 1e5)[:, None], acc.casts[:, None], (acc.qdq_elems / 1e5)[:, None],
            (acc.add_elems / 1e5)[:, None], acc.adds[:, None], np.ones((n, 1))]
    return np.concatenate(cols, axis=1)


def network_feature_names(space: SearchSpace) -> list[str]:
    n_levels = 1 + sum(1 for s in space.stages if s.stride == 2)
    slots = [f"slot{i}_{f}" for i in range(sum(space.max_depths)) for f in SLOT_FIELDS[1:]]
    return (group_feature_names()[:-1]
            + [f"macs_level{i}" for i in range(n_levels)]
            + [f"params_{p}" for p in PRECISIONS]
            + ["macs_total", "params_total", "traffic_total", "groups_total", "qdq_pairs", "int8_share", "fp16_share"]
            + ["stem_width", "stem_prec", "head_width", "head_prec"]
            + [f"stage{s}_{f}" for s in range(len(space.stages)) for f in ("depth", "width")] + slots)


def network_features(candidates: Sequence[Candidate] | None, space: SearchSpace, arrays: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """(N, F) whole-network features: group sums, per-resolution MACs, per-precision params,
    totals, QDQ pairs, precision shares and the raw encoding (column names: network_feature_names)."""
    a = arrays if arrays is not None else block_arrays(candidates, space)
    acc = analyse(candidates, space, a)
    g = group_features(candidates, space, acc)[:, :-1]
    n = g.shape[0]
    macs_total = acc.macs.sum((1, 2))
    groups_total = acc.count.sum((1, 2))
    parts = [
        g, acc.level_macs / 1e6, acc.params / 1e3,
        np.stack([macs_total / 1e6, acc.params.sum(1) / 1e3, acc.traffic.sum((1, 2)) / 1e5, groups_total, acc.qdq_pairs,
                  acc.macs[:, 2].sum(1) / np.maximum(macs_total, 1), acc.macs[:, 1].sum(1) / np.maximum(macs_total, 1)], 1),
        np.stack([a["stem_width"], a["stem_prec"], a["head_width"], a["head_prec"]], 1),
    ]
    st_idx, _ = _slots(space)
    depth = np.stack([a["active"][:, st_idx == s].sum(1) for s in range(len(space.stages))], 1)
    parts.append(np.stack([depth, a["width"]], 2).reshape(n, -1))
    parts.append(np.stack([a[f] for f in SLOT_FIELDS[1:]], 2).reshape(n, -1))
    return np.concatenate(parts, axis=1)
