"""Input-margin engine on tiny models: the contract every stage keeps (verified flips in the box, failure
semantics, batch independence, budgets), the schedule property (adding a step never raises an upper
bound), presets, the old keywords, the affine shortcut, warnings and errors."""

import copy
import functools
import math
import warnings

import pytest
import torch
from torch import nn

from marginkit.attacks import AffineExact, Alma, Ball, Projection, Refine, Rounds, RuntimeOptions, Step, input_margin
from marginkit.checks import MarginkitWarning
from marginkit.margins import affine_input_margin
from marginkit.norms import batch_norm

NORMS = ["l2", "linf", "l1"]


def _linear(seed=0, d=12, c=4):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(d, c)).eval()


@functools.lru_cache(maxsize=None)
def _trained_mlp(seed=0, d=12, c=4, h=16):
    """A tiny ReLU network fitted to c clusters in [0, 1]^d, so that every class occurs in the box."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(c, d, generator=g)
    y = torch.arange(c).repeat(64)
    x = (centres[y] + 0.15 * torch.randn(len(y), d, generator=g)).clamp(0, 1)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(d, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, c))
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[:, None]), y).backward()
        opt.step()
    return model.eval()


def _mlp(seed=0):
    return copy.deepcopy(_trained_mlp(seed))


def _inputs(n=24, d=12, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, d, generator=g)


def test_unflippable_model_gives_inf_and_failed():
    # class 0 scores 10, class 1 scores the first pixel (<= 1 in the box): no point of the box flips it
    lin = nn.Linear(3, 2)
    with torch.no_grad():
        lin.weight.zero_()
        lin.weight[1, 0] = 1.0
        lin.bias.copy_(torch.tensor([10.0, 0.0]))
    model = nn.Sequential(nn.Flatten(), lin).eval()
    x = _inputs(5, 3)
    res = input_margin(model, x, norm="l2", preset="fast", return_adv=True)
    assert torch.isinf(res.upper).all()
    assert res.status == ["exact"] * 5  # the affine shortcut proves that nothing in the box flips them
    assert (res.target == -1).all()
    assert torch.isnan(res.adversarial).all()  # never the clean input
    assert math.isinf(float(affine_input_margin(model, x, norm="l2").margin.min()))


def test_time_budget_returns_partial_results():
    model, x = _mlp(), _inputs(8)
    res = input_margin(model, x, norm="l2", preset="fast", max_seconds=0.0)
    assert res.stopped == "max_seconds"
    assert all(s in ("upper-only", "failed") for s in res.status)
    assert all(math.isinf(u) for u, s in zip(res.upper.tolist(), res.status) if s == "failed")


def test_true_labels_and_misclassified_samples():
    model, x = _mlp(), _inputs(10)
    labels = _labels_wrong_on_first(model, x, 3)
    res = input_margin(model, x, labels, norm="l2", preset="fast")
    assert res.status[:3] == ["misclassified"] * 3
    assert (res.upper[:3] == 0).all()
    assert all(s == "upper-only" for s in res.status[3:])
    assert torch.equal(res.labels, labels)


def test_targeted_margin_reaches_the_target():
    model, x = _linear(), _inputs(10)
    with torch.no_grad():
        pred = model(x).argmax(1)
    target = (pred + 2) % 4
    res = input_margin(model, x, norm="l2", preset="fast", target=target, return_adv=True)
    untargeted = affine_input_margin(model, x, norm="l2").margin  # exact: a lower bound for any target
    found = torch.tensor([s == "upper-only" for s in res.status])
    assert found.any()
    with torch.no_grad():
        assert (model(res.adversarial[found]).argmax(1) == target[found]).all()
    assert (res.upper[found] >= untargeted[found] * (1 - 1e-9)).all()
    assert res.lower is None and "affine-exact" not in res.stage  # the shortcut is untargeted only


def test_warnings_for_train_mode_softmax_and_out_of_box():
    model, x = _mlp(), _inputs(4)
    with pytest.warns(MarginkitWarning, match="train mode"):
        input_margin(model.train(), x, norm="l2", preset="fast")
    model.eval()
    with pytest.warns(MarginkitWarning, match="probabilities"):
        input_margin(nn.Sequential(model, nn.Softmax(dim=1)).eval(), x, norm="l2", preset="fast")
    with pytest.warns(MarginkitWarning, match="outside the bounds"):
        input_margin(model, x * 3 - 1, norm="l2", preset="fast")


def test_zero_gradients_warn_and_fail():
    class Flat(nn.Module):
        def forward(self, x):
            return torch.tensor([2.0, 0.0]).expand(x.shape[0], 2) + 0 * x.reshape(x.shape[0], -1)[:, :2]  # logits, not probabilities

    with pytest.warns(MarginkitWarning, match="zero input gradient"):
        res = input_margin(Flat().eval(), _inputs(3), norm="l2", schedule=(Step(Projection(steps=5)), Step(Ball(steps=5))))
    assert res.status == ["failed"] * 3
    # the model is (trivially) affine: the exact shortcut proves that nothing flips it
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MarginkitWarning)
        res = input_margin(Flat().eval(), _inputs(3), norm="l2", preset="fast")
    assert res.status == ["exact"] * 3 and res.stage == ["affine-exact"] * 3  # proven: nothing flips it
    assert torch.isinf(res.lower).all() and torch.isinf(res.upper).all()


def test_errors_for_bad_inputs():
    model, x = _mlp(), _inputs(4)
    with pytest.raises(ValueError, match="outputs"):
        input_margin(model, x, torch.tensor([0, 1, 2, 9]), norm="l2")
    with pytest.raises(ValueError, match="shape"):
        input_margin(model, x, torch.tensor([0, 1]), norm="l2")
    with pytest.raises(ValueError, match="could not process"):
        input_margin(model, torch.rand(4, 1, 5), norm="l2")
    with pytest.raises(ValueError, match="non-finite"):
        input_margin(nn.Sequential(model, _Inf()).eval(), x, norm="l2")
    with pytest.raises(ValueError, match="unknown norm"):
        input_margin(model, x, norm="l3")
    with pytest.raises(ValueError, match="NaN"):
        input_margin(model, x * float("nan"), norm="l2")


class _Inf(nn.Module):
    def forward(self, z):
        return z * float("inf")


def test_result_columns_fit_results_schema():
    from marginkit.results import COLUMNS

    res = input_margin(_linear(), _inputs(5), norm="linf", preset="fast")
    cols = res.columns()
    for name in ("input_margin_upper", "norm", "method", "status", "seconds", "adversarial_class", "passes"):
        assert name in cols and len(cols[name]) == 5
        assert name in COLUMNS


def test_alma_penalty_derivative_and_normalised_gap():
    from marginkit.attacks.alm import _p2, normalised_gap

    # P2 of Rony et al. 2021: mu y + mu rho y^2 + rho^2 y^3 / 6 for y >= 0, mu y / (1 - rho y) below
    def p2(y, mu, rho):
        return torch.where(y >= 0, mu * y + mu * rho * y**2 + rho**2 * y**3 / 6, mu * y / (1 - rho * y.clamp(max=0)))

    y = torch.tensor([-3.0, -0.5, -1e-3, 1e-3, 0.4, 2.0], dtype=torch.float64, requires_grad=True)
    mu, rho = torch.full_like(y, 0.7), torch.full_like(y, 2.5)
    (auto,) = torch.autograd.grad(p2(y, mu, rho).sum(), y)
    assert torch.allclose(_p2(y.detach(), mu, rho), auto)
    z = torch.tensor([[3.0, 1.0, 0.0, -1.0], [1.0, 2.0, 0.0, -1.0]])
    g = normalised_gap(z, torch.tensor([0, 0]), tol=0.0)
    assert torch.allclose(g, torch.tensor([-2.0 / 3.0, 1.0 / 2.0]))  # (max_other - z_ref) / (z_(1) - z_(3))


def test_offer_fast_path_for_one_row_per_sample_matches_the_general_path():
    from marginkit.attacks._oracle import Best

    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(8, 5, generator=g)
    ref = torch.zeros(8, dtype=torch.long)
    general, fast = Best(x0, ref, "l2"), Best(x0, ref, "l2")
    for step in range(4):
        owner = torch.randperm(8, generator=g)[:5]  # distinct samples, in any order
        x = (x0[owner] + 0.3 * torch.rand(5, 5, generator=g)).clamp(0, 1)
        logits = torch.randn(5, 3, generator=g)
        assert torch.equal(general.offer(owner, x, logits, step), fast.offer(owner, x, logits, step, unique=True))
    assert general.found.any()
    for a, b in [(general.value, fast.value), (general.x, fast.x), (general.cls, fast.cls), (general.code, fast.code)]:
        assert torch.equal(a, b)


@pytest.mark.parametrize("norm", NORMS)
def test_affine_shortcut_is_exact_verified_and_counts_its_passes(norm):
    model, x = _linear(seed=1), _inputs(30, seed=2)
    res = input_margin(model, x, norm=norm, preset="fast", return_adv=True)
    exact = affine_input_margin(model, x, norm=norm)
    finite = torch.isfinite(exact.margin)
    assert finite.sum() >= 25 and res.settings["affine_shortcut"]
    assert res.stage == ["affine-exact"] * 30
    assert all(st == ("bracketed" if f else "exact") for st, f in zip(res.status, finite.tolist()))
    assert torch.equal(res.lower, exact.margin)
    ratio = res.upper[finite] / exact.margin[finite]
    assert (ratio >= 1).all() and (ratio <= 1.001).all(), (ratio.min(), ratio.max())
    assert torch.equal(res.target[finite], exact.target[finite])
    adv = res.adversarial[finite]
    assert (adv >= 0).all() and (adv <= 1).all()
    with torch.no_grad():
        assert (model(adv).argmax(1) != model(x[finite]).argmax(1)).all()
    assert torch.allclose(batch_norm((adv - x[finite]).double(), norm), res.upper[finite], rtol=1e-5)
    # 1 clean forward + at least one verification rung per sample, no backward; recovering (A, c) (12 + 12
    # rows) is a per-call cost, not charged to the samples (their budgets do not depend on the batch)
    assert (res.backwards == 0).all() and (res.forwards >= 2).all() and (res.forwards <= 6).all()
    assert res.overhead_passes == 24
    assert res.columns()["input_margin_lower"].shape == (30,)


def test_affine_shortcut_with_labels_and_opt_out():
    model, x = _linear(), _inputs(10)
    labels = _labels_wrong_on_first(model, x, 2)
    res = input_margin(model, x, labels, norm="linf", preset="fast")
    assert res.status[:2] == ["misclassified"] * 2 and (res.lower[:2] == 0).all() and (res.upper[:2] == 0).all()
    assert res.stage[2:] == ["affine-exact"] * 8
    off = input_margin(model, x, norm="linf", preset="fast", exact_affine=False)  # an old keyword, mapped
    assert off.lower is None and "affine-exact" not in off.stage and not off.settings["affine_shortcut"]
    assert all(s["stage"] != "affine-exact" for s in off.settings["schedule"])
    small = input_margin(model, x[:1], norm="linf", preset="fast", budget=10)
    assert small.settings["affine_shortcut"] and (small.passes <= 10).all()


def test_non_affine_model_has_no_lower_bound():
    res = input_margin(_mlp(), _inputs(4), norm="l2", preset="fast")
    assert res.lower is None and not res.settings["affine_shortcut"]
    assert "input_margin_lower" not in res.columns()


def test_time_limit_leaves_unattacked_samples_failed_with_nan_points():
    model, x = _mlp(), _inputs(6)
    res = input_margin(model, x, norm="l2", preset="fast", max_seconds=0.0, runtime=RuntimeOptions(batch_size=2), return_adv=True)
    assert res.stopped == "max_seconds"
    failed = torch.tensor([s == "failed" for s in res.status])
    assert failed[2:].all() and (res.passes[2:] == 0).all()
    assert torch.isnan(res.adversarial[failed]).all()


class _ViewCNN(nn.Module):
    """A small conv net whose flatten is a ``view``: it needs contiguous activations (no channels-last copy)."""

    def __init__(self, view: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.head = nn.Linear(4 * 6 * 6, 3)
        self.view = view

    def forward(self, x):
        h = torch.relu(self.conv(x))
        return self.head(h.view(h.shape[0], -1) if self.view else h.flatten(1))


@pytest.mark.parametrize("norm", NORMS)
def test_channels_last_search_copy_verifies_every_point_and_changes_nothing_else(norm):
    model = _ViewCNN(view=False).eval()
    x = torch.rand(12, 1, 6, 6, generator=torch.Generator().manual_seed(4))
    fast = input_margin(model, x, norm=norm, preset="fast", return_adv=True)
    plain = input_margin(model, x, norm=norm, preset="fast", runtime=RuntimeOptions(channels_last=False), return_adv=True)
    assert fast.settings["runtime"]["channels_last"] and not plain.settings["runtime"]["channels_last"]  # auto: on for conv nets on CPU
    assert all(s == "upper-only" for s in fast.status)
    with torch.no_grad():  # every reported point flips the model itself, not only its channels-last copy
        assert (model(fast.adversarial).argmax(1) != fast.labels).all()
    # the same search up to float rounding (which can send a walk elsewhere on a sample, not on average)
    assert torch.isclose(fast.upper.median(), plain.upper.median(), rtol=1e-3)
    assert model.conv.weight.is_contiguous()  # the user's model is left as it was


def test_channels_last_falls_back_for_models_it_does_not_suit():
    x = torch.rand(6, 1, 6, 6, generator=torch.Generator().manual_seed(5))
    viewing = _ViewCNN(view=True).eval()  # .view on channels-last activations raises: the model runs as it is
    assert not input_margin(viewing, x, norm="l2", preset="fast").settings["runtime"]["channels_last"]
    assert not input_margin(_mlp(), _inputs(4), norm="l2", preset="fast").settings["runtime"]["channels_last"]  # no convolutions
    with pytest.warns(MarginkitWarning, match="channels_last=True"):
        input_margin(viewing, x, norm="l2", preset="fast", runtime=RuntimeOptions(channels_last=True))



def _labels_wrong_on_first(model, x, k):
    """The model's predictions as labels, except the first ``k``, which it gets wrong."""
    with torch.no_grad():
        logits = model(x)
    labels = logits.argmax(1)
    labels[:k] = (labels[:k] + 1) % logits.shape[1]
    return labels


def test_margin_table_uses_engine_with_budget_and_new_columns():
    from marginkit.pipeline import margin_table

    model, x = _mlp(), _inputs(6)
    with torch.no_grad():
        y = model(x).argmax(1)
    df = margin_table(model, x, y, "linf", input_margin="attack", attack_options={"budget": 200})
    assert (df["passes"] <= 200).all() and (df["passes"] > 0).all()
    assert set(df["status"]) <= {"upper-only", "failed"}
    found = df["status"] == "upper-only"
    assert (df.loc[found, "adversarial_class"] != df.loc[found, "prediction"]).all()
    assert df["method"].str.startswith("marginkit-default").all()


def test_fab_pruning_stops_far_rows_without_losing_the_best_point():
    from marginkit.attacks._oracle import Best, Oracle
    from marginkit.attacks.fab import fab_rows, first_step_targets
    from marginkit.norms import Norm

    model, x = _mlp(seed=2), _inputs(16, seed=3)
    flat = x.reshape(16, -1)
    with torch.no_grad():
        ref = model(x).argmax(1)
    lo, hi = torch.zeros_like(flat), torch.ones_like(flat)
    out = {}
    for prune in (None, 1.1):
        oracle = Oracle(model, (1, 12), 16, torch.device("cpu"), budget=None, deadline=None, max_rows=64)
        best = Best(flat, ref, "l2")
        owner, aim, start = first_step_targets(oracle, best, lo, hi, Norm.L2, 4, topk=3)
        fab_rows(oracle, best, owner, aim, start, lo, hi, Norm.L2, steps=30, prune=prune)
        out[prune] = (best.value.clone(), int(oracle.passes.sum()))
    assert out[1.1][1] < out[None][1]  # some rows stopped early
    assert torch.isfinite(out[1.1][0]).all()
    assert (out[1.1][0] <= out[None][0] * 1.01).all()


def test_alma_runs_side_by_side_match_separate_runs():
    from marginkit.attacks._oracle import Best, Oracle
    from marginkit.attacks.alm import alma_rows
    from marginkit.attacks.stages import OracleView

    model, x = _mlp(), _inputs(6)
    flat = x.reshape(6, -1)
    with torch.no_grad():
        ref = model(x).argmax(1)
    lo, hi = torch.zeros_like(flat), torch.ones_like(flat)

    def separate(lr):
        oracle = Oracle(model, (1, 12), 6, torch.device("cpu"), budget=None, deadline=None, max_rows=64)
        best = Best(flat, ref, "l2")
        alma_rows(oracle, best, torch.arange(6), lo, hi, steps=100, lr=lr)
        return best.value, oracle.passes

    oracle = Oracle(model, (1, 12), 6, torch.device("cpu"), budget=None, deadline=None, max_rows=64)
    rows = torch.arange(6).repeat(2)
    per_row = Best(flat[rows], ref[rows], "l2")
    alma_rows(OracleView(oracle, rows), per_row, torch.arange(12), lo[rows], hi[rows], steps=100,
              lr=torch.tensor([0.1] * 6 + [0.3] * 6, dtype=torch.float64))
    (v1, p1), (v3, p3) = separate(0.1), separate(0.3)
    torch.testing.assert_close(per_row.value[:6], v1, rtol=1e-4, atol=0)
    torch.testing.assert_close(per_row.value[6:], v3, rtol=1e-4, atol=0)
    assert torch.equal(oracle.passes, p1 + p3)  # both runs charged to their samples


# ---- the contract every stage keeps --------------------------------------------------------------------
# (id, norm, model, steps before the stage under test, the step under test); small step counts: the
# contract does not depend on how long a stage runs
_FIRST = (Step(Projection(steps=5, topk=2)),)
STAGE_CASES = [
    ("projection-l2", "l2", "mlp", (), Step(Projection(steps=10, topk=3, prune=1.1))),
    ("projection-from-best-linf", "linf", "mlp", _FIRST, Step(Projection(steps=10), start="best")),
    ("ball-l1", "l1", "mlp", (), Step(Ball(steps=30))),
    ("ball-from-best-l2", "l2", "mlp", _FIRST, Step(Ball(steps=20, patience=5), start="best")),
    ("alma-l2", "l2", "mlp", (), Step(Alma(steps=40, lrs=(None, 0.5)))),
    ("alma-l1", "l1", "mlp", _FIRST, Step(Alma(steps=40), samples="found")),
    ("refine-linf", "linf", "mlp", (Step(Ball(steps=10, refine=False)),), Step(Refine(), start="best")),
    ("rounds-l2", "l2", "mlp", _FIRST + (Step(Ball(steps=10)),),
     Step(Rounds(rounds=2, projection_steps=5, ball_steps=10), samples="disagree", start="best")),
    ("rounds-runner-up-l1", "l1", "mlp", _FIRST + (Step(Ball(steps=10)),),
     Step(Rounds(rounds=1, projection_steps=5, ball_steps=10), start="runner-up")),
    ("affine-exact-l2", "l2", "linear", (), Step(AffineExact())),
]
_IDS = [c[0] for c in STAGE_CASES]


def _model(kind):
    return _linear() if kind == "linear" else _mlp(seed=2)


@pytest.mark.parametrize("case", STAGE_CASES, ids=_IDS)
def test_stage_contract_verified_flips_in_the_box_and_never_worse_than_before(case):
    _, norm, kind, before, step = case
    model, x = _model(kind), _inputs(10, seed=3)
    prior = input_margin(model, x, norm=norm, schedule=before) if before else None
    res = input_margin(model, x, norm=norm, schedule=before + (step,), return_adv=True)
    found = torch.isfinite(res.upper)
    assert found.sum() >= 8
    assert set(res.status) <= {"upper-only", "failed", "bracketed"}
    adv = res.adversarial[found]
    assert (adv >= 0).all() and (adv <= 1).all()
    with torch.no_grad():
        assert (model(adv).argmax(1) != model(x[found]).argmax(1)).all()
        assert torch.equal(model(adv).argmax(1), res.target[found])
    assert torch.allclose(batch_norm((adv - x[found]).double(), norm), res.upper[found], rtol=1e-5)
    assert torch.isinf(res.upper[~found]).all() and torch.isnan(res.adversarial[~found]).all()
    if prior is not None:  # a step only adds candidates: never worse than where it started
        assert (res.upper <= prior.upper).all()
    assert set(res.stage) <= {s.label() for s in before + (step,)} | {"affine-exact"}


@pytest.mark.parametrize("case", STAGE_CASES, ids=_IDS)
def test_stage_contract_failure_is_inf_and_failed(case):
    _, norm, _, before, step = case
    lin = nn.Linear(3, 2)  # class 0 scores 10, class 1 the first pixel (<= 1 in the box): nothing flips it
    with torch.no_grad():
        lin.weight.zero_()
        lin.weight[1, 0] = 1.0
        lin.bias.copy_(torch.tensor([10.0, 0.0]))
    model = nn.Sequential(nn.Flatten(), lin).eval()
    res = input_margin(model, _inputs(4, 3), norm=norm, schedule=before + (step,), return_adv=True)
    # the affine shortcut proves it ("exact" with an infinite margin); a search that finds nothing says "failed"
    assert res.status == ["exact" if isinstance(step.stage, AffineExact) else "failed"] * 4
    assert torch.isinf(res.upper).all() and (res.target == -1).all()
    assert torch.isnan(res.adversarial).all()  # never 0, never the clean input


@pytest.mark.parametrize("case", STAGE_CASES, ids=_IDS)
def test_stage_contract_a_sample_does_not_depend_on_its_batch(case):
    _, norm, kind, before, step = case
    model, x = _model(kind), _inputs(7, seed=5)
    sched = before + (step,)
    whole = input_margin(model, x, norm=norm, schedule=sched)
    alone = [input_margin(model, x[i:i + 1], norm=norm, schedule=sched) for i in range(7)]
    perm = torch.tensor([6, 2, 4, 0, 5, 1, 3])
    mixed = input_margin(model, x[perm], norm=norm, schedule=sched, runtime=RuntimeOptions(batch_size=3))
    for i in range(7):
        torch.testing.assert_close(alone[i].upper[0], whole.upper[i], rtol=1e-5, atol=0)
        assert alone[i].passes[0] == whole.passes[i]
    torch.testing.assert_close(mixed.upper, whole.upper[perm], rtol=1e-5, atol=0)
    assert torch.equal(mixed.passes, whole.passes[perm]) and torch.equal(mixed.target, whole.target[perm])


@pytest.mark.parametrize("case", STAGE_CASES, ids=_IDS)
def test_stage_contract_budget_respected(case):
    _, norm, kind, before, step = case
    model, x = _model(kind), _inputs(6, seed=6)
    for budget in (4, 40):
        res = input_margin(model, x, norm=norm, schedule=before + (step,), budget=budget)
        assert (res.passes <= budget).all()
        assert all(s in ("upper-only", "failed", "bracketed") for s in res.status)
        assert all(math.isinf(u) for u, s in zip(res.upper.tolist(), res.status) if s == "failed")


@pytest.mark.parametrize("norm", NORMS)
def test_adding_a_step_never_raises_an_upper_bound(norm):
    from marginkit.attacks import preset

    model, x = _mlp(seed=3), _inputs(12, seed=4)
    fast = preset("fast", norm)
    extra = (Step(Ball(steps=20), samples="all"), Step(Rounds(rounds=1, projection_steps=5, ball_steps=10), start="best"))
    if norm != "linf":
        extra += (Step(Alma(steps=30), samples="disagree"),)
    prev = input_margin(model, x, norm=norm, schedule=fast).upper
    sched = fast
    for step in extra:
        sched = sched + (step,)
        now = input_margin(model, x, norm=norm, schedule=sched).upper
        assert (now <= prev).all()
        prev = now


def test_default_preset_is_batch_independent_on_the_issue_setup():
    # the reproducer of the issue: the full l2 default schedule on samples alone and in batches of 4
    model, x = _mlp(seed=1), _inputs(8, seed=9)
    whole = input_margin(model, x, norm="l2")
    fours = input_margin(model, x, norm="l2", runtime=RuntimeOptions(batch_size=4))
    alone = torch.stack([input_margin(model, x[i:i + 1], norm="l2").upper[0] for i in (0, 5)])
    torch.testing.assert_close(fours.upper, whole.upper, rtol=1e-5, atol=0)
    torch.testing.assert_close(alone, whole.upper[[0, 5]], rtol=1e-5, atol=0)


def test_rows_per_call_and_padding_change_nothing_but_rounding():
    model, x = _mlp(seed=3), _inputs(10, seed=4)
    a = input_margin(model, x, norm="linf", preset="fast")
    b = input_margin(model, x, norm="linf", preset="fast", runtime=RuntimeOptions(rows_per_call=7, min_rows=1))
    assert b.settings["runtime"]["rows_per_call"] == 7 and a.settings["runtime"]["rows_per_call"] == 1024
    torch.testing.assert_close(a.upper, b.upper, rtol=1e-4, atol=0)


def test_presets_and_schedule_recorded_from_the_dataclasses():
    from dataclasses import asdict

    from marginkit.attacks import PRESETS, preset

    model, x = _mlp(), _inputs(4)
    for name in PRESETS:
        for norm in NORMS:
            sched = preset(name, norm)
            assert sched and all(isinstance(s, Step) for s in sched)
    res = input_margin(model, x, norm="l2", preset="fast")
    assert res.settings["preset"] == "fast" and res.method == "marginkit-fast"
    recorded = res.settings["schedule"]
    assert [r["label"] for r in recorded] == [s.label() for s in preset("fast", "l2")]
    for r, s in zip(recorded, preset("fast", "l2")):
        assert {k: r[k] for k in asdict(s.stage)} == asdict(s.stage)
    assert "seed" not in res.settings and res.settings["versions"]["torch"] == torch.__version__
    assert Alma(steps=300, lrs=(0.1,)).label() == "alma[steps=300,lrs=(0.1)]"
    assert Projection(steps=40, topk=3).label() == "projection[steps=40,topk=3]"
    own = (Step(Projection(steps=5, topk=2)), Step(Alma(steps=20), samples="found"))
    custom = input_margin(model, x, norm="l2", schedule=own)
    assert custom.settings["preset"] == "custom" and set(custom.stage) <= {s.label() for s in own}


def test_old_keywords_map_onto_the_new_api_or_name_their_replacement():
    model, x = _mlp(), _inputs(4)
    with pytest.warns(DeprecationWarning, match="RuntimeOptions"):
        res = input_margin(model, x, norm="l2", preset="fast", batch_size=2, max_rows=5, progress=False)
    assert res.settings["runtime"]["batch_size"] == 2 and res.settings["runtime"]["rows_per_call"] == 5
    fab = input_margin(model, x, norm="l2", method="fab")
    assert fab.settings["preset"] == "fab" and all(r["stage"] == "projection" for r in fab.settings["schedule"])
    for key, val, hint in [("alma_more", (0.1,), "basins"), ("fab_steps", 10, "Projection"), ("seed", 0, "random"),
                           ("extra_rounds", 2, "Rounds"), ("agree_rtol", 1e-3, "rtol")]:
        with pytest.raises(TypeError, match=hint):
            input_margin(model, x, norm="l2", **{key: val})
    with pytest.raises(TypeError, match="unexpected"):
        input_margin(model, x, norm="l2", bogus=1)
    with pytest.raises(ValueError, match="not both"):
        input_margin(model, x, norm="l2", preset="fast", schedule=(Step(Ball(steps=5)),))
    with pytest.raises(ValueError, match="unknown preset"):
        input_margin(model, x, norm="l2", preset="slow")
    with pytest.raises(ValueError, match="linf"):
        input_margin(model, x, norm="linf", schedule=(Step(Alma(steps=5)),))
    with pytest.raises(ValueError, match="start"):
        Step(Alma(steps=5), start="best")
    with pytest.raises(ValueError, match="start"):
        Step(Rounds(rounds=1, projection_steps=1, ball_steps=1))
    with pytest.raises(ValueError, match="samples"):
        Step(Ball(steps=5), samples="some")
    with pytest.raises(ValueError, match="steps"):
        Ball(steps=0)


def test_sample_selections_and_runner_up_follow_their_definitions():
    from marginkit.attacks._oracle import Best
    from marginkit.attacks.schedule import _basins, _disagree, runner_up

    x0 = torch.zeros(5, 2)
    best = Best(x0, torch.zeros(5, dtype=torch.long), "l2")
    inf = float("inf")

    def tracker(values):
        b = best.fresh()
        b.value = torch.tensor(values, dtype=torch.float64)
        b.x = b.value.nan_to_num(posinf=0.0)[:, None].float().repeat(1, 2)
        b.cls = torch.where(torch.isfinite(b.value), 1, -1)
        return b

    a = tracker([1.0, 1.0, 1.0, inf, inf])
    b = tracker([1.0005, 1.2, inf, inf, 2.0])
    idx = torch.arange(5)
    every = torch.ones(5, dtype=torch.bool)
    # within rtol: agree; 20% apart: disagree; one flipped and the other not: disagree; both failed: agree
    assert _disagree([(a, every), (b, every)], idx, 1e-3).tolist() == [False, True, True, False, True]
    assert _disagree([(a, every)], idx, 1e-3).all()  # nothing to compare with: every sample
    # a stage that did not run on a sample has no opinion there (its inf is not a failure)
    some = torch.tensor([True, True, False, True, False])
    assert _disagree([(a, every), (b, some)], idx, 1e-3).tolist() == [False, True, True, False, True]
    assert _disagree([(a, every), (tracker([1.0, 1.0, inf, inf, inf]), some)], idx, 1e-3).tolist() == [False, False, True, False, True]
    c = tracker([0.9, 1.2, 1.0, inf, 3.0])
    # the latest stage ended more than rtol from every earlier one
    assert _basins([(a, every), (b, every), (c, every)], idx, 1e-3).tolist() == [True, False, False, False, True]
    assert _basins([(a, every), (b, every), (c, some)], idx, 1e-3).tolist() == [True, False, False, False, False]
    best.absorb(a)
    best.absorb(b)
    best.absorb(c)
    alt = runner_up(best, [a, b, c], 1e-3)
    # the smallest end point more than rtol above the best; none where every end point is the best
    assert alt.value.tolist()[:2] == [1.0, 1.2] and math.isinf(alt.value[2]) and math.isinf(alt.value[3])
    assert alt.value[4] == 3.0
