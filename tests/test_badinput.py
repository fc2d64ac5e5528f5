"""Bad input, command by command, from a table: every case exits 2 with one line on stderr (no
traceback, clipped, the user's text printed literally), before Ray starts, and leaves every file as
it was. Most cases run in-process through the CLI's own entry point (``autocomp.cli.main``: the
same ``run_app`` a shell reaches, without paying the import again); a few run as real subprocesses.

To add a case: one ``Case`` in CASES (argv with ``{t}`` for the case's folder, an optional setup
that writes the bad file into it, and a fragment the message must hold).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

SHIPPED_SPACE = Path(__file__).resolve().parents[1] / "search_spaces" / "mnist-mbv2.yaml"
TINY = (Path(__file__).parent / "fixtures" / "tiny-space.yaml").read_text()


# --------------------------------------------------------------------------- what the cases are made of


def _write(name: str, data: str | bytes) -> Callable[[Path], None]:
    def setup(t: Path) -> None:
        p = t / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data if isinstance(data, bytes) else data.encode())
    return setup


def _all(*setups: Callable[[Path], None]) -> Callable[[Path], None]:
    def setup(t: Path) -> None:
        for s in setups:
            s(t)
    return setup


def _run_dir(name: str = "run", *, trial_cell: str = "0", seed: int = 0, extra: Callable[[Path], None] | None = None):
    """A run directory as `autocomp search --budget 5ms --space tiny.yaml --trials 3 --seed SEED` leaves it
    after one trial (config.json and a results.csv whose trial cell is ``trial_cell``)."""
    def setup(t: Path) -> None:
        from autocomp.config import SearchConfig
        from autocomp.evaluate import EvalSettings
        from autocomp.measure import get_device
        from autocomp.rundir import RESULT_COLUMNS

        (t / "tiny.yaml").write_text(TINY)
        run = t / name
        run.mkdir()
        cfg = SearchConfig(budget_ms=5.0, trials=3, seed=seed, space=str(t / "tiny.yaml"), out=run, weights="scratch")
        config = {"schema_version": 1, **json.loads(cfg.model_dump_json()),
                  "eval": EvalSettings(weights="scratch", train_steps=1, seed=seed, val_size=100).model_dump(),
                  "device_protocol": get_device("cpu-ort").options, "controller_options": {}}
        (run / "config.json").write_text(json.dumps(config))
        row = {c: "" for c in RESULT_COLUMNS} | {"trial": trial_cell, "id": "abc", "status": "ok", "accuracy": "0.5",
                                                  "latency_ms": "1.0", "policy": "{}"}
        (run / "results.csv").write_text(",".join(RESULT_COLUMNS) + "\r\n" + ",".join(row[c] for c in RESULT_COLUMNS) + "\r\n")
        if extra:
            extra(run)
    return setup


def _space_yaml(**replace: str) -> str:
    text = SHIPPED_SPACE.read_text()
    for old, new in replace.items():
        assert old in text
        text = text.replace(old, new, 1)
    return text


def _checkpoint(name: str, *, truncate: bool = False, fits: bool = True) -> Callable[[Path], None]:
    def setup(t: Path) -> None:
        import io

        import torch

        state = {"stem.weight": torch.zeros(3)} if not fits else {}
        buf = io.BytesIO()
        torch.save({"schema_version": 1, "space": "mnist-mbv2", "state_dict": state}, buf)
        data = buf.getvalue()
        (t / name).write_bytes(data[: len(data) // 2] if truncate else data)
    return setup


class _Planted:
    def __reduce__(self):
        return (open, ("/tmp/autocomp-badinput-pwned", "w"))


BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [{', '.join(['*' + p] * 10)}]\n" for p, c in zip("abcdefgh", "bcdefghi"))
SEARCH = ("search", "--budget", "5ms", "--trials", "1", "--top-k", "0", "--no-calibrate")


@dataclass
class Case:
    name: str
    argv: tuple[str, ...]
    says: str  # a fragment of the one line
    setup: Callable[[Path], None] | None = None
    subprocess: bool = False  # also run as a real `python -m autocomp.cli`


CASES = [
    # budgets: finite, positive, ASCII digits, representable
    Case("budget-overflows", ("search", "--budget", "1e308s", "--out", "{t}/o"), "not a positive finite duration", subprocess=True),
    Case("budget-arabic-indic-digits", ("search", "--budget", "١٠ms", "--out", "{t}/o"), "--budget: cannot read"),
    Case("budget-subnormal", ("search", "--budget", "1e-320ms", "--out", "{t}/o"), "is outside"),
    Case("budget-unit", ("search", "--budget", "10 fortnights", "--out", "{t}/o"), "unknown unit"),
    Case("budget-missing", ("search", "--out", "{t}/o"), "--budget: missing"),
    Case("budget-huge-text", ("search", "--budget", "9" * 100_000 + "ms", "--out", "{t}/o"), "--budget: cannot read"),
    Case("trials-not-a-number", ("search", "--budget", "5ms", "--trials", "abc"), "Invalid value for '--trials'"),
    Case("unknown-flag", ("search", "--budget", "5ms", "--bogus"), "No such option: --bogus"),
    # --out: a directory this user can write, never over another run; printed literally
    Case("out-is-a-file", (*SEARCH, "--out", "{t}/x[/]y"), "'{t}/x[/]y' is a file", _write("x[/]y", "not a dir"), subprocess=True),
    Case("out-under-a-file", (*SEARCH, "--out", "{t}/f/run"), "is a file", _write("f", "")),
    Case("out-not-creatable", (*SEARCH, "--out", "/proc/autocomp-no/run"), "cannot create"),
    Case("out-holds-a-run", (*SEARCH, "--out", "{t}/run"), "already holds a run", _run_dir()),
    # --resume: a run, the same configuration, a table that reads
    Case("resume-no-run", ("search", "--resume", "{t}/empty"), "holds no run to resume", _write("empty/notes.txt", "")),
    Case("resume-conflicting-flag", ("search", "--resume", "{t}/run", "--seed", "4"), "--seed: 4 contradicts 0", _run_dir()),
    Case("resume-with-config", ("search", "--resume", "{t}/run", "--config", "{t}/run/config.json"), "given with --resume", _run_dir()),
    Case("resume-non-numeric-trial", ("search", "--resume", "{t}/run"), "column trial: 'one' is not a number", _run_dir(trial_cell="one")),
    Case("resume-predictor-not-utf8", ("search", "--resume", "{t}/run"), "unreadable predictor metadata",
         _run_dir(extra=lambda r: _write("latency_model/predictor.json", b"\xff\xfe{")(r))),
    Case("resume-predictor-without-space", ("search", "--resume", "{t}/run"), "names no space",
         _run_dir(extra=lambda r: _write("latency_model/predictor.json", json.dumps({"schema_version": 1, "kind": "sum", "coef": [1.0]}))(r))),
    Case("resume-predictor-coef-not-numbers", ("search", "--resume", "{t}/run"), "coef is not a list of numbers",
         _run_dir(extra=lambda r: _write("latency_model/predictor.json", json.dumps(
             {"schema_version": 1, "kind": "sum", "space": "mnist-mbv2", "coef": ["x"]}))(r))),
    # --config: the fields of config.json, read safely
    Case("config-alias-bomb", ("search", "--config", "{t}/c.yaml"), "uses a YAML alias", _write("c.yaml", BOMB), subprocess=True),
    Case("config-huge", ("search", "--config", "{t}/c.yaml"), "bytes; expected", _write("c.yaml", "budget_ms: 5\n#" + "x" * 2_000_000)),
    Case("config-unknown-field", ("search", "--config", "{t}/c.yaml"), "bogus: unknown field", _write("c.yaml", "budget_ms: 5\nbogus: 1\n")),
    Case("config-not-utf8", ("search", "--config", "{t}/c.yaml"), "is not UTF-8", _write("c.yaml", b"budget_ms: \xff\n")),
    Case("config-a-list", ("search", "--config", "{t}/c.yaml"), "holds a list", _write("c.yaml", "- 1\n")),
    Case("config-bad-value", ("search", "--config", "{t}/c.yaml"), "trials", _write("c.yaml", "budget_ms: 5\ntrials: 0\n")),
    Case("config-eval-unknown", ("search", "--config", "{t}/c.yaml"), "eval.bogus: not a scoring option", _write("c.yaml", "budget_ms: 5\neval: {bogus: 1}\n")),
    Case("config-eval-bad-value", ("search", "--config", "{t}/c.yaml"), "eval.bn_images", _write("c.yaml", "budget_ms: 5\neval: {bn_images: many}\n")),
    Case("config-conflicting-flag", ("search", "--config", "{t}/c.yaml", "--budget", "6ms"), "contradicts", _write("c.yaml", "budget: 5ms\n")),
    # --space: a safe YAML whose name is a safe file name and not a shipped space's with other content
    Case("space-not-utf8", (*SEARCH, "--space", "{t}/s.yaml", "--out", "{t}/o"), "not UTF-8", _write("s.yaml", b"\xfe\xff")),
    Case("space-alias-bomb", (*SEARCH, "--space", "{t}/s.yaml", "--out", "{t}/o"), "uses a YAML alias", _write("s.yaml", BOMB)),
    Case("space-deeply-nested", (*SEARCH, "--space", "{t}/s.yaml", "--out", "{t}/o"), "nested too deeply", _write("s.yaml", "[" * 50_000)),
    Case("space-name-traversal", (*SEARCH, "--space", "{t}/s.yaml", "--out", "{t}/o"), "name",
         _write("s.yaml", _space_yaml(**{"name: mnist-mbv2": "name: ../../../x"}))),
    Case("space-name-markup", (*SEARCH, "--space", "{t}/s.yaml", "--out", "{t}/o"), "'x[/]y'",
         _write("s.yaml", _space_yaml(**{"name: mnist-mbv2": "name: x[/]y"}))),
    Case("space-reuses-shipped-name", (*SEARCH, "--space", "{t}/s.yaml", "--out", "{t}/o"), "name of a shipped space",
         _write("s.yaml", _space_yaml(**{"num_classes: 10": "num_classes: 7"}))),
    Case("space-unknown", (*SEARCH, "--space", "no-such-space", "--out", "{t}/o"), "unknown search space"),
    # --weights: load (weights_only) and fit the space
    Case("weights-missing", (*SEARCH, "--weights", "{t}/none.pt", "--out", "{t}/o"), "--weights: no such checkpoint"),
    Case("weights-garbage", (*SEARCH, "--weights", "{t}/w.pt", "--out", "{t}/o"), "--weights: cannot load", _write("w.pt", b"garbage" * 100)),
    Case("weights-a-pickle", (*SEARCH, "--weights", "{t}/w.pt", "--out", "{t}/o"), "--weights: cannot load",
         _write("w.pt", pickle.dumps(_Planted()))),
    Case("weights-truncated", (*SEARCH, "--weights", "{t}/w.pt", "--out", "{t}/o"), "--weights: cannot load", _checkpoint("w.pt", truncate=True)),
    Case("weights-do-not-fit", (*SEARCH, "--weights", "{t}/w.pt", "--out", "{t}/o"), "do not fit", _checkpoint("w.pt", fits=False)),
    # --address: well formed and answering
    Case("address-unreachable", (*SEARCH, "--address", "127.0.0.1:1", "--out", "{t}/o"), "nothing answers at"),
    Case("address-malformed", (*SEARCH, "--address", "not an address", "--out", "{t}/o"), "is not an address"),
    Case("address-dashboard", (*SEARCH, "--address", "http://127.0.0.1:8265", "--out", "{t}/o"), "dashboard"),
    # the rest of search's inputs
    Case("controller-unknown", (*SEARCH, "--controller", "bogus", "--out", "{t}/o"), "bogus"),
    Case("device-unknown", (*SEARCH, "--device", "toaster", "--out", "{t}/o"), "--device"),
    Case("data-unknown", (*SEARCH, "--data", "bogus", "--out", "{t}/o"), "--data: unknown dataset"),
    # report: never over another run
    Case("report-out-holds-another-run", ("report", "{t}/run", "--out", "{t}/other"), "holds another run",
         _all(_run_dir(), _run_dir("other", seed=1)), subprocess=True),
    Case("report-out-is-a-file", ("report", "{t}/run", "--out", "{t}/f"), "is a file", _all(_run_dir(), _write("f", ""))),
    Case("report-no-run", ("report", "{t}/none"), "is not a directory"),
    # other commands
    Case("distill-teacher-raises", ("distill", "{t}/run", "--teacher", "json:loads", "--steps", "0"), "json:loads() raised TypeError",
         _run_dir()),
    Case("export-policy-not-utf8", ("export", "--policy", "{t}/p.json"), "not UTF-8", _write("p.json", b"\xff{")),
    Case("export-policy-a-directory", ("export", "--policy", "{t}/p.json"), "is not a file", _write("p.json/x", "")),
    Case("export-policy-deeply-nested", ("export", "--policy", "{t}/p.json"), "nested too deeply", _write("p.json", "[" * 100_000)),
    Case("predictor-kind", ("predictor", "train", "--kind", "bogus"), "--kind: 'bogus' is not a model kind"),
    Case("supernet-space-traversal", ("supernet", "train", "--space", "{t}/s.yaml", "--steps", "1"), "name",
         _write("s.yaml", _space_yaml(**{"name: mnist-mbv2": "name: ../../../x"}))),
    Case("supernet-out-a-directory", ("supernet", "train", "--steps", "1", "--eval-size", "0", "--out", "{t}/d.pt"), "is a directory",
         _write("d.pt/x", "")),
]


# --------------------------------------------------------------------------- the checks


def _snapshot(root: Path) -> dict[str, tuple]:
    """Every path under ``root`` with its kind, size, mtime and content hash: what 'nothing changed' compares."""
    snap = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() and not p.is_symlink() else ""
            # a directory by its entries (which are listed too): a lock file made and removed is no change
            snap[str(p.relative_to(root))] = (True,) if p.is_dir() else (False, st.st_size, st.st_mtime_ns, digest)
    return snap


def _check(case: Case, t: Path, code: int, err: str, before: dict) -> None:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, f"{case.name}: exit {code}: {err[-1500:]}"
    assert "Traceback" not in err, f"{case.name}: {err[-1500:]}"
    assert len(lines) == 1, f"{case.name}: {len(lines)} lines: {err[-1500:]}"
    assert len(lines[0]) <= 600, f"{case.name}: a line of {len(lines[0])} characters"
    assert lines[0].startswith("error: ") and case.says.format(t=t) in lines[0], f"{case.name}: {lines[0]}"
    assert "Started a local Ray" not in err
    assert _snapshot(t) == before, f"{case.name}: files were written or changed"


@pytest.fixture
def case_dir(tmp_path, monkeypatch, user_cache):
    t = tmp_path / "case"
    t.mkdir()
    monkeypatch.chdir(t)  # a default output (reports/<timestamp>, supernets/) would land here
    monkeypatch.setenv("AUTOCOMP_CACHE", str(user_cache))
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    return t


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(case, case_dir, capsys, monkeypatch):
    from autocomp.cli import main

    t = case_dir
    if case.setup:
        case.setup(t)
    before = _snapshot(t)
    monkeypatch.setattr(sys, "argv", ["autocomp", *(a.format(t=t) for a in case.argv)])
    with pytest.raises(SystemExit) as exit_:
        main()
    _check(case, t, exit_.value.code, capsys.readouterr().err, before)
    assert not Path("/tmp/autocomp-badinput-pwned").exists()


SUBPROCESS_CASES = [c for c in CASES if c.subprocess]


@pytest.mark.parametrize("case", SUBPROCESS_CASES, ids=[c.name for c in SUBPROCESS_CASES])
def test_bad_input_as_a_real_command(case, case_dir):
    t = case_dir
    if case.setup:
        case.setup(t)
    before = _snapshot(t)
    p = subprocess.run([sys.executable, "-m", "autocomp.cli", *(a.format(t=t) for a in case.argv)], cwd=t,
                       capture_output=True, text=True, timeout=300, env={**os.environ})
    _check(case, t, p.returncode, p.stderr, before)


def test_the_table_covers_every_command_that_takes_user_files():
    commands = {c.argv[0] for c in CASES}
    assert {"search", "report", "distill", "export", "predictor", "supernet"} <= commands
    assert len(CASES) >= 40
