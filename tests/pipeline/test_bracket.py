"""The certified bracket of a table subset and the robustness read from both of its ends."""

import numpy as np
import pytest
import torch
from torch import nn

from marginkit.margins import bracket_robustness, robust_accuracy
from marginkit.pipeline import certify_subset, margin_table
from marginkit.report.quickstart import write_quickstart_report


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 3)).eval()


def test_bracket_robustness_brackets_the_attack_value_and_counts_decided_samples():
    lower = np.array([0.1, np.nan, 0.5, 0.3])
    upper = np.array([0.2, 0.3, np.inf, 0.3])
    correct = np.array([True, True, False, True])
    br = bracket_robustness(lower, upper, [0.15, 0.25], correct)
    assert br.attack == (robust_accuracy(upper, 0.15, correct), robust_accuracy(upper, 0.25, correct))
    assert br.certified == (0.25, 0.25)  # only sample 3 (lower 0.3) is certified, at both radii
    # eps 0.15: #2 misclassified and #3 certified are decided; #0 and #1 lie inside their brackets
    assert br.decided == (0.5, 0.75)
    assert all(c <= a for c, a in zip(br.certified, br.attack))
    with pytest.raises(ValueError, match="lower bound above the upper"):
        bracket_robustness([0.5], [0.4], [0.1])


def test_certify_subset_brackets_the_first_rows_and_the_report_shows_it(tmp_path):
    model = _net()
    x = torch.rand(12, 6, generator=torch.Generator().manual_seed(1))
    y = model(x).argmax(1)
    df = margin_table(model, x, y, "linf", input_margin="attack", attack_options={"budget": 200})
    br = certify_subset(model, x, df, 5, method="crown")
    assert br.skipped is None and br.table["index"].tolist() == [0, 1, 2, 3, 4]
    lo, up = br.table["input_margin_lower"].to_numpy(), br.table["input_margin_upper"].to_numpy()
    assert (lo <= up).all() and (lo > 0).all()
    np.testing.assert_allclose(up, df.sort_values("index")["input_margin_upper"].to_numpy()[:5])
    assert set(br.table["status"]) <= {"bracketed", "exact"}
    paths = write_quickstart_report(df, str(tmp_path), "t", {}, eps=float(np.median(up)), bracket=br)
    text = open(paths["markdown"]).read()
    assert "certified robust accuracy (lower bounds)" in text and (tmp_path / "bracket.csv").exists()


def test_certify_subset_skips_convolutional_networks_unless_asked():
    conv = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3)).eval()
    x = torch.rand(4, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    df = margin_table(conv, x, conv(x).argmax(1), "l2", input_margin="attack", attack_options={"budget": 100})
    br = certify_subset(conv, x, df, 2)
    assert br.table.empty and "convolutional" in br.skipped
