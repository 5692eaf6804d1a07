"""Bringing your own model and data through the CLI (issue 18): a custom nn.Module by module:factory
from the working directory, a TorchScript file and an npz, through ``margins``, ``consistency`` and
``run``; every bad input is one line ``error: ...`` with exit code 2 and no traceback."""

import json
import os
import sys

import numpy as np
import pandas as pd
import pytest
import torch
import typer
from typer.testing import CliRunner

from marginkit.cli import app
from marginkit.cli._common import friendly_errors

runner = CliRunner()

MODULE = '''
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Linear(4, 8)
        self.b = nn.Linear(8, 3)

    def forward(self, x):
        return self.b(torch.relu(self.a(x.flatten(1))))


class TupleNet(Net):
    def forward(self, x):
        return super().forward(x), x


def make():
    return Net()


def make_tuple():
    return TupleNet()
'''


@pytest.fixture
def own(tmp_path, monkeypatch):
    """A working directory with the module w18own.py, its weights, a TorchScript file and two npz files."""
    (tmp_path / "w18own.py").write_text(MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    sys.modules.pop("w18own", None)
    mod = importlib.import_module("w18own")
    net = mod.Net().eval()
    torch.save(net.state_dict(), "w.pt")
    torch.jit.script(net).save("ts.pt")
    rng = np.random.default_rng(0)
    x = rng.random((40, 4)).astype("float32")
    y = rng.integers(0, 3, 40)
    np.savez("split.npz", x=x[:30], y=y[:30], x_test=x[30:], y_test=y[30:])
    np.savez("whole.npz", x=x, y=y)
    np.savez("wrong_shape.npz", x_test=rng.random((6, 3, 4)).astype("float32"), y_test=y[:6],
             x=rng.random((6, 3, 4)).astype("float32"), y=y[:6])
    yield {"net": net, "x": torch.from_numpy(x), "y": torch.from_numpy(y), "dir": tmp_path}
    sys.modules.pop("w18own", None)


def _lines(output):
    return [line for line in output.splitlines() if line.strip()]


def _clean_error(res, *needles):
    lines = _lines(res.output)
    ok = (res.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in res.output)
    return ok and all(n in lines[0] for n in needles)


def _logit_margins(net, x):
    with torch.no_grad():
        z = net(x)
    top = z.topk(2, dim=1).values
    return (top[:, 0] - top[:, 1]).double().numpy()


FAST = ["--input-margin", "attack", "--attack-param", "budget=30"]


def test_factory_without_weights_is_an_error_naming_random_init(own):
    res = runner.invoke(app, ["margins", "--model", "w18own:make", "--dataset", "split.npz", "--out", "o"])
    assert _clean_error(res, "--random-init"), res.output
    assert not os.path.exists("o")  # a refused run leaves nothing behind


def test_factory_with_weights_honours_x_test_and_gives_the_models_logit_margins(own):
    res = runner.invoke(app, ["margins", "--model", "w18own:make", "--weights", "w.pt", "--dataset", "split.npz",
                              "--input-margin", "none", "--out", "o"])
    assert res.exit_code == 0, res.output
    df = pd.read_parquet("o/results.parquet")
    assert len(df) == 10  # x_test/y_test, not an 80/20 split of x
    np.testing.assert_allclose(df.sort_values("index")["logit_margin"], _logit_margins(own["net"], own["x"][30:]),
                               rtol=1e-5, atol=1e-6)
    assert df["feature_margin"].isna().all()
    summary = open("o/summary.md").read()
    assert "x_test/y_test (10)" in summary and "No feature margins: Net is not an nn.Sequential" in summary
    assert "no feature margins" in res.output


def test_tuple_output_is_an_error_naming_logits_key_and_logits_key_picks_the_logits(own):
    args = ["margins", "--model", "w18own:make_tuple", "--weights", "w.pt", "--dataset", "split.npz",
            "--input-margin", "none"]
    res = runner.invoke(app, args + ["--out", "o1"])
    assert _clean_error(res, "--logits-key 0"), res.output
    res = runner.invoke(app, args + ["--logits-key", "0", "--out", "o2"])
    assert res.exit_code == 0, res.output
    df = pd.read_parquet("o2/results.parquet").sort_values("index")
    np.testing.assert_allclose(df["logit_margin"], _logit_margins(own["net"], own["x"][30:]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("model", [["w18own:make", "--random-init"], ["ts.pt"]], ids=["factory", "torchscript"])
def test_consistency_runs_for_a_model_without_a_linear_head_and_says_what_it_skipped(own, model):
    res = runner.invoke(app, ["consistency", "--eps", "0.3", "--model", *model, "--dataset", "split.npz", *FAST,
                              "--bootstrap", "0", "--subset-sizes", "5", "--repeats", "2", "--isometry", "3",
                              "--out", "c"])
    assert res.exit_code == 0, res.output
    assert "skipped isometry" in res.output and "skipped feature margin" in res.output
    report = open("c/report.md").read()
    assert "## Skipped steps" in report and "Head equidistance" not in report
    metrics = json.load(open("c/metrics.json"))
    assert "isometry" in metrics["extras"]["skipped"]
    assert "tau n/a" not in res.output and "tau " in res.output  # the logit-margin analysis ran


@pytest.mark.parametrize("case", ["classes", "shape", "out_is_file", "read_only"])
def test_bad_inputs_are_one_line(own, case):
    base = ["margins", "--model", "ts.pt", "--dataset", "split.npz", "--input-margin", "none"]
    if case == "classes":
        args, needle = base + ["--classes", "0,1", "--out", "o"], "class"
    elif case == "shape":
        args, needle = ["margins", "--model", "ts.pt", "--dataset", "wrong_shape.npz", "--out", "o"], "shape"
    elif case == "out_is_file":
        open("afile", "w").close()
        args, needle = base + ["--out", "afile"], "is a file"
    else:
        if os.geteuid() == 0:
            pytest.skip("root ignores folder permissions")
        os.mkdir("ro")
        os.chmod("ro", 0o500)
        args, needle = base + ["--out", "ro"], "read-only"
    try:
        res = runner.invoke(app, args)
    finally:
        if case == "read_only":
            os.chmod("ro", 0o700)
    assert _clean_error(res, needle), res.output
    assert not os.path.exists("o")


def test_run_on_an_unsplit_npz_says_so_and_its_model_path_works_with_margins(own):
    res = runner.invoke(app, ["run", "--dataset", "whole.npz", "--arch", "linear", "--input-margin", "none",
                              "--out", "rq"])
    assert res.exit_code == 0, res.output
    assert "evaluated on its training data" in res.output and "--test-fraction" in res.output
    assert os.path.exists("rq/model.pt") and len(pd.read_parquet("rq/table/results.parquet")) == 40
    res = runner.invoke(app, ["margins", "--model", "rq/model.pt", "--dataset", "whole.npz", "--test-fraction", "0.25",
                              "--input-margin", "none", "--out", "m"])
    assert res.exit_code == 0, res.output
    n = len(pd.read_parquet("m/results.parquet"))
    assert 8 <= n <= 12 and f"stratified split, test_fraction 0.25, seed 0: {40 - n} train, {n} test" in res.output


@pytest.mark.parametrize("extra", [[], ["--estimate-only", "5"]], ids=["table", "estimate"])
def test_consistency_refused_by_validation_leaves_no_folder(own, extra):
    res = runner.invoke(app, ["consistency", "--eps", "0.3", "--model", "ts.pt", "--dataset", "split.npz",
                              "--classes", "0,1", *extra, "--out", "c"])
    assert res.exit_code == 2 and "Traceback" not in res.output and "error: the model has 3 outputs" in res.output
    assert not os.path.exists("c")


def test_run_refuses_an_output_file_before_training(own):
    open("afile", "w").close()
    res = runner.invoke(app, ["run", "--dataset", "whole.npz", "--arch", "linear", "--out", "afile"])
    assert _clean_error(res, "is a file"), res.output
    assert not os.path.exists("runs")  # nothing was trained


def test_an_error_after_a_progress_bar_prints_on_its_own_line():
    toy = typer.Typer()

    @toy.command()
    @friendly_errors
    def boom() -> None:
        from tqdm import tqdm

        bar = tqdm(total=10, file=sys.stderr)
        bar.update(3)
        raise ValueError("data.npz[x] has the wrong shape")

    @toy.command()
    def other() -> None:
        pass

    res = runner.invoke(toy, ["boom"])
    assert res.exit_code == 2
    assert "error: data.npz[x] has the wrong shape" in res.output.splitlines()  # a line of its own, brackets kept
