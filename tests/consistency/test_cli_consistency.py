import json
import os

from typer.testing import CliRunner

from marginkit.cli import app

runner = CliRunner()


def _run(args):
    return runner.invoke(app, args)


def test_consistency_cli_from_model_then_from_table(tmp_path):
    ckpt = str(tmp_path / "lin.pt")
    res = _run(["train", "--dataset", "digits", "--arch", "linear", "--epochs", "3", "--lr", "0.01", "--out", ckpt])
    assert res.exit_code == 0, res.output
    out = str(tmp_path / "cons")
    args = ["consistency", "--model", ckpt, "--dataset", "digits", "--norm", "linf", "--eps", "8/255", "--limit", "100",
            "--subset-sizes", "30,80", "--repeats", "3", "--bootstrap", "50", "--pseudo-train", "60",
            "--pseudo-epochs", "3", "--isometry", "20", "--out", out]
    res = _run(args)
    assert res.exit_code == 0, res.output
    assert "tau" in res.output and "AUROC" in res.output
    for f in ("metrics.json", "report.md", "binned.png", "auroc_vs_eps.png", "algorithm1.png", "pseudo_margin.pt",
              "table/results.parquet", "train_table/results.parquet"):
        assert os.path.exists(os.path.join(out, f)), f
    m = json.load(open(os.path.join(out, "metrics.json")))
    assert m["n"] == 100 and m["eps"] == 8 / 255 and m["norm"] == "linf"
    assert set(m["scores"]) == {"logit_margin", "feature_margin", "pseudo-margin"}
    algo = m["scores"]["logit_margin"]["algorithm1"]
    assert [(a["quantity"], a["n_subset"]) for a in algo] == [("robust_accuracy", 30), ("robust_accuracy", 80), ("vulnerable_fraction", 30), ("vulnerable_fraction", 80)]
    assert m["extras"]["equidistance"]["pairs"] == 45
    # a linear model's feature extractor is the identity (flatten): an exact isometry
    assert abs(m["extras"]["isometry"]["kappa_median"] - 1.0) < 1e-6 and os.path.exists(os.path.join(out, "isometry.png"))
    assert m["settings"]["source"]["table_settings"]["input_margin"] == "auto"
    # the same table read back gives the same numbers
    out2 = str(tmp_path / "cons2")
    res = _run(["consistency", "--table", os.path.join(out, "table"), "--eps", "8/255", "--subset-sizes", "30,80",
                "--repeats", "3", "--bootstrap", "50", "--out", out2])
    assert res.exit_code == 0, res.output
    m2 = json.load(open(os.path.join(out2, "metrics.json")))
    for key in ("logit_margin", "feature_margin"):
        assert m2["scores"][key]["detection"] == m["scores"][key]["detection"]
        assert m2["scores"][key]["consistency"]["kendall"]["value"] == m["scores"][key]["consistency"]["kendall"]["value"]
    # a degenerate eps (every sample non-robust) is reported, not crashed on
    out3 = str(tmp_path / "cons3")
    res = _run(["consistency", "--table", os.path.join(out, "table"), "--eps", "10", "--eps-grid", "paper", "--subset-sizes", "30",
                "--repeats", "2", "--bootstrap", "0", "--out", out3])
    assert res.exit_code == 0, res.output
    assert "AUROC n/a" in res.output
    assert "all 100 samples are positive" in open(os.path.join(out3, "report.md")).read()
    res = _run(["consistency", "--table", os.path.join(out, "table"), "--norm", "l2", "--eps", "0.1", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "does not match the table" in res.output  # the table holds linf margins
    # Algorithm 1 as deployed: attacks on 20 samples only, no table
    out4 = str(tmp_path / "est")
    res = _run(["consistency", "--model", ckpt, "--dataset", "digits", "--norm", "linf", "--eps", "8/255", "--limit", "100",
                "--estimate-only", "20", "--out", out4])
    assert res.exit_code == 0, res.output
    est = json.load(open(os.path.join(out4, "estimate.json")))
    assert est["estimates"]["robust_accuracy"]["n_subset"] == 20 and est["samples"] == 100
    assert len(est["estimates"]["robust_accuracy"]["subset_indices"]) == 20
    assert not os.path.exists(os.path.join(out4, "table"))
    m3 = json.load(open(os.path.join(out3, "metrics.json")))
    assert m3["eps_grid"] == [k / 255 for k in (2, 4, 8, 12, 16, 32)]


def test_consistency_cli_bad_input(tmp_path):
    res = _run(["consistency", "--eps", "0.1", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "exactly one of --model" in res.output
    res = _run(["consistency", "--table", str(tmp_path / "missing"), "--eps", "0.1", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "no results table" in res.output
    res = _run(["consistency", "--table", str(tmp_path), "--eps", "1/0", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "8/255" in res.output and "Traceback" not in res.output


def test_consistency_cli_with_certified_lower_bounds_reports_the_bracket(tmp_path):
    ckpt = str(tmp_path / "mlp.pt")
    res = _run(["train", "--dataset", "digits", "--arch", "mlp", "--hidden", "16", "--depth", "1", "--epochs", "2",
                "--out", ckpt])
    assert res.exit_code == 0, res.output
    out = str(tmp_path / "cons")
    res = _run(["consistency", "--model", ckpt, "--dataset", "digits", "--norm", "linf", "--eps", "0.05", "--limit", "30",
                "--input-margin", "certify", "--verify-param", "method=crown", "--subset-sizes", "10", "--repeats", "2",
                "--bootstrap", "0", "--out", out])
    assert res.exit_code == 0, res.output
    m = json.load(open(os.path.join(out, "metrics.json")))
    b = m["extras"]["bracket"]
    assert b["n"] == 30 and all(c <= a for c, a in zip(b["robustness"]["certified"], b["robustness"]["attack"]))
    assert "## Certified bracket" in open(os.path.join(out, "report.md")).read()
