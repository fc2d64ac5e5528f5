"""Candidate features for latency prediction, computed analytically (no export, no torch), batched.

The unit is the *fused layer group* as inference engines run it: conv + BN + activation is one
kernel (BN folds into the conv, ReLU fuses), so every convolution of the network is one group with
its MACs, weights and activation traffic, at the precision of its candidate layer group. Low-rank
pairs are two groups; a residual add is its own (memory-bound) group, and so is a data move (a
channel shuffle: a layer table's ``move`` rows; mbv2 has none); fp16 groups pay a Cast at each
border; int8 groups carry QuantizeLinear/DequantizeLinear pairs (QDQ) on their input activation.

:func:`block_arrays` turns candidates into fixed-size numpy arrays (one Python pass over the blocks,
the only per-candidate Python); everything else is vectorised over candidates. What a block slot
contributes depends only on its own genes and widths, so each slot's contribution to every feature
is precomputed once per space for every configuration the space allows (:class:`_SlotTable`, exact)
and a batch of candidates is one sparse product with that table, plus the stem, the head and the
fp16 casts between neighbouring slots.

This vectorised analysis is the mbv2 family's. Every other family is analysed from its *layer table*
(:meth:`autocomp.families.Family.layer_table`, one row per fused layer) by :func:`table_acc`, which
gives the same quantities: for mbv2 the two agree exactly (tests/test_families.py), so a user's
network is filtered exactly as the built-in family is.

Two views of the same analysis:

* :func:`group_features` – per-(precision, op kind) sums of MACs / activation traffic / group counts
  and of the MACs that padding channel counts up to the host's SIMD block adds (``pad_macs``): an
  additive model on these *is* a sum over layer groups of a per-group latency (``sum`` model).
* :func:`network_features` – those sums plus per-resolution MACs, casts, QDQ pairs, params per
  precision, totals and the raw encoding (depths, widths, per-slot genes): input of the whole-network
  LightGBM model.
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import numpy as np

from autocomp.families import get_family
from autocomp.space import PRECISION_CODES, PRECISIONS, Candidate, SearchSpace

KINDS = ("full", "pw", "dw", "fc")  # dense kxk conv (stem), pointwise 1x1, depthwise kxk, Gemm
# ONNX Runtime's CPU provider rewrites float convs into a blocked channel layout (NCHWc) only when
# their channel counts are multiples of the block: a pruned or low-rank conv with, say, 54 channels
# stays in plain NCHW, runs slower per MAC and adds layout reorders around it. The block is the SIMD
# width in floats: 8 with AVX2, 16 with AVX-512 (``nchwc_block`` of a fingerprint); features are
# computed for the host whose latency they describe.
NCHWC_BLOCK = 8


def nchwc_block(fingerprint: dict | None) -> int:
    """The NCHWc block of the host a fingerprint describes (8 when its ISA is unknown)."""
    from autocomp.measure.fingerprint import vector_width

    isa = (fingerprint or {}).get("isa")
    return NCHWC_BLOCK if isa is None else max(vector_width(isa) // 32, 4)
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


@functools.lru_cache(maxsize=None)
def _layout(n_levels: int) -> dict[str, tuple[int, int, tuple[int, ...]]]:
    """Columns of the flat accumulator: name -> (first column, width, shape per candidate)."""
    shapes = [("macs", (3, len(KINDS))), ("traffic", (3, len(KINDS))), ("count", (3, len(KINDS))), ("params", (3,)),
              ("qdq_elems", ()), ("qdq_pairs", ()), ("level_macs", (n_levels,)), ("nchw_macs", (2,)), ("nchw_traffic", ()),
              ("nchw_groups", ()), ("dw_macs_k", (2, len(DW_KERNELS))), ("adds", ()), ("add_elems", ()),
              ("cast_elems", ()), ("casts", ()), ("move_elems", ()), ("moves", ()), ("pad_macs", (3, len(KINDS)))]
    out, col = {}, 0
    for name, shape in shapes:
        size = math.prod(shape)
        out[name] = (col, size, shape)
        col += size
    out["_width"] = (col, 0, ())
    return out


class _Acc:
    """The analysis of N candidates as one flat (N, Q) array; each quantity is a view into it:
    per-(precision, kind) sums of MACs, activation traffic and group counts (N, 3, kinds), params per
    precision, QDQ elements/pairs (activation QDQ + weight DQ per int8 group), MACs per resolution
    level, float convs outside the blocked layout, depthwise MACs by (float|int8, kernel), residual
    adds, fp16-border casts, data moves (channel shuffles: ``move`` rows of a layer table) and the MACs
    that padding every channel count up to the SIMD block adds, per (precision, kind)."""

    def __init__(self, n: int, n_levels: int, values: np.ndarray | None = None):
        self.layout = _layout(n_levels)
        self.v = values if values is not None else np.zeros((n, self.layout["_width"][0]))

    def __getattr__(self, name: str) -> np.ndarray:
        try:
            col, size, shape = self.__dict__["layout"][name]
        except KeyError:
            raise AttributeError(name) from None
        v = self.__dict__["v"]
        return v[:, col:col + size].reshape(len(v), *shape) if shape else v[:, col]


def _onehot(prec: np.ndarray) -> np.ndarray:
    """Precision codes (any shape) as a float one-hot over the last axis (fp32, fp16, int8)."""
    return (prec[..., None] == np.arange(3)).astype(float)


def _unblocked(c_in: np.ndarray, c_out: np.ndarray, block: int) -> np.ndarray:
    """1.0 where a dense float conv c_in -> c_out cannot use ONNX Runtime's blocked (NCHWc) kernels.

    Which convs ONNX Runtime 1.32's NchwcTransformer takes was measured on each host (a one-conv
    ONNX model per channel count, optimised, its nodes read back): with AVX-512 (block 16) a dense
    conv whose input channels are fewer than 16 or a multiple of 4, whatever its output channels; with
    AVX2 (block 8) the developers found input and output channels both multiples of 8."""
    if block >= 16:
        return 1.0 - np.maximum(_multiple(c_in, 4), (c_in < block).astype(float))
    return 1.0 - _multiple(c_in, block) * _multiple(c_out, block)


def _dw_blocked(c: np.ndarray, block: int) -> np.ndarray:
    """1.0 where a depthwise conv of ``c`` channels runs blocked (AVX-512: multiples of 4; AVX2: of 8)."""
    return _multiple(c, 4 if block >= 16 else block)


def _multiple(c: np.ndarray, m: int) -> np.ndarray:
    """1.0 where the (integral) channel count ``c`` is a multiple of ``m`` (no float modulo: it is slow)."""
    q = c * (1.0 / m)
    return (q == np.floor(q)).astype(float)


def _up(c: np.ndarray, m: int) -> np.ndarray:
    """``c`` rounded up to a multiple of ``m``."""
    return np.ceil(c * (1.0 / m)) * m


def _forward_fill(active: np.ndarray, values: np.ndarray, start: np.ndarray) -> np.ndarray:
    """(N, B+1): column i is the value of the last active slot before slot i (``start`` if none);
    the last column is the value after every slot."""
    n, b = active.shape
    last = np.where(active, np.arange(b)[None, :], -1)
    np.maximum.accumulate(last, axis=1, out=last)
    ext = np.concatenate([start[:, None], values], axis=1)  # index 0: start, index i+1: slot i
    before = np.concatenate([np.full((n, 1), -1), last], axis=1) + 1
    return np.take_along_axis(ext, before, axis=1)


class _Geometry:
    """Static per-slot geometry of a space: stride, input/output area, resolution level of the
    expand conv and of the depthwise + project convs; the final feature-map size and level."""

    def __init__(self, space: SearchSpace):
        st_idx, pos = _slots(space)
        strides = [s.stride for s in space.stages]
        self.n_levels = 1 + sum(1 for s in strides if s == 2)
        n_b = len(st_idx)
        self.stride, self.in_hw, self.out_hw, self.lvl, self.lvl_exp = (np.zeros(n_b) for _ in range(5))
        cur_h, cur_w, level = space.input.height, space.input.width, 0
        for i in range(n_b):
            s, j = st_idx[i], pos[i]
            self.stride[i] = strides[s] if j == 0 else 1
            if self.stride[i] == 2:
                cur_h, cur_w, level = math.ceil(cur_h / 2), math.ceil(cur_w / 2), level + 1
                self.in_hw[i] = (cur_h * 2) * (cur_w * 2)  # approximate input area of the strided block
            else:
                self.in_hw[i] = cur_h * cur_w
            self.out_hw[i] = cur_h * cur_w
            self.lvl[i], self.lvl_exp[i] = level, level - (1 if self.stride[i] == 2 else 0)
        self.last_hw, self.last_level = cur_h * cur_w, level

    def take(self, i: int) -> "_Geometry":
        """The geometry of slot ``i`` alone (arrays of length 1)."""
        g = object.__new__(_Geometry)
        g.__dict__.update({k: (v[i:i + 1] if isinstance(v, np.ndarray) else v) for k, v in self.__dict__.items()})
        return g


def _slot_terms(cin, cout, k, e, keep, rank, prec, active, geo: _Geometry, block: int) -> np.ndarray:
    """(N, B, Q): what each block slot adds to the flat accumulator (:func:`_layout`), from its genes
    and input/output widths (N, B). Everything a slot contributes depends on these alone, which is
    what makes the per-slot lookup table of :class:`_SlotTable` exact."""
    n, b = cin.shape
    lay = _layout(geo.n_levels)
    t = np.zeros((n, b, lay["_width"][0]))

    def put(name: str, value, index: int = 0) -> None:
        t[:, :, lay[name][0] + index] += value

    active = active > 0
    oh = _onehot(prec)
    flt = (prec != 2).astype(float)
    in_hw, out_hw, stride = geo.in_hw[None, :], geo.out_hw[None, :], geo.stride[None, :]
    hidden = cin * e
    hid = np.where((e != 1) & (keep < 1.0), np.maximum(1, np.round(hidden * keep)), hidden)
    has_expand = active & (e != 1)
    af = active.astype(float)
    # 1x1 convs (expand, project), each either plain or a low-rank pair c_in -> r -> c_out
    pw = np.zeros((5, n, b))  # macs, traffic, groups, params, input elements
    pad = np.zeros((3, n, b))  # MACs added by padding channels up to the block: pw, dw
    for c_in, c_out, area_in, area_out, mask, lv in ((cin, hid, in_hw, in_hw, has_expand, geo.lvl_exp),
                                                     (hid, cout, out_hw, out_hw, active, geo.lvl)):
        fact, r = _lowrank_dims(c_out, c_in, rank)
        mf, ff = mask.astype(float), (mask & fact).astype(float)
        weights = mf * np.where(fact, r * (c_in + c_out), c_in * c_out)
        pw += [weights * area_out, mf * (c_in * area_in + c_out * area_out) + ff * r * (area_in + area_out),
               mf + ff, weights, mf * c_in * area_in + ff * r * area_in]
        ui, uo, ur = _up(c_in, block), _up(c_out, block), _up(r, block)
        pad[1] += mf * area_out * np.where(fact, ur * (ui + uo), ui * uo) - weights * area_out
        for level in range(geo.n_levels):
            put("level_macs", weights * area_out * (lv == level)[None, :], level)
        # float convs whose channel counts do not fit the blocked layout (int8 layers run NCHW anyway)
        plain, first, second = _unblocked(c_in, c_out, block), _unblocked(c_in, r, block), _unblocked(r, c_out, block)
        put("nchw_macs", flt * mf * area_out * np.where(fact, first * c_in * r + second * r * c_out, plain * c_in * c_out), 0)
        put("nchw_groups", flt * mf * np.where(fact, first + second, plain))
        put("nchw_traffic", flt * mf * np.where(fact, first * (c_in * area_in + r * area_out) + second * (r * area_in + c_out * area_out),
                                                plain * (c_in * area_in + c_out * area_out)))
    # depthwise kxk (carries the stride)
    dw_macs = af * hid * k * k * out_hw
    dw = [dw_macs, af * hid * (in_hw + out_hw), af, af * hid * k * k, af * hid * in_hw]
    pad[2] = af * (_up(hid, block) - hid) * k * k * out_hw
    for kind, (macs, traffic, count, params, in_elems) in ((1, pw), (2, dw)):
        for p in range(3):
            sel = oh[..., p]
            put("pad_macs", pad[kind] * sel, p * len(KINDS) + kind)
            put("macs", macs * sel, p * len(KINDS) + kind)
            put("traffic", traffic * sel, p * len(KINDS) + kind)
            put("count", count * sel, p * len(KINDS) + kind)
            put("params", params * sel, p)
        put("qdq_elems", in_elems * oh[..., 2])
        put("qdq_pairs", 2 * count * oh[..., 2])
    for level in range(geo.n_levels):
        put("level_macs", dw_macs * (geo.lvl == level)[None, :], level)
    for j, kk in enumerate(DW_KERNELS):
        put("dw_macs_k", dw_macs * flt * (k == kk), j)
        put("dw_macs_k", dw_macs * (1 - flt) * (k == kk), len(DW_KERNELS) + j)
    dw_plain = flt * af * (1.0 - _dw_blocked(hid, block))
    put("nchw_macs", dw_plain * dw_macs, 1)
    put("nchw_groups", dw_plain)
    put("nchw_traffic", dw_plain * hid * (in_hw + out_hw))
    residual = active & (stride == 1) & (cin == cout)
    put("adds", residual)
    put("add_elems", residual * cout * out_hw)
    return t


# a lookup table per block slot: every (input width, output width, kernel, expand, keep, rank,
# precision) the space allows; beyond this many rows in all, the analysis is computed directly
MAX_TABLE_ROWS = 400_000


class _SlotTable:
    """Row ``offsets[i] + 1 + config`` of ``table`` is :func:`_slot_terms` of block slot ``i`` in
    configuration ``config`` (mixed radix over the slot's options of input width, output width,
    kernel, expand, keep, rank, precision); row ``offsets[i]`` is the slot inactive (zeros). Input
    width is a dimension only for a stage's first slot (elsewhere it equals the output width)."""

    DIMS = ("cin", "cout", "kernel", "expand", "keep", "rank", "prec")
    SCALE = (1, 1, 1, 1, 1000, 1000, 1)

    def __init__(self, space: SearchSpace, geo: _Geometry, block: int):
        st_idx, pos = _slots(space)
        c = space.compression
        per_slot = []
        for s, j in zip(st_idx, pos):
            st = space.stages[s]
            cin = (space.stem.width if s == 0 else space.stages[s - 1].width) if j == 0 else None
            per_slot.append([cin, st.width, st.kernel, st.expand, c.keep_ratio, c.rank_ratio, list(range(3))])
        width = max(len(o) for opts in per_slot for o in opts if o is not None)
        b = len(per_slot)
        self.options = np.full((len(self.DIMS), b, width), np.nan)  # NaN pads never match a gene
        self.radix = np.zeros((len(self.DIMS), b), dtype=np.int64)
        sizes = []
        for i, opts in enumerate(per_slot):
            radix = 1
            for d in reversed(range(len(self.DIMS))):
                if opts[d] is None:
                    continue
                values = sorted(float(v) for v in opts[d])
                self.options[d, i, :len(values)] = values
                self.radix[d, i] = radix
                radix *= len(values)
            sizes.append(radix)
        # value -> option index per slot, as a dense integer table per dimension (-1: not an option);
        # fractions (keep, rank) are looked up at 1/1000 resolution
        self.lookup = []
        for d in range(len(self.DIMS)):
            scale = self.SCALE[d]
            top = int(round(np.nanmax(self.options[d]) * scale)) + 3  # entry 0: negative keys, last: too large
            lk = np.full((b, top), -1, dtype=np.int64)
            for i in range(b):
                if per_slot[i][d] is None:
                    lk[i, 1:] = 0  # input width = output width: not a dimension of this slot
                for jj, v in enumerate(self.options[d, i]):
                    if not np.isnan(v):
                        lk[i, int(round(v * scale)) + 1] = jj
            self.lookup.append((lk.ravel(), np.arange(b, dtype=np.int64) * top, top - 1))
        self.offsets = np.concatenate([[0], np.cumsum([1 + z for z in sizes])[:-1]]).astype(np.int64)
        self.n_rows = int(sum(1 + z for z in sizes))
        self.table: np.ndarray | None = None
        if self.n_rows <= MAX_TABLE_ROWS:
            parts = []
            for i, opts in enumerate(per_slot):
                dims = [d for d in range(len(self.DIMS)) if opts[d] is not None]
                grid = np.meshgrid(*[self.options[d, i][~np.isnan(self.options[d, i])] for d in dims], indexing="ij")
                g = {self.DIMS[d]: v.reshape(-1, 1) for d, v in zip(dims, grid)}
                g.setdefault("cin", g["cout"])
                terms = _slot_terms(g["cin"], g["cout"], g["kernel"], g["expand"], g["keep"], g["rank"], g["prec"],
                                    np.ones_like(g["cout"]), geo.take(i), block)[:, 0]
                parts += [np.zeros((1, terms.shape[1])), terms]
            self.table = np.concatenate(parts)

    def rows_of(self, genes: list[np.ndarray], active: np.ndarray) -> np.ndarray | None:
        """(N, B) table rows from the (N, B) gene arrays in ``DIMS`` order, or None when a gene of an
        active slot is not among the space's options."""
        idx = np.zeros(active.shape, dtype=np.int64)
        worst = np.zeros(active.shape, dtype=np.int64)
        for d, gene in enumerate(genes):
            flat, base, top = self.lookup[d]
            key = np.rint(gene * self.SCALE[d]).astype(np.int64) if self.SCALE[d] != 1 else gene.astype(np.int64)
            j = flat[base[None, :] + np.clip(key + 1, 0, top)]
            np.minimum(worst, j, out=worst)
            idx += j * self.radix[d][None, :]
        if (worst < 0)[active].any():
            return None
        return np.where(active, self.offsets[None, :] + 1 + idx, self.offsets[None, :])


_CACHE: dict[tuple[int, int], tuple[SearchSpace, _Geometry, _SlotTable]] = {}


def _prepared(space: SearchSpace, block: int) -> tuple[_Geometry, _SlotTable]:
    """Geometry and slot table of ``space`` for NCHWc ``block``, built once per space object and block."""
    hit = _CACHE.get((id(space), block))
    if hit is None or hit[0] is not space:
        geo = _Geometry(space)
        hit = _CACHE[(id(space), block)] = (space, geo, _SlotTable(space, geo, block))
        while len(_CACHE) > 16:
            _CACHE.pop(next(iter(_CACHE)))
    return hit[1], hit[2]


def analyse(candidates: Sequence[Candidate] | None, space: SearchSpace, arrays: dict[str, np.ndarray] | None = None,
            direct: bool = False, block: int = NCHWC_BLOCK) -> _Acc:
    """The fused-layer-group analysis of every candidate, vectorised over candidates.

    Block slots are read from a per-slot lookup table of :func:`_slot_terms` (one sparse product for
    all slots of all candidates); ``direct`` (or a space too large for the table) computes them
    instead. Stem, head and fp16 casts (which depend on the neighbouring slot) are computed here."""
    a = arrays if arrays is not None else block_arrays(candidates, space)
    fam = get_family(space)
    if not fam.vectorised:  # any family but mbv2: from its layer table
        cands = list(candidates) if candidates is not None else candidates_from_arrays(a, space)
        return table_acc([fam.layer_table(c, space) for c in cands], n_levels_of(space), block)
    n = len(a["stem_width"])
    st_idx, pos = _slots(space)
    geo, slots = _prepared(space, block)
    stem_w = a["stem_width"]
    widths = np.concatenate([stem_w[:, None], a["width"]], axis=1)  # column s+1: stage s, column 0: the stem
    cout = widths[:, st_idx + 1]
    cin = np.where(pos[None, :] == 0, widths[:, st_idx], cout)
    active = a["active"] > 0
    prec = a["prec"]
    rows = None
    if not direct and slots.table is not None:
        rows = slots.rows_of([cin, cout, *(a[g] for g in ("kernel", "expand", "keep", "rank")), prec], active)
    if rows is None:
        values = _slot_terms(cin, cout, a["kernel"], a["expand"], a["keep"], a["rank"], prec, a["active"], geo, block).sum(1)
    elif n <= 64:  # a few candidates: gathering the rows is cheaper than building the sparse selector
        values = slots.table[rows].sum(1)
    else:
        import scipy.sparse as sp

        b = rows.shape[1]
        pick = sp.csr_matrix((np.ones(n * b), rows.ravel(), np.arange(0, n * b + 1, b)), shape=(n, slots.n_rows))
        values = np.asarray(pick @ slots.table)
    acc = _Acc(n, geo.n_levels, values)
    cin0 = float(space.input.channels)
    hw = space.input.height * space.input.width

    def add(onehot: np.ndarray, kind: int, macs, traffic, count, params, in_elems, padded) -> None:
        """One group per candidate of ``kind``, split by precision (``onehot`` (N, 3)); ``padded``: its
        MACs with channels padded up to the block."""
        col = lambda x: x[:, None] if np.ndim(x) else x  # noqa: E731  (N,) -> (N, 1); scalars as they are
        acc.macs[:, :, kind] += onehot * col(macs)
        acc.pad_macs[:, :, kind] += onehot * col(padded - macs)
        acc.traffic[:, :, kind] += onehot * col(traffic)
        acc.count[:, :, kind] += onehot * count
        acc.params[:, :] += onehot * col(params)
        acc.qdq_elems[:] += onehot[:, 2] * in_elems
        acc.qdq_pairs[:] += 2 * onehot[:, 2] * count

    # stem: dense 3x3 conv at full resolution
    add(_onehot(a["stem_prec"]), 0, cin0 * stem_w * 9 * hw, cin0 * hw + stem_w * hw, 1.0, cin0 * stem_w * 9, cin0 * hw,
        _up(cin0, block) * _up(stem_w, block) * 9 * hw)
    acc.level_macs[:, 0] += cin0 * stem_w * 9 * hw
    # fp16 borders: a Cast wherever a group's precision differs from its predecessor's and one is fp16
    prev_prec = _forward_fill(active, prec, a["stem_prec"])
    before = prev_prec[:, :-1]
    border = active & (prec != before) & ((prec == 1) | (before == 1))
    fp16_border = (a["stem_prec"] == 1) * (cin0 * hw) + (border * cin * geo.in_hw[None, :]).sum(1)  # + the cast into an fp16 stem
    last_prec = prev_prec[:, -1]
    last_out = _forward_fill(active, cout, stem_w)[:, -1]
    # head 1x1 + pool + classifier (same precision)
    hw_last, level = geo.last_hw, geo.last_level
    hp, head_w = a["head_prec"], a["head_width"]
    oh = _onehot(hp)
    ncls = float(space.num_classes)
    add(oh, 1, last_out * head_w * hw_last, last_out * hw_last + head_w * hw_last, 1.0, last_out * head_w, last_out * hw_last,
        _up(last_out, block) * _up(head_w, block) * hw_last)
    add(oh, 3, head_w * ncls, head_w + ncls, 1.0, head_w * ncls, head_w, _up(head_w, block) * _up(ncls, block))
    acc.level_macs[:, level] += last_out * head_w * hw_last + head_w * ncls
    head_border = (hp != last_prec) & ((hp == 1) | (last_prec == 1))
    acc.casts[:] = border.sum(1) + head_border + (hp == 1)  # into the head, and back to fp32 logits
    acc.cast_elems[:] = fp16_border + head_border * last_out * hw_last + (hp == 1) * ncls
    return acc


def group_feature_names() -> list[str]:
    names = [f"{q}_{p}_{k}" for q in ("macs", "traffic", "groups") for p in PRECISIONS for k in KINDS]
    return (names + ["cast_elems", "casts", "qdq_elems", "add_elems", "adds", "int8_weights",
                     "nchw_macs_pw", "nchw_macs_dw", "nchw_traffic", "nchw_groups"]
            + [f"dw_macs_{q}_k{k}" for q in ("float", "int8") for k in DW_KERNELS] + ["move_elems", "moves"]
            + [f"pad_macs_{p}_{k}" for p in PRECISIONS for k in KINDS] + ["const"])


def group_features(candidates: Sequence[Candidate], space: SearchSpace, acc: _Acc | None = None,
                   block: int = NCHWC_BLOCK) -> np.ndarray:
    """(N, F) additive per-group sums (MACs in millions, traffic in 1e5 elements), see module docs."""
    acc = acc or analyse(candidates, space, block=block)
    n = acc.macs.shape[0]
    cols = [acc.macs.reshape(n, -1) / 1e6, acc.traffic.reshape(n, -1) / 1e5, acc.count.reshape(n, -1),
            (acc.cast_elems / 1e5)[:, None], acc.casts[:, None], (acc.qdq_elems / 1e5)[:, None],
            (acc.add_elems / 1e5)[:, None], acc.adds[:, None], (acc.params[:, 2] / 1e5)[:, None],
            acc.nchw_macs / 1e6, (acc.nchw_traffic / 1e5)[:, None], acc.nchw_groups[:, None], acc.dw_macs_k.reshape(n, -1) / 1e6,
            (acc.move_elems / 1e5)[:, None], acc.moves[:, None], acc.pad_macs.reshape(n, -1) / 1e6, np.ones((n, 1))]
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


def network_features(candidates: Sequence[Candidate] | None, space: SearchSpace, arrays: dict[str, np.ndarray] | None = None,
                     block: int = NCHWC_BLOCK) -> np.ndarray:
    """(N, F) whole-network features: group sums, per-resolution MACs, per-precision params,
    totals, QDQ pairs, precision shares and the raw encoding (column names: network_feature_names)."""
    a = arrays if arrays is not None else block_arrays(candidates, space)
    acc = analyse(candidates, space, a, block=block)
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


# --------------------------------------------------------------------------- from the layer table


def table_acc(tables: Sequence[Sequence], n_levels: int, block: int = NCHWC_BLOCK) -> _Acc:
    """The same analysis as :func:`analyse`, from each candidate's layer table
    (:meth:`autocomp.families.Family.layer_table`): how any family other than the vectorised mbv2 is
    analysed. Per layer: MACs / activation traffic / group count / params per (precision, kind),
    QDQ on the input of every int8 layer, MACs per resolution level, float convs outside the blocked
    (NCHWc) layout (rows with ``blocked``), depthwise MACs by kernel, residual adds, data moves
    (``move`` rows, e.g. a channel shuffle: elements and count), and fp16 casts
    at the borders of layer groups (the cast of the network input into an fp16 first group counts
    in ``cast_elems`` only, as in :func:`analyse`). One Python pass gathers the rows of all tables
    into arrays; the sums are vectorised (``np.add.at``)."""
    acc = _Acc(len(tables), n_levels)
    kinds = {k: i for i, k in enumerate(KINDS)}
    pc = PRECISION_CODES
    cols: list[tuple] = []
    starts: list[tuple] = []  # per group: (candidate, precision, input elements of its first row, first-group flag)
    ends: list[tuple] = []  # per candidate with rows: (candidate, precision of its last group, output elements of its last row)
    for n, rows in enumerate(tables):
        group = None
        r = None
        for r in rows:
            p = pc[r.precision]
            if r.group != group:
                starts.append((n, p, r.cin * r.in_hw, group is None))
                group = r.group
            cols.append((n, p, kinds.get(r.kind, 0), r.op == "add", r.op == "move", r.cin, r.cout, r.kernel, r.groups, r.in_hw,
                         r.out_hw, r.level, r.kind == "dw", r.kind == "fc", r.blocked))
        if r is not None:
            ends.append((n, starts[-1][1], r.cout * r.out_hw))
    if not cols:
        return acc
    a = np.array(cols, dtype=float)
    cand, prec, kind = a[:, 0].astype(int), a[:, 1].astype(int), a[:, 2].astype(int)
    is_add, is_move, cin, cout, kernel, grp, in_hw, out_hw = a[:, 3] > 0, a[:, 4] > 0, a[:, 5], a[:, 6], a[:, 7], a[:, 8], a[:, 9], a[:, 10]
    level, dw, fc, blocked = np.minimum(a[:, 11].astype(int), n_levels - 1), a[:, 12] > 0, a[:, 13] > 0, a[:, 14] > 0
    conv = ~is_add & ~is_move
    params = np.where(conv, cin / grp * cout * kernel * kernel, 0.0)
    macs = params * out_hw
    traffic = cin * in_hw + cout * out_hw
    lay = acc.layout
    v = acc.v

    def put(name: str, flat_index: np.ndarray, values: np.ndarray, mask: np.ndarray) -> None:
        col = lay[name][0]
        np.add.at(v, (cand[mask], col + flat_index[mask]), values[mask] if np.ndim(values) else values)

    pk = prec * len(KINDS) + kind
    zero = np.zeros(len(a), dtype=int)
    put("adds", zero, np.ones(len(a)), is_add)
    put("add_elems", zero, cout * out_hw, is_add)
    put("moves", zero, np.ones(len(a)), is_move)
    put("move_elems", zero, cout * out_hw, is_move)
    put("macs", pk, macs, conv)
    put("traffic", pk, traffic, conv)
    put("count", pk, np.ones(len(a)), conv)
    put("params", prec, params, conv)
    put("level_macs", level, macs, conv)
    ui, uo = _up(cin, block), _up(cout, block)
    padded = np.where(dw, uo * kernel * kernel * out_hw, ui * uo / grp * kernel * kernel * out_hw)
    put("pad_macs", pk, padded - macs, conv)
    q = conv & (prec == 2)
    put("qdq_elems", zero, cin * in_hw, q)
    put("qdq_pairs", zero, np.full(len(a), 2.0), q)
    dwk = np.array([DW_KERNELS.index(int(k)) if int(k) in DW_KERNELS else -1 for k in kernel])
    m = conv & dw & (dwk >= 0)
    put("dw_macs_k", (prec == 2) * len(DW_KERNELS) + dwk, macs, m)
    float_blocked = conv & blocked & (prec != 2)
    plain_dw = np.where(float_blocked & dw, 1.0 - _dw_blocked(cout, block), 0.0)
    plain_dense = np.where(float_blocked & ~dw & ~fc, _unblocked(cin, cout, block), 0.0)
    plain = plain_dw + plain_dense
    put("nchw_macs", zero, plain_dense * macs, plain_dense > 0)
    put("nchw_macs", zero + 1, plain_dw * macs, plain_dw > 0)
    put("nchw_groups", zero, plain, plain > 0)
    put("nchw_traffic", zero, plain * traffic, plain > 0)
    # fp16 casts at group borders: the network input into an fp16 first group (elements only), every
    # border between two groups where one is fp16, and the fp16 last group's output back to fp32
    g = np.array(starts, dtype=float)
    gc, gp, ge, first = g[:, 0].astype(int), g[:, 1].astype(int), g[:, 2], g[:, 3] > 0
    into = first & (gp == 1)
    np.add.at(v, (gc[into], lay["cast_elems"][0]), ge[into])
    prev_p = np.concatenate([[0], gp[:-1]])
    border = ~first & (prev_p != gp) & ((prev_p == 1) | (gp == 1))
    np.add.at(v, (gc[border], lay["casts"][0]), 1.0)
    np.add.at(v, (gc[border], lay["cast_elems"][0]), ge[border])
    e = np.array(ends, dtype=float)
    last = e[:, 1] == 1
    ec = e[:, 0].astype(int)
    np.add.at(v, (ec[last], lay["casts"][0]), 1.0)
    np.add.at(v, (ec[last], lay["cast_elems"][0]), e[last, 2])
    return acc


def n_levels_of(space: SearchSpace) -> int:
    return 1 + sum(1 for s in space.stages if s.stride == 2)


def candidates_from_arrays(a: dict[str, np.ndarray], space: SearchSpace) -> list[Candidate]:
    """The candidates that :func:`block_arrays` turned into ``a`` (for the table path)."""
    from autocomp.space import Block, Stage

    st_idx, _ = _slots(space)
    out = []
    for n in range(len(a["stem_width"])):
        stages = []
        for s in range(len(space.stages)):
            cols = np.nonzero((st_idx == s) & (a["active"][n] > 0))[0]
            blocks = tuple(Block(int(a["kernel"][n, i]), int(a["expand"][n, i]), float(a["keep"][n, i]), float(a["rank"][n, i]),
                                 PRECISIONS[int(a["prec"][n, i])]) for i in cols)
            stages.append(Stage(int(a["width"][n, s]), blocks))
        out.append(Candidate(space.name, int(a["stem_width"][n]), PRECISIONS[int(a["stem_prec"][n])], tuple(stages),
                             int(a["head_width"][n]), PRECISIONS[int(a["head_prec"][n])]))
    return out
