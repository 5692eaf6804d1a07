"""Specs and the resumable margin run of the library pipeline."""

import dataclasses

import pytest
import torch

from marginkit.models import ModelSpec, build_model
from marginkit.models.checkpoint import save_checkpoint
from marginkit.pipeline import DataRef, MarginJob, ModelRef, eps_grid, run_margins


def test_specs_validate_and_compare_by_value():
    job = MarginJob(ModelRef("m.pt"), DataRef("digits", classes=(3, 7), limit=5), "inf", "affine",
                    attack_options={"budget": 10, "seed": 1})
    assert job.norm == "linf" and job.estimator == "exact" and job.data.classes == ("3", "7")
    assert job.attack_kwargs() == {"budget": 10, "seed": 1}
    same = MarginJob(ModelRef("m.pt"), DataRef("digits", classes=("3", "7"), limit=5), "linf", "exact",
                     attack_options={"seed": 1, "budget": 10})
    assert job == same and hash(job) == hash(same)
    for bad, match in [(lambda: DataRef(split="val"), "split"), (lambda: DataRef(limit=0), "limit"),
                       (lambda: DataRef(classes=("3",)), "two classes"), (lambda: ModelRef(""), "model reference"),
                       (lambda: MarginJob(ModelRef("m"), norm="l3"), "norm"),
                       (lambda: MarginJob(ModelRef("m"), estimator="pgd"), "estimator")]:
        with pytest.raises(ValueError, match=match):
            bad()
    with pytest.raises(TypeError, match="ModelRef"):
        MarginJob("m.pt")


def test_eps_grid_text():
    assert eps_grid(None) is None and eps_grid(" ") is None
    assert eps_grid("paper") == tuple(k / 255 for k in (2, 4, 8, 12, 16, 32))
    assert eps_grid("1/4,0.5") == (0.25, 0.5)


def test_run_margins_records_provenance_and_resumes(tmp_path):
    spec = ModelSpec("linear", (1, 8, 8), 10)
    ck = save_checkpoint(tmp_path / "lin.pt", build_model(spec, seed=0), spec, {})
    job = MarginJob(ModelRef(ck), DataRef("digits", limit=30), "l2")
    df, settings = run_margins(job, tmp_path / "run", progress=False)
    assert len(df) == 30 and (df["status"] == "exact").all() and (df["method"] == "affine-exact").all()
    assert settings["input_margin"] == "auto" and settings["samples"] == 30 and settings["model_fingerprint"]
    again, _ = run_margins(job, tmp_path / "run", progress=False)
    torch.testing.assert_close(torch.tensor(again["input_margin_upper"].to_numpy()),
                               torch.tensor(df["input_margin_upper"].to_numpy()))
    with pytest.raises(ValueError, match="other settings"):
        run_margins(dataclasses.replace(job, norm="linf"), tmp_path / "run", progress=False)
    fresh, _ = run_margins(dataclasses.replace(job, norm="linf"), tmp_path / "run", overwrite=True, progress=False)
    assert (fresh["norm"] == "linf").all()
