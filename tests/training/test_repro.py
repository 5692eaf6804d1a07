"""Reproduction helpers: Theorem 3 sample curves, fixed-set margins, the margin ablation data, multiclass Fisher check."""

import numpy as np
import pytest
import torch
from scipy.optimize import minimize
from scipy.special import logsumexp
from torch import nn

from marginkit.margins import affine_input_margin
from marginkit.training.ablation import SeparableConfig, separable_data
from marginkit.training.dynamics import hard_margin_svm, lipschitz_margin
from marginkit.training.fisher import head_level_check, head_level_risk, score_level_check, score_level_minimum
from marginkit.training.fixedset import FixedSetTracker, fixed_set_summary, signed_margins
from marginkit.training.regularizers import feature_margin_term, orthogonality_penalty, truncate_margin
from marginkit.training.theory import doubling_counts, theorem3_convergence


def test_streamed_lipschitz_is_exact_on_affine_models_at_every_checkpoint():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 3)).eval()
    x = torch.rand(5, 6, generator=torch.Generator().manual_seed(1))
    exact = affine_input_margin(model, x, None, "l2", bounds=None).margin.clamp(max=0.7)
    # batch_size 16 < samples + 1: each point's 40 samples are streamed in blocks.
    res = lipschitz_margin(model, x, None, "l2", radius=0.7, samples=40, batch_size=16, checkpoints=[0, 3, 25])
    for k in (0, 3, 25):
        assert torch.allclose(res.curve[k], exact, atol=1e-5)
    assert torch.allclose(res.bound, exact, atol=1e-5)
    with pytest.raises(ValueError, match="checkpoints"):
        lipschitz_margin(model, x, None, "l2", samples=4, checkpoints=[5])


def test_theorem3_curve_only_falls_and_matches_the_running_maximum():
    # |x1| + |x2| - 1 as the gap of a 2-class ReLU net: the gradient norm is sqrt(2) off the axes, 1 on
    # one side of an axis region; the sampled maximum (hence the bound) can only fall with more samples.
    lin1 = nn.Linear(2, 4, bias=False)
    lin1.weight.data = torch.tensor([[1.0, 0], [-1, 0], [0, 1], [0, -1]])
    lin2 = nn.Linear(4, 2)
    lin2.weight.data = torch.tensor([[0.0, 0, 0, 0], [1, 1, 1, 1]])
    lin2.bias.data = torch.tensor([0.0, -1.0])
    model = nn.Sequential(lin1, nn.ReLU(), lin2).eval()
    x = torch.tensor([[0.05, 0.0], [0.0, -0.1]])  # class 0 (inside the l1 ball): gap 1 - |x|_1
    conv = theorem3_convergence(model, x, torch.zeros(2, dtype=torch.long), radius=1.0, samples=256, seed=0)
    assert conv.counts == doubling_counts(256)
    assert np.all(np.diff(conv.bounds, axis=0) <= 1e-12)
    # At x only one coordinate is active (gradient norm 1); samples reach the sqrt(2) region.
    gap = 1 - x.abs().sum(1).numpy()
    assert np.allclose(conv.bounds[0], gap / 1.0)
    assert np.allclose(conv.bounds[-1], gap / np.sqrt(2))
    assert conv.summary()[0]["mean_ratio_to_final"] == pytest.approx(np.sqrt(2))


def test_fixed_set_summary_separates_a_changing_set_from_a_fixed_one():
    # Three records of four points: point 0 has the smallest margin and becomes misclassified, so the
    # minimum over the correct points rises although no point's margin grew.
    hist = [(1, np.array([0.1, 0.5, 1.0, -0.2]), np.array([1, 1, 1, 0], bool)),
            (2, np.array([0.05, 0.5, 0.9, -0.1]), np.array([1, 1, 1, 0], bool)),
            (3, np.array([-0.01, 0.5, 0.8, 0.3]), np.array([0, 1, 1, 1], bool))]
    now = fixed_set_summary(hist, "correct-now")
    assert now.min_margin == [0.1, 0.05, 0.3]
    fixed = fixed_set_summary(hist, "final-correct")
    assert fixed.size == [3, 3, 3] and fixed.min_margin == [-0.2, -0.1, 0.3]
    always = fixed_set_summary(hist, "always-correct")
    assert always.size == [2, 2, 2] and always.min_margin == [0.5, 0.5, 0.5]
    assert always.avg_margin == pytest.approx([0.75, 0.7, 0.65])
    allp = fixed_set_summary(hist, "all")
    assert allp.avg_abs_margin[0] == pytest.approx(np.mean([0.1, 0.5, 1.0, 0.2]))
    with pytest.raises(ValueError, match="subset"):
        fixed_set_summary(hist, "bogus")


def test_signed_margins_and_tracker_on_an_affine_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3)).eval()
    x = torch.randn(20, 4)
    y = torch.randint(0, 3, (20,))
    m, c = signed_margins(model, x, y)
    exact = affine_input_margin(model, x, None, "l2", bounds=None).margin
    assert torch.allclose(m.abs(), exact.double(), atol=1e-6)
    assert ((m > 0) == c).all() or (m[c] >= 0).all()

    class T:
        pass

    t = T()
    t.model = model
    tr = FixedSetTracker({"a": (x, y)}, every=2)
    tr.on_train_begin(t)
    tr.on_epoch_end(t, 1, {})
    tr.on_epoch_end(t, 2, {})
    assert [e for e, _, _ in tr.history["a"]] == [0, 2]
    assert tr.summary("a", "all").size == [20, 20]


@pytest.mark.parametrize("avg", [2.5])
def test_separable_data_has_the_requested_margins_and_the_svm_is_the_set_direction(avg):
    cfg = SeparableConfig(n=60, dim=6, min_margin=0.2, avg_margin=avg, anchors=4, seed=1)
    d = separable_data(cfg)
    s = 2.0 * d.y.double() - 1.0
    signed = s * (d.x @ d.direction)
    assert signed.min() == pytest.approx(0.2) and signed.mean() == pytest.approx(avg)
    assert torch.allclose(signed, d.distances)
    w, _ = hard_margin_svm(d.x.numpy(), s.numpy())
    w = torch.as_tensor(w)
    assert float(w @ d.direction / w.norm()) == pytest.approx(1.0, abs=1e-6)
    # Pairing: another average margin, same seed -> same labels and orthogonal offsets.
    d2 = separable_data(SeparableConfig(n=60, dim=6, min_margin=0.2, avg_margin=avg + 1, anchors=4, seed=1))
    proj = lambda z, u: z - (z @ u)[:, None] * u  # noqa: E731
    assert torch.equal(d.y, d2.y) and torch.allclose(proj(d.x, d.direction), proj(d2.x, d2.direction))
    with pytest.raises(ValueError):
        SeparableConfig(min_margin=1.0, avg_margin=0.5)


def _brute_force(eta, lam, tau, seed=0):
    rng = np.random.default_rng(seed)

    def risk(s):
        j = int(np.argmax(s))
        gap = s[j] - np.max(np.delete(s, j))
        return logsumexp(s) - eta @ s - lam * eta[j] * min(max(gap, 0.0), tau)

    best = np.inf
    for _ in range(6):  # starts around log eta with every class raised in turn, plus noise
        s0 = np.log(eta) + rng.normal(size=len(eta))
        r = minimize(risk, s0, method="Nelder-Mead", options={"xatol": 1e-9, "fatol": 1e-12, "maxiter": 3000})
        best = min(best, r.fun)
    return best


@pytest.mark.parametrize("eta,lam,tau", [([0.5, 0.3, 0.2], 0.5, 1.0), ([0.2, 0.1, 0.7], 3.0, 0.5)])
def test_score_level_minimum_matches_brute_force(eta, lam, tau):
    eta = np.array(eta)
    risk, gap = score_level_minimum(eta[None], lam, tau)
    assert risk.min() == pytest.approx(_brute_force(eta, lam, tau), abs=1e-5)
    assert risk.argmin() == eta.argmax()
    assert 0 <= gap.min() and gap.max() <= tau


def test_score_level_check_known_answers():
    eta = np.array([[0.6, 0.3, 0.1], [0.2, 0.45, 0.35]])
    # lam = 0: plain cross-entropy, minimiser s = log eta, risk = entropy.
    chk = score_level_check([0.5, 0.5], eta, 0.0, 1.0)
    ent = -(eta * np.log(eta)).sum(1).mean()
    assert chk.consistent and chk.risk == pytest.approx(ent, abs=1e-8)
    assert score_level_check([0.5, 0.5], eta, 10.0, 5.0).predicted == [0, 1]
    with pytest.raises(ValueError, match="probability"):
        score_level_check([0.5, 0.5], eta * 2, 0.1, 1.0)


def test_head_level_risk_uses_the_regularizer_terms():
    torch.manual_seed(0)
    head = nn.Linear(3, 3).double()
    phi = torch.randn(4, 3, dtype=torch.float64)
    eta = torch.softmax(torch.randn(4, 3, dtype=torch.float64), 1)
    p = torch.full((4,), 0.25, dtype=torch.float64)
    got = head_level_risk(head.weight[None], head.bias[None], phi[None], p, eta, 0.7, 2.0, 0.1)[0]
    logits = head(phi)
    pred = logits.argmax(1)
    ce = -(eta * torch.log_softmax(logits, 1)).sum(1)
    reward = eta.gather(1, pred[:, None]).squeeze(1) * truncate_margin(feature_margin_term(phi, head.weight, pred), 2.0)
    want = (p * (ce - 0.7 * reward)).sum() + 0.1 * orthogonality_penalty([head])
    assert float(got.detach()) == pytest.approx(float(want.detach()), rel=1e-10)


def test_head_level_check_runs_and_keeps_bayes_on_a_clear_case():
    eta = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]])
    chk = head_level_check(np.full(3, 1 / 3), eta, 0.1, 1.0, 1.0, restarts=1, steps=60)
    assert chk.consistent and chk.predicted == [0, 1, 2]


def test_offset_minimum_reduces_to_the_score_level_without_bias():
    from marginkit.training.fisher import offset_score_minimum

    eta = np.array([[0.5, 0.3, 0.2], [0.3, 0.36, 0.34]])
    r0, _ = score_level_minimum(eta, 0.5, 1.0)
    r1 = offset_score_minimum(eta, 0.5, 1.0, np.zeros((1, 3)))[0]
    assert np.allclose(r0, r1, atol=1e-9)
    # A bias only shifts which gaps the margin term sees: at lam = 0 it changes nothing.
    r2 = offset_score_minimum(eta, 0.0, 1.0, np.array([[0.0, 1.0, -2.0]]))[0]
    r3, _ = score_level_minimum(eta, 0.0, 1.0)
    assert np.allclose(r2, r3, atol=1e-9)
