"""Latency predictors trained on real device measurements (code only; artifacts live in predictors/).

A predictor is an artifact of one device fingerprint (:mod:`autocomp.measure.fingerprint`) and one
search space: it lives in ``<root>/<device>/<fingerprint id>/`` beside the table it was fit on (the
default space), or ``<root>/spaces/<space>/<device>/<fingerprint id>/`` (every other space: fbnet-224,
a user's network), where ``<root>`` is the shipped ``predictors/`` or the user's cache
(``$AUTOCOMP_CACHE/predictors``: calibrations). So calibrating one space never replaces another's.

Public API (used by the search)::

    from autocomp.predictor import find_predictor, load_predictor
    pred = find_predictor("cpu-ort", fingerprint)   # Predictor | None: this fingerprint's, exactly
    ms = pred.predict(candidates)                   # numpy array of milliseconds, batched, no export
    pred.fingerprint                                # the fingerprint it was measured on

Modules: ``features`` (analytic, fusion-aware features), ``model`` (fit / select / save / load),
``campaign`` (measurement tables), ``transfer`` (adapt a predictor to a new fingerprint from a few
measurements), ``calibrate`` (the latency model of a search: match, calibrate, adapt online), ``cli``.
"""

from __future__ import annotations

from pathlib import Path

from autocomp.measure.fingerprint import fingerprint_id, similarity
from autocomp.predictor.model import META_NAME, Predictor, fit, metrics
from autocomp.resources import predictors_dir, user_predictors_dir

__all__ = ["Predictor", "find_predictor", "fit", "load_predictor", "metrics", "precision_facts", "predictor_dir",
           "predictor_dirs", "space_root"]

PRECISION_NAME = "precision.json"  # what each precision costs on the fingerprint (benchmarks/precision_latency.py)


def space_root(root: Path | str, space: str | None) -> Path:
    """Where the tables and predictors of ``space`` live under a predictors root: the root itself for
    the default space (and ``None``), ``<root>/spaces/<space>/`` for every other."""
    from autocomp.space import DEFAULT_SPACE

    return Path(root) if space in (None, DEFAULT_SPACE) else Path(root) / "spaces" / space


def predictor_dir(device_name: str, fp_id: str, root: Path | str | None = None, space: str | None = None) -> Path:
    return space_root(root if root is not None else predictors_dir(), space) / device_name / fp_id


def predictor_dirs(device_name: str, roots: list[Path] | None = None, space: str | None = None) -> list[Path]:
    """Every fingerprint folder of ``device_name`` holding a predictor of ``space``, the user's cache
    first (not the ``<id>.corrupt-<time>`` folders a refused calibration was set aside in)."""
    roots = roots if roots is not None else [user_predictors_dir(), predictors_dir()]
    return [d for r in roots for d in sorted((space_root(r, space) / device_name).glob("*"))
            if (d / META_NAME).exists() and ".corrupt-" not in d.name]


def load_predictor(device_name: str, fp_id: str | None = None, root: Path | str | None = None,
                   space: str | None = None) -> Predictor | None:
    """The predictor of ``device_name`` for fingerprint ``fp_id`` under ``root`` (default: shipped);
    with no ``fp_id``, the only one there is. None when there is none. A corrupt or incompatible
    artifact raises UserError (one line, exit 2)."""
    if fp_id is not None:
        d = predictor_dir(device_name, fp_id, root, space)
        return Predictor.load(d) if (d / META_NAME).exists() else None
    dirs = predictor_dirs(device_name, [Path(root) if root is not None else predictors_dir()], space)
    if len(dirs) > 1:
        from autocomp.errors import UserError

        raise UserError("--fingerprint", f"{device_name!r} has predictors for {len(dirs)} fingerprints "
                        f"({', '.join(d.name for d in dirs)})", "the fingerprint id to use")
    return Predictor.load(dirs[0]) if dirs else None


def find_predictor(device_name: str, fingerprint: dict, roots: list[Path] | None = None,
                   space: str | None = None) -> Predictor | None:
    """The predictor of ``space`` measured on exactly this fingerprint, or None. Where several roots
    hold one (a calibration in the user's cache, a shipped table's), the one fit on the most
    measurements of the fingerprint (:func:`fit_size`); on a tie the earlier root's (the cache first)."""
    from autocomp.errors import UserError
    from autocomp.space import DEFAULT_SPACE

    fid = fingerprint_id(fingerprint)
    best = None
    for root in roots if roots is not None else [user_predictors_dir(), predictors_dir()]:
        try:
            pred = load_predictor(device_name, fid, root, space)
        except UserError:  # one a search would set aside (corrupt, or of an older feature set): the next root's
            continue
        if pred is not None and pred.space.name == (space or DEFAULT_SPACE):  # a cache written before tables were per space may hold another's
            if best is None or fit_size(pred) > fit_size(best):
                best = pred
    return best


def fit_size(pred: Predictor) -> int:
    """How many measurements of its own fingerprint a predictor was fit on: a calibration's ``k``
    (its source's table was another host's), a refit's or a table fit's training rows."""
    cal = pred.meta.get("calibration") or {}
    return int(cal.get("n_fit") or 0) if cal else int(pred.meta.get("n_train") or 0)


def nearest_predictor(device_name: str, fingerprint: dict, devices: list[str] | None = None,
                      roots: list[Path] | None = None, space: str | None = None) -> Predictor | None:
    """The shipped or cached predictor of ``space`` whose fingerprint is closest to ``fingerprint``
    (the source of a calibration), among ``device_name``'s and then those of ``devices``; None when
    there is none. A predictor that does not load is passed over, and so is one of this very
    fingerprint (a calibration's own earlier result is not its source)."""
    from autocomp.errors import UserError
    from autocomp.space import DEFAULT_SPACE

    here = fingerprint_id(fingerprint)
    best, best_score = None, 0.0
    for name in [device_name, *(devices or [])]:
        for d in predictor_dirs(name, roots, space):
            try:
                pred = Predictor.load(d)
            except UserError:
                continue
            if pred.space.name != (space or DEFAULT_SPACE) or pred.fingerprint_id == here:
                continue
            score = similarity(pred.fingerprint, fingerprint) + (0.25 if name == device_name else 0.0)
            if score > best_score:
                best, best_score = pred, score
        if best is not None:
            break
    return best


def precision_facts(device_name: str, fp_id: str) -> dict | None:
    """What each precision is worth on this fingerprint, as measured by
    ``benchmarks/precision_latency.py`` (``precision.json`` beside the predictor: whole-network
    latency ratios and the layer types whose int8 is slower than fp32), or None if never measured."""
    import json

    for root in (user_predictors_dir(), predictors_dir()):
        path = predictor_dir(device_name, fp_id, root) / PRECISION_NAME
        if path.is_file():
            try:
                facts = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return None
            return facts if isinstance(facts, dict) else None
    return None


def int8_warning(facts: dict | None) -> str | None:
    """One line saying where int8 is slower than fp32 on a fingerprint, or None."""
    if not facts:
        return None
    slow = [str(t) for t in facts.get("int8_slower_than_fp32") or []]
    ratio = facts.get("int8_over_fp32")
    parts = []
    if isinstance(ratio, (int, float)) and ratio > 1:
        parts.append(f"int8 networks run {ratio:.1f}x slower than fp32")
    if slow:
        parts.append("int8 is slower than fp32 for " + ", ".join(slow))
    return "; ".join(parts) or None
