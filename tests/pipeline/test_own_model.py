"""The pipeline specs carry the own-model options (random_init, logits_key, allow_stochastic,
test_fraction); the model is validated on the data before the results folder is touched; consistency
of a model without a head split runs its logit-margin analyses and says what it skipped."""

import os

import numpy as np
import pytest
import torch
from torch import nn

from marginkit.checks import InputError
from marginkit.pipeline import (ConsistencyOptions, DataRef, MarginJob, ModelRef, TrainJob, check_output_folder,
                                consistency_from_job, prepare, run_margins)

MODULE = '''
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return {"logits": self.fc(x.flatten(1)), "x": x}


class Noisy(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(torch.nn.functional.dropout(x.flatten(1), 0.5))


def make():
    return Net()


def noisy():
    return Noisy()
'''


@pytest.fixture
def folder(tmp_path, monkeypatch):
    import sys

    (tmp_path / "w18pipe.py").write_text(MODULE)
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    np.savez("whole.npz", x=rng.random((30, 4)).astype("float32"), y=np.arange(30) % 3)
    yield tmp_path
    sys.modules.pop("w18pipe", None)


def test_specs_check_their_options():
    with pytest.raises(ValueError, match="not both"):
        ModelRef("m:f", "w.pt", random_init=True)
    with pytest.raises(TypeError, match="logits_key"):
        ModelRef("m:f", random_init=True, logits_key=1.5)
    with pytest.raises(ValueError, match="test_fraction"):
        DataRef("npz:x.npz", test_fraction=1.0)
    with pytest.raises(ValueError, match="test_fraction"):
        TrainJob(test_fraction=0.0)
    assert DataRef("npz:x.npz", test_fraction=0.2) == DataRef("npz:x.npz", test_fraction=0.2)


def test_logits_key_and_test_fraction_reach_the_loaders(folder):
    p = prepare(ModelRef("w18pipe:make", random_init=True, logits_key="logits"), DataRef("npz:whole.npz", test_fraction=0.2))
    assert p.inputs.shape[0] == 6 and p.check.num_outputs == 3
    assert p.dataset.split_description.startswith("stratified split")
    assert p.check.feature_margin_reason  # a dict output has no head split to read


def test_a_stochastic_model_is_refused_before_the_folder_is_made_unless_allowed(folder):
    job = MarginJob(ModelRef("w18pipe:noisy", random_init=True), DataRef("npz:whole.npz"), estimator="none")
    with pytest.raises(InputError, match="stochastic"):
        run_margins(job, "out", progress=False)
    assert not os.path.exists("out")
    allowed = MarginJob(ModelRef("w18pipe:noisy", random_init=True, allow_stochastic=True), DataRef("npz:whole.npz"),
                        estimator="none")
    df, settings = run_margins(allowed, "out", progress=False)
    assert len(df) == 30 and settings["allow_stochastic"] is True
    assert settings["split_description"].startswith("no split")


def test_a_class_mismatch_is_refused_before_the_folder_is_made(folder):
    job = MarginJob(ModelRef("w18pipe:make", random_init=True, logits_key="logits"),
                    DataRef("npz:whole.npz", classes=("0", "1")), estimator="none")
    with pytest.raises(ValueError, match="3 outputs"):
        run_margins(job, "out", progress=False)
    assert not os.path.exists("out")


def test_a_checkpoint_by_relative_and_absolute_path_resumes(folder):
    torch.jit.script(nn.Sequential(nn.Flatten(), nn.Linear(4, 3))).save("ts.pt")
    data = DataRef("npz:whole.npz", limit=10)
    run_margins(MarginJob(ModelRef("ts.pt"), data, estimator="none"), "out", progress=False)
    df, _ = run_margins(MarginJob(ModelRef(str(folder / "ts.pt")), data, estimator="none"), "out", progress=False)
    assert len(df) == 10


def test_output_folder_checked_without_creating_anything(folder):
    open("afile", "w").close()
    with pytest.raises(OSError, match="is a file"):
        check_output_folder("afile")
    with pytest.raises(OSError, match="parent"):
        check_output_folder("afile/sub")
    check_output_folder("new/sub")
    assert not os.path.exists("new")


def test_consistency_without_a_head_split_skips_and_says_why(folder):
    job = MarginJob(ModelRef("w18pipe:make", random_init=True, logits_key="logits"), DataRef("npz:whole.npz"),
                    estimator="attack", attack_options={"budget": 20})
    run = consistency_from_job(job, "c", 0.2, options=ConsistencyOptions(subset_sizes=(5,), repeats=2, bootstrap=0,
                                                                         pseudo_train=5, isometry=3), progress=False)
    assert set(run.skipped) == {"feature margin", "pseudo-margin", "isometry", "head equidistance"}
    assert run.pseudo_margin is None and run.isometry is None
    assert run.report.extras["skipped"] == run.skipped and "equidistance" not in run.report.extras
    assert run.report.table1_row("logit_margin")["kendall_tau"] is not None
