"""The library: autocomp.search on a space with the user's torch Dataset (real Ray, ONNX Runtime),
the Run it returns, compress and measure; --json output of the listing commands."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

import autocomp
from autocomp.errors import UserError

class Digits8(torch.utils.data.Dataset):
    """A user's Dataset: MNIST digits pooled to 8x8, normalised by the Dataset itself."""

    def __init__(self, mnist, n: int, offset: int = 0):
        x = torch.as_tensor(mnist.train.x[offset : offset + n]).float() / 255.0
        self.x = (torch.nn.functional.adaptive_avg_pool2d(x, 8) - 0.13) / 0.3
        self.targets = mnist.train.y[offset : offset + n].tolist()

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        return self.x[i], self.targets[i]


@pytest.fixture(scope="module")
def api_run(ray_local, mnist, tmp_path_factory, tiny_yaml, user_cache):
    tmp = tmp_path_factory.mktemp("api")
    space = tmp / "api-tiny.yaml"
    space.write_text(tiny_yaml("api-tiny"))
    events = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AUTOCOMP_CACHE", str(user_cache))
        run = autocomp.search(str(space), {"train": Digits8(mnist, 1500), "test": Digits8(mnist, 300, offset=1500)},
                              budget="50ms", trials=2, seed=3, out=tmp / "run", weights="scratch", train_steps=150,
                              calibrate=0, concurrency=2, callbacks=[lambda ev, payload: events.append((ev, payload))],
                              verbose=False)
    return run, events


def test_search_returns_a_run(api_run):
    run, events = api_run
    df = run.results
    assert len(df) == 2 and set(df["status"]) == {"ok"}, df["error"].tolist()
    assert (df["latency_ms"] > 0).all() and (df["accuracy"] > 0.2).all()  # trained from scratch on 8x8 digits: chance is 0.1
    ids = set(df["id"])
    assert run.front and {r["id"] for r in run.front} <= ids
    assert run.best is not None and run.best["id"] in ids and run.best["latency_ms"] <= 50
    # progress went through the callback: one event per row, then the summary
    assert [e for e, _ in events] == ["row", "row", "summary"]
    assert {p["id"] for e, p in events if e == "row"} == ids and events[-1][1] == run.summary
    cfg = json.loads((run.dir / "config.json").read_text())
    assert cfg["data"] == "python:Digits8" and cfg["eval"]["train_device"] == "auto"
    assert autocomp.Run.open(run.dir).summary == run.summary
    assert run.report().is_file()


def test_run_export_refuses_an_unknown_id(api_run):
    run, _ = api_run
    with pytest.raises(UserError, match=r"no candidate 'nope'"):
        run.export("nope", verbose=False)


def test_compress_and_measure(tiny_yaml, tmp_path):
    from autocomp.models.mbv2 import build, count_params
    from autocomp.space import load_space

    p = tmp_path / "c-tiny.yaml"
    p.write_text(tiny_yaml("c-tiny"))
    space = load_space(p)
    big = space.largest()
    st = big.stages[0]
    cand = dataclasses.replace(big, stages=(dataclasses.replace(st, blocks=tuple(dataclasses.replace(b, keep=0.5, precision="int8")
                                                                                  for b in st.blocks)),))
    model = build(big, space)
    calib = [torch.randn(16, 1, 8, 8) for _ in range(2)]
    small = autocomp.compress(model, cand.to_dict(), data=calib)
    assert count_params(small) < count_params(model)  # channels physically removed
    assert small(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    with pytest.raises(UserError, match="int8 layers but no calibration data"):
        autocomp.compress(model, cand)
    m = autocomp.measure(small, "cpu-ort", precision="int8", input_shape=(1, 8, 8), repeats=20, min_time_s=0.05)
    assert m["median_ms"] > 0 and m["device"] == "cpu-ort" and m["fingerprint_id"]


def test_bad_input_is_refused_before_anything_runs(tmp_path):
    with pytest.raises(UserError, match="budget"):
        autocomp.search("mnist-mbv2", "mnist", budget="-1ms", out=tmp_path / "r")
    with pytest.raises(UserError, match=r"data: a object"):
        autocomp.search("mnist-mbv2", object(), out=tmp_path / "r")
    with pytest.raises(UserError, match=r"items are 1x8x8; expected 1x28x28"):
        autocomp.search("mnist-mbv2", torch.utils.data.TensorDataset(torch.zeros(30, 1, 8, 8), torch.arange(30) % 3), out=tmp_path / "r")
    with pytest.raises(UserError, match=r"cuda"):
        if torch.cuda.is_available():
            pytest.skip("this machine has a GPU")
        autocomp.search("mnist-mbv2", "mnist", train_device="cuda", out=tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_listing_commands_print_json():
    from typer.testing import CliRunner

    from autocomp.cli import app

    r = CliRunner().invoke(app, ["spaces", "--json"])
    assert r.exit_code == 0, r.output
    assert any(s["name"] == "mnist-mbv2" and s["input"] == [1, 28, 28] for s in json.loads(r.stdout))
    r = CliRunner().invoke(app, ["devices", "--json", "--no-probe"])
    assert r.exit_code == 0, r.output
    assert any(d["device"] == "cpu-ort" and d["backend"] == "onnxruntime" for d in json.loads(r.stdout))


def test_json_output_is_valid_json(capsys):
    from autocomp.cliutil import print_json

    print_json({"live_error": {"spearman": float("nan")}, "budget_ms": 2.0, "xs": [float("inf"), 1]})
    assert json.loads(capsys.readouterr().out) == {"live_error": {"spearman": None}, "budget_ms": 2.0, "xs": [None, 1]}
