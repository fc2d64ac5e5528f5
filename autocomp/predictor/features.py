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

from autocomp.space import PRECISION_CODES, PRECISIONS, Candidate, SearchSpace

KINDS = ("full", "pw", "dw", "fc")  # dense kxk conv (stem), pointwise 1x1, depthwise kxk, Gemm
# ONNX Runtime's CPU provider rewrites float convs into a blocked channel layout (NCHWc, 8 channels a
# block with AVX2) only when their channel counts are multiples of the block: a pruned or low-rank conv
# with, say, 54 channels stays in plain NCHW, runs slower per MAC and adds layout reorders around it.
NCHWC_BLOCK = 8
DW_KERNELS = (3, 5, 7)
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
    (N, S) ``width``; (N,) ``stem_width, stem_prec, head_width, head_prec``. Each Block carries its
    numeric genes as a tuple (``Block._row``, gathered per stage in ``Stage._row``), so this is two
    list concatenations per stage."""
    n_slots = sum(space.max_depths)
    pads = [[(0.0,) * 6 * (d - k) for k in range(d + 1)] for d in space.max_depths]
    pc = PRECISION_CODES
    flat: list[float] = []
    for c in candidates:
        for stage, pad in zip(c.stages, pads):
            flat += stage._row
            flat += pad[len(stage.blocks)]
        flat += [st.width for st in c.stages]
        flat += (c.stem_width, pc[c.stem_precision], c.head_width, pc[c.head_precision])
    n = len(candidates)
    flat = np.array(flat, dtype=np.float64).reshape(n, 6 * n_slots + len(space.stages) + 4)
    slots = flat[:, : 6 * n_slots].reshape(n, n_slots, 6)
    out = {f: slots[:, :, i] for i, f in enumerate(SLOT_FIELDS)}
    out["width"] = flat[:, 6 * n_slots: -4]
    out["stem_width"], out["stem_prec"], out["head_width"], out["head_prec"] = (flat[:, -4], flat[:, -3], flat[:, -2], flat[:, -1])
    return out


def _lowrank_dims(cout: np.ndarray, cin: np.ndarray, ratio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(factorised?, rank) of a 1x1 conv, as autocomp.compress.lowrank.svd_conv1x1 decides."""
    r = np.maximum(1, np.ceil(ratio * np.minimum(cout, cin) - 1e-9))
    fact = (ratio < 1.0) & (r * (cout + cin) < cout * cin)
    return fact, r


class _Acc:
    """Per-(precision, kind) sums of MACs, activation traffic, group counts and params, (N, 3, kinds)."""

    def __init__(self, n: int, n_levels: int):
        self.macs = np.zeros((n, 3, len(KINDS)))
        self.traffic = np.zeros((n, 3, len(KINDS)))
        self.count = np.zeros((n, 3, len(KINDS)))
        self.params = np.zeros((n, 3))
        self.level_macs = np.zeros((n, n_levels))
        self.qdq_elems = np.zeros(n)  # activation elements passing through Q/DQ (int8 inputs)
        self.qdq_pairs = np.zeros(n)  # activation QDQ + weight DQ per int8 group
        self.cast_elems = np.zeros(n)  # elements cast at fp16 group borders
        self.casts = np.zeros(n)
        self.add_elems = np.zeros(n)
        self.adds = np.zeros(n)
        self.nchw_macs = np.zeros((n, 2))  # float (fp32/fp16) 1x1 and depthwise convs outside the blocked layout
        self.nchw_traffic = np.zeros(n)
        self.nchw_groups = np.zeros(n)
        self.dw_macs_k = np.zeros((n, 2, len(DW_KERNELS)))  # depthwise MACs by kernel size: per-MAC cost is not flat in k

    def add(self, onehot: np.ndarray, *groups: tuple) -> None:
        """Add groups split by precision: ``onehot`` is (N, 3) for one group per candidate or (N, B, 3)
        for one per block slot (:func:`_onehot`); each group is ``(kind, macs, traffic, count, params,
        in_elems)``, the arrays broadcasting to the leading shape of ``onehot``. The per-precision
        sums of all groups are one batched matmul."""
        q = np.empty(onehot.shape[:-1] + (5 * len(groups),))
        for g, (_, *values) in enumerate(groups):
            for j, v in enumerate(values):
                q[..., 5 * g + j] = v
        r = onehot[:, :, None] * q[:, None, :] if onehot.ndim == 2 else np.matmul(onehot.transpose(0, 2, 1), q)
        for g, (kind, *_) in enumerate(groups):
            o = 5 * g
            self.macs[:, :, kind] += r[:, :, o]
            self.traffic[:, :, kind] += r[:, :, o + 1]
            self.count[:, :, kind] += r[:, :, o + 2]
            self.params += r[:, :, o + 3]
            self.qdq_elems += r[:, 2, o + 4]
            self.qdq_pairs += 2 * r[:, 2, o + 2]


def _onehot(prec: np.ndarray) -> np.ndarray:
    """Precision codes (any shape) as a float one-hot over the last axis (fp32, fp16, int8)."""
    return (prec[..., None] == np.arange(3)).astype(float)


def _unblocked(c_in: np.ndarray, c_out: np.ndarray) -> np.ndarray:
    """1.0 where a float conv c_in -> c_out cannot use ONNX Runtime's blocked (NCHWc) kernels."""
    return 1.0 - _blocked(c_in) * _blocked(c_out)


def _blocked(c: np.ndarray) -> np.ndarray:
    """1.0 where the (integral) channel count ``c`` is a multiple of NCHWC_BLOCK (no float modulo: it is slow)."""
    q = c * (1.0 / NCHWC_BLOCK)
    return (q == np.floor(q)).astype(float)


def _forward_fill(active: np.ndarray, values: np.ndarray, start: np.ndarray) -> np.ndarray:
    """(N, B+1): column i is the value of the last active slot before slot i (``start`` if none);
    the last column is the value after every slot."""
    n, b = active.shape
    last = np.where(active, np.arange(b)[None, :], -1)
    np.maximum.accumulate(last, axis=1, out=last)
    ext = np.concatenate([start[:, None], values], axis=1)  # index 0: start, index i+1: slot i
    before = np.concatenate([np.full((n, 1), -1), last], axis=1) + 1
    return np.take_along_axis(ext, before, axis=1)


def analyse(candidates: Sequence[Candidate], space: SearchSpace, arrays: dict[str, np.ndarray] | None = None) -> _Acc:
    """The fused-layer-group analysis of every candidate, vectorised over candidates *and* block slots."""
    a = arrays if arrays is not None else block_arrays(candidates, space)
    n = len(a["stem_width"])
    st_idx, pos = _slots(space)
    h, w = space.input.height, space.input.width
    strides = [s.stride for s in space.stages]
    n_levels = 1 + sum(1 for s in strides if s == 2)
    acc = _Acc(n, n_levels)
    cin0 = float(space.input.channels)
    stem_w = a["stem_width"]
    hw = h * w
    # stem: dense 3x3 conv at full resolution
    acc.add(_onehot(a["stem_prec"]), (0, cin0 * stem_w * 9 * hw, cin0 * hw + stem_w * hw, 1.0, cin0 * stem_w * 9, cin0 * hw))
    acc.level_macs[:, 0] += cin0 * stem_w * 9 * hw
    # static per-slot geometry: stride, input/output area, resolution level of the expand / dw+project convs
    n_b = len(st_idx)
    stride, in_hw, out_hw, lvl, lvl_exp = (np.zeros(n_b) for _ in range(5))
    cur_h, cur_w, level = h, w, 0
    for i in range(n_b):
        s, j = st_idx[i], pos[i]
        stride[i] = strides[s] if j == 0 else 1
        if stride[i] == 2:
            cur_h, cur_w, level = math.ceil(cur_h / 2), math.ceil(cur_w / 2), level + 1
            in_hw[i] = (cur_h * 2) * (cur_w * 2)  # approximate input area of the strided block
        else:
            in_hw[i] = cur_h * cur_w
        out_hw[i] = cur_h * cur_w
        lvl[i], lvl_exp[i] = level, level - (1 if stride[i] == 2 else 0)
    widths = np.concatenate([stem_w[:, None], a["width"]], axis=1)  # column s+1: stage s, column 0: the stem
    cout = widths[:, st_idx + 1]
    cin = np.where(pos[None, :] == 0, widths[:, st_idx], cout)
    active = a["active"] > 0
    k, e, keep, rank, prec = (a[f] for f in ("kernel", "expand", "keep", "rank", "prec"))
    hidden = cin * e
    hid = np.where((e != 1) & (keep < 1.0), np.maximum(1, np.round(hidden * keep)), hidden)
    has_expand = active & (e != 1)
    # 1x1 convs (expand, project), each either plain or a low-rank pair
    pw_macs, pw_traffic, pw_count, pw_params, pw_in = (np.zeros_like(cin) for _ in range(5))
    flt = (prec != 2).astype(float)
    lvl_onehot = (lvl[:, None] == np.arange(n_levels)[None, :]).astype(float)
    lvl_exp_onehot = (lvl_exp[:, None] == np.arange(n_levels)[None, :]).astype(float)
    for c_in, c_out, area_in, area_out, mask, lv in ((cin, hid, in_hw, in_hw, has_expand, lvl_exp_onehot),
                                                     (hid, cout, out_hw, out_hw, active, lvl_onehot)):
        fact, r = _lowrank_dims(c_out, c_in, rank)
        mf, ff = mask.astype(float), (mask & fact).astype(float)
        weights = mf * np.where(fact, r * (c_in + c_out), c_in * c_out)  # a low-rank pair: c_in->r, r->c_out
        macs_slot = weights * area_out
        pw_macs += macs_slot
        pw_params += weights
        pw_traffic += mf * (c_in * area_in + c_out * area_out) + ff * r * (area_in + area_out)
        pw_count += mf + ff
        pw_in += mf * c_in * area_in + ff * r * area_in
        acc.level_macs += macs_slot @ lv
        # convs whose channel counts do not fit the blocked layout (float layers only; int8 layers run NCHW anyway)
        plain, first, second = _unblocked(c_in, c_out), _unblocked(c_in, r), _unblocked(r, c_out)
        nm = flt * np.where(fact, first * c_in * r + second * r * c_out, plain * c_in * c_out) * mf * area_out
        acc.nchw_macs[:, 0] += nm.sum(1)
        acc.nchw_groups += (flt * mf * np.where(fact, first + second, plain)).sum(1)
        acc.nchw_traffic += (flt * mf * np.where(fact, first * (c_in * area_in + r * area_out) + second * (r * area_in + c_out * area_out),
                                                 plain * (c_in * area_in + c_out * area_out))).sum(1)
    # depthwise kxk (carries the stride)
    af = active.astype(float)
    dw_macs = af * hid * k * k * out_hw
    acc.add(_onehot(prec), (1, pw_macs, pw_traffic, pw_count, pw_params, pw_in),
            (2, dw_macs, af * hid * (in_hw + out_hw), af, af * hid * k * k, af * hid * in_hw))
    acc.level_macs += dw_macs @ lvl_onehot
    for j, kk in enumerate(DW_KERNELS):
        acc.dw_macs_k[:, 0, j] += (dw_macs * flt * (k == kk)).sum(1)
        acc.dw_macs_k[:, 1, j] += (dw_macs * (1 - flt) * (k == kk)).sum(1)
    dw_plain = flt * af * (1.0 - _blocked(hid))
    acc.nchw_macs[:, 1] += (dw_plain * dw_macs).sum(1)
    acc.nchw_groups += dw_plain.sum(1)
    acc.nchw_traffic += (dw_plain * hid * (in_hw + out_hw)).sum(1)
    residual = active & (stride == 1)[None, :] & (cin == cout)
    acc.adds += residual.sum(1)
    acc.add_elems += (residual * cout * out_hw).sum(1)
    # fp16 borders: a Cast wherever a group's precision differs from its predecessor's and one is fp16
    prev_prec = _forward_fill(active, prec, a["stem_prec"])
    before = prev_prec[:, :-1]
    border = active & (prec != before) & ((prec == 1) | (before == 1))
    acc.casts += border.sum(1)
    fp16_border = (a["stem_prec"] == 1) * (cin0 * hw) + (border * cin * in_hw).sum(1)  # + the cast into an fp16 stem
    last_prec = prev_prec[:, -1]
    last_out = _forward_fill(active, cout, stem_w)[:, -1]
    # head 1x1 + pool + classifier (same precision)
    hw_last = cur_h * cur_w
    hp = a["head_prec"]
    head_w = a["head_width"]
    ncls = float(space.num_classes)
    acc.add(_onehot(hp), (1, last_out * head_w * hw_last, last_out * hw_last + head_w * hw_last, 1.0, last_out * head_w, last_out * hw_last),
            (3, head_w * ncls, head_w + ncls, 1.0, head_w * ncls, head_w))
    acc.level_macs[:, level] += last_out * head_w * hw_last
    acc.level_macs[:, level] += head_w * ncls
    border = (hp != last_prec) & ((hp == 1) | (last_prec == 1))
    acc.casts += border + (hp == 1)  # into the head, and back to fp32 logits
    acc.cast_elems = fp16_border + border * last_out * hw_last + (hp == 1) * ncls
    return acc


def group_feature_names() -> list[str]:
    names = [f"{q}_{p}_{k}" for q in ("macs", "traffic", "groups") for p in PRECISIONS for k in KINDS]
    return (names + ["cast_elems", "casts", "qdq_elems", "add_elems", "adds", "int8_weights",
                     "nchw_macs_pw", "nchw_macs_dw", "nchw_traffic", "nchw_groups"]
            + [f"dw_macs_{q}_k{k}" for q in ("float", "int8") for k in DW_KERNELS] + ["const"])


def group_features(candidates: Sequence[Candidate], space: SearchSpace, acc: _Acc | None = None) -> np.ndarray:
    """(N, F) additive per-group sums (MACs in millions, traffic in 1e5 elements), see module docs."""
    acc = acc or analyse(candidates, space)
    n = acc.macs.shape[0]
    cols = [acc.macs.reshape(n, -1) / 1e6, acc.traffic.reshape(n, -1) / 1e5, acc.count.reshape(n, -1),
            (acc.cast_elems / 1e5)[:, None], acc.casts[:, None], (acc.qdq_elems / 1e5)[:, None],
            (acc.add_elems / 1e5)[:, None], acc.adds[:, None], (acc.params[:, 2] / 1e5)[:, None],
            acc.nchw_macs / 1e6, (acc.nchw_traffic / 1e5)[:, None], acc.nchw_groups[:, None], acc.dw_macs_k.reshape(n, -1) / 1e6, np.ones((n, 1))]
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
