"""Controlled ablation: does robustness follow the average margin when accuracy and the minimum margin are fixed?

The review of the min-vs-average margin paper asks for data whose margin distribution can be set.
:func:`separable_data` places points at chosen distances from a fixed separator u (a unit vector):

* ``anchors`` pairs of points at exactly ``min_margin`` from the hyperplane u^T x = 0, the pair j being
  +min_margin u + v_j and -min_margin u + v_j (same offset v_j orthogonal to u). By the KKT conditions
  of the hard-margin SVM (w = sum alpha_i s_i x_i with equal alphas on the anchors gives w along u) the
  max-min-margin separator of *every* such dataset is u, with minimum margin ``min_margin``;
* the other points at min_margin + c * e_i (e_i ~ Exp(1), c set so that the mean distance over all
  points is exactly ``avg_margin``), with Gaussian offsets orthogonal to u.

Two datasets with the same seed differ only in c: the same anchors, offsets and labels, a different
average margin. :func:`run_ablation` trains, on each, logistic regression (full-batch gradient
descent), the hard-margin SVM and a small ReLU MLP (all reach 100% training accuracy), and reads
robust accuracy at each eps from exact margins (linear models) or the input-margin engine (MLP), on a
test set drawn from the same distribution and on a common test set (the first condition's).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

__all__ = ["SeparableConfig", "SeparableData", "separable_data", "AblationConfig", "AblationResult", "run_ablation"]


@dataclass(frozen=True)
class SeparableConfig:
    """Linearly separable two-class data with a set minimum and average distance to u^T x = 0."""

    n: int = 400
    dim: int = 20
    min_margin: float = 0.1
    avg_margin: float = 1.0
    anchors: int = 10  # pairs at exactly min_margin
    noise: float = 1.0  # std of the offsets orthogonal to u
    seed: int = 0

    def __post_init__(self) -> None:
        if self.dim < 2 or self.n < 2 * self.anchors + 2 or self.anchors < 1:
            raise ValueError(f"need dim >= 2, anchors >= 1 and n >= 2 * anchors + 2, got {self}")
        if not 0 < self.min_margin < self.avg_margin:
            raise ValueError(f"need 0 < min_margin < avg_margin, got {self.min_margin}, {self.avg_margin}")
        if self.noise < 0:
            raise ValueError(f"noise must be >= 0, got {self.noise}")


@dataclass(frozen=True)
class SeparableData:
    """``x`` (n, dim) float64, ``y`` (n,) in {0, 1}, ``direction`` u (dim,), ``distances`` |u^T x| (n,)."""

    x: torch.Tensor
    y: torch.Tensor
    direction: torch.Tensor
    distances: torch.Tensor
    config: SeparableConfig


def separable_data(config: SeparableConfig, *, draw: int = 0) -> SeparableData:
    """Draw a dataset (``draw`` selects an independent sample of the same distribution, e.g. a test set).

    The direction u depends on ``config.seed`` only; everything else on (seed, draw), never on the
    margins, so configurations that differ only in ``avg_margin`` are paired point by point.
    """
    cfg = config
    gen_u = torch.Generator().manual_seed(10_007 * cfg.seed + 1)
    u = torch.randn(cfg.dim, generator=gen_u, dtype=torch.float64)
    u = u / u.norm()
    gen = torch.Generator().manual_seed(10_007 * cfg.seed + 31 * (draw + 1) + 2)
    a, rest = cfg.anchors, cfg.n - 2 * cfg.anchors
    offsets = torch.randn(a + rest, cfg.dim, generator=gen, dtype=torch.float64) * cfg.noise
    offsets = offsets - (offsets @ u)[:, None] * u  # orthogonal to u
    sign_rest = torch.where(torch.arange(rest) % 2 == 0, 1.0, -1.0).double()
    excess = -torch.log(torch.rand(rest, generator=gen, dtype=torch.float64).clamp_min(1e-300))
    scale = (cfg.n * cfg.avg_margin - cfg.n * cfg.min_margin) / float(excess.sum())
    dist_rest = cfg.min_margin + scale * excess
    sign = torch.cat([torch.ones(a), -torch.ones(a), sign_rest]).double()
    dist = torch.cat([torch.full((2 * a,), cfg.min_margin, dtype=torch.float64), dist_rest])
    off = torch.cat([offsets[:a], offsets[:a], offsets[a:]])
    x = (sign * dist)[:, None] * u + off
    y = (sign > 0).long()
    return SeparableData(x, y, u, dist, cfg)


@dataclass(frozen=True)
class AblationConfig:
    """Conditions (average margins at one minimum margin), seeds, classifiers and the eps grid."""

    avg_margins: tuple[float, ...] = (0.5, 2.0)
    min_margin: float = 0.1
    n: int = 400
    n_test: int = 200
    dim: int = 20
    anchors: int = 10
    noise: float = 1.0
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    eps: tuple[float, ...] = (0.05, 0.1, 0.25, 0.5, 1.0)
    gd_steps: int = 2000
    mlp_hidden: int = 64
    mlp_epochs: int = 300
    mlp_lr: float = 1e-2
    classifiers: tuple[str, ...] = ("logreg", "svm", "mlp")
    engine_bounds: float = 50.0  # the engine needs a box: [-b, b] on every coordinate


@dataclass
class AblationResult:
    """One row per (seed, condition, classifier, test set): accuracies, margins, robust accuracy per eps.

    ``data_avg_margin`` is the condition (the training data's mean distance to u^T x = 0);
    ``avg_margin`` / ``min_margin`` are the classifier's, on that row's points (mean over correct points,
    minimum of the signed margins; misclassified points of the MLP rows count as -1).
    """

    config: AblationConfig
    rows: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"config": asdict(self.config), "rows": self.rows}

    def paired(self, classifier: str, test: str, key: str) -> dict[str, float]:
        """Mean and t 95% CI over seeds of key(last condition) - key(first condition)."""
        from scipy import stats

        lo_c, hi_c = self.config.avg_margins[0], self.config.avg_margins[-1]
        pick = {(r["seed"], r["data_avg_margin"]): r[key] for r in self.rows if r["classifier"] == classifier and r["test"] == test}
        d = np.array([pick[(s, hi_c)] - pick[(s, lo_c)] for s in self.config.seeds if (s, hi_c) in pick and (s, lo_c) in pick])
        if len(d) < 2:
            return {"mean": float(d.mean()) if len(d) else float("nan"), "lo": float("nan"), "hi": float("nan"), "n": len(d)}
        h = float(stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))) if d.std() > 0 else 0.0
        return {"mean": float(d.mean()), "lo": float(d.mean() - h), "hi": float(d.mean() + h), "n": len(d)}


def _logreg_gd(x: torch.Tensor, s: torch.Tensor, steps: int) -> torch.Tensor:
    """Full-batch GD on the mean logistic loss of w^T x, step 1 / smoothness, from w = 0 (Soudry et al.)."""
    lr = 4 * x.shape[0] / float(torch.linalg.matrix_norm(x, ord=2) ** 2)
    w = torch.zeros(x.shape[1], dtype=x.dtype)
    for _ in range(steps):
        w = w + lr * (x.T @ (s * torch.sigmoid(-s * (x @ w)))) / x.shape[0]
    return w


def _linear_margins(w: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    s = 2.0 * y.double() - 1.0
    return s * (x @ w) / w.norm()  # signed exact l2 margins


def _mlp(dim: int, hidden: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, 2))


def _train_mlp(x: torch.Tensor, y: torch.Tensor, cfg: AblationConfig, seed: int) -> nn.Module:
    model = _mlp(x.shape[1], cfg.mlp_hidden, seed)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.mlp_lr)
    xf = x.float()
    for _ in range(cfg.mlp_epochs):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(xf), y)
        loss.backward()
        opt.step()
    return model.eval()


def _mlp_margins(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: AblationConfig, seed: int) -> torch.Tensor:
    from ..attacks import input_margin

    xf = x.float()
    with torch.no_grad():
        correct = model(xf).argmax(1) == y
    res = input_margin(model, xf, y, "l2", bounds=(-cfg.engine_bounds, cfg.engine_bounds))
    up = res.upper.double()
    return torch.where(correct, up, -torch.ones_like(up))  # misclassified: counted non-robust at every eps


def _row(margins: torch.Tensor, eps: Sequence[float]) -> dict[str, Any]:
    m = margins.double()
    correct = m > 0
    out: dict[str, Any] = {"accuracy": float(correct.double().mean()),
                           "min_margin": float(m.min()), "avg_margin": float(m[correct].mean()) if correct.any() else float("nan")}
    for e in eps:
        out[f"robust@{e:g}"] = float((m > e).double().mean())
    return out


def run_ablation(config: AblationConfig = AblationConfig(), progress: bool = False) -> AblationResult:
    """Train every classifier on every (seed, average margin) and measure margins and robust accuracy."""
    from .dynamics import hard_margin_svm

    result = AblationResult(config)
    for seed in config.seeds:
        base = SeparableConfig(config.n, config.dim, config.min_margin, config.avg_margins[0], config.anchors,
                               config.noise, seed)
        common = separable_data(replace(base, n=config.n_test + 2 * config.anchors), draw=1)
        for avg in config.avg_margins:
            cfg = replace(base, avg_margin=avg)
            train = separable_data(cfg)
            test = separable_data(replace(cfg, n=config.n_test + 2 * config.anchors), draw=1)
            s = 2.0 * train.y.double() - 1.0
            for clf in config.classifiers:
                if clf == "logreg":
                    w = _logreg_gd(train.x, s, config.gd_steps)
                    margin = lambda d: _linear_margins(w, d.x, d.y)  # noqa: E731
                    extra = {"cosine_to_u": float(w @ train.direction / w.norm())}
                elif clf == "svm":
                    w_np, _ = hard_margin_svm(train.x.numpy(), s.numpy())
                    w = torch.as_tensor(w_np)
                    margin = lambda d: _linear_margins(w, d.x, d.y)  # noqa: E731
                    extra = {"cosine_to_u": float(w @ train.direction / w.norm())}
                elif clf == "mlp":
                    model = _train_mlp(train.x, train.y, config, seed)
                    margin = lambda d: _mlp_margins(model, d.x, d.y, config, seed)  # noqa: E731
                    extra = {}
                else:
                    raise ValueError(f"unknown classifier {clf!r}; choose logreg, svm or mlp")
                for name, data in (("train", train), ("own", test), ("common", common)):
                    if clf == "mlp" and name == "train":
                        with torch.no_grad():
                            acc = float((model(data.x.float()).argmax(1) == data.y).double().mean())
                        result.rows.append({"seed": seed, "data_avg_margin": avg, "classifier": clf, "test": name,
                                            "accuracy": acc, **extra})
                        continue
                    result.rows.append({"seed": seed, "data_avg_margin": avg, "classifier": clf, "test": name,
                                        **_row(margin(data), config.eps), **extra})
                if progress:
                    print(f"seed {seed} avg {avg} {clf} done", flush=True)
    return result
