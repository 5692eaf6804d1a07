"""A margin job spread over shards gives the table of the single-process run."""

import numpy as np
import pytest

from marginkit.models import ModelSpec, build_model
from marginkit.models.checkpoint import save_checkpoint
from marginkit.parallel import ExecutorConfig
from marginkit.pipeline import DataRef, MarginJob, ModelRef, run_margins

COLS = ["index", "label", "prediction", "logit_margin", "input_margin_upper", "status"]


def _job(tmp_path) -> MarginJob:
    spec = ModelSpec("mlp", (1, 8, 8), 10, hidden=16, depth=1)
    path = save_checkpoint(tmp_path / "mlp.pt", build_model(spec, seed=0), spec, {})
    return MarginJob(ModelRef(str(path)), DataRef("digits", limit=24), "l2", "attack", attack_options={"budget": 120})


def _same(a, b) -> None:
    assert a["index"].tolist() == b["index"].tolist() == list(range(24))
    for c in ("label", "prediction", "status"):
        assert a[c].tolist() == b[c].tolist()
    np.testing.assert_allclose(a["logit_margin"], b["logit_margin"], rtol=1e-5, atol=1e-6)  # float32 rounding of other batch sizes
    np.testing.assert_allclose(a["input_margin_upper"], b["input_margin_upper"], rtol=1e-5)


def test_sharded_in_process_equals_single_process_and_resumes(tmp_path):
    job = _job(tmp_path)
    single, _ = run_margins(job, tmp_path / "single", progress=False)
    sharded, _ = run_margins(job, tmp_path / "sharded", progress=False,
                             executor=ExecutorConfig(executor="local"))
    _same(single, sharded)
    again, _ = run_margins(job, tmp_path / "sharded", progress=False, executor=ExecutorConfig(executor="local"))
    _same(single, again)


@pytest.mark.slow  # Ray start-up (about 10 s); tests/parallel keeps a Ray run in the default suite
def test_two_local_ray_workers_equal_single_process(tmp_path):
    pytest.importorskip("ray")
    job = _job(tmp_path)
    single, _ = run_margins(job, tmp_path / "single", progress=False)
    sharded, _ = run_margins(job, tmp_path / "ray", progress=False, executor=ExecutorConfig(workers=2))
    _same(single, sharded)


def test_sharded_run_records_the_resolved_estimator(tmp_path):
    import json
    from dataclasses import replace

    job = replace(_job(tmp_path), estimator="auto")
    run_margins(job, tmp_path / "single", progress=False)
    run_margins(job, tmp_path / "sharded", progress=False, executor=ExecutorConfig(executor="local"))
    modes = [json.loads((tmp_path / d / "results.json").read_text())["input_margin_mode"] for d in ("single", "sharded")]
    assert modes == ["attack", "attack"]
