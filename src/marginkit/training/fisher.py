"""Multiclass Fisher consistency of the AMR objective (min-vs-average margin paper, eq. 15), population level.

On a discrete distribution (points x_i with probabilities p_i and class posteriors eta_i in the simplex)
the population version of eq. (15) is

    R = sum_i p_i sum_y eta_iy [ CE(y, f(x_i)) - lam * 1{argmax f(x_i) = y} * [min_{k != y} (w_y - w_k)^T Phi(x_i)]_0^tau ]
        + beta * ||W W^T - I||_F^2,          f(x) = W Phi(x) + b,  w_k = W_k / ||W_k||.

The objective is Fisher consistent on the distribution when every minimiser predicts the Bayes class
argmax_y eta_iy at every point with a unique Bayes class. Two parametrisations are checked:

* :func:`score_level_check` - free scores per point with an orthonormal head (W = I, b = 0): the margin
  is the score gap s_y - max_{k != y} s_k. The per-point minimum is computed exactly: for a predicted
  class j and a gap g, min CE(s) s.t. s_j - s_k >= g has the closed form p_k = min(eta_k, p_j e^{-g})
  (k != j), p_j = 1 - sum_k p_k (KKT), its value V_j(g) is convex in g with V_j'(g) = p_j(g) - eta_j,
  so the best gap solves p_j(g) = (1 + lam) eta_j, clipped to [0, tau].
* :func:`head_level_check` - eq. (15) as trained: a shared head (W, b) with normalised rows, features
  Phi(x_i) free per point, the orthogonality penalty on W; minimised numerically (Adam from several
  starts, including the exact score-level solution lifted to W = I), so its verdict is that of the best
  point found, not a proof;
* :func:`biased_head_check` - the beta -> infinity limit of the former (W orthogonal) with a bias b that
  the margin term does not see: exact in the scores for each b (:func:`offset_score_minimum`), b on a
  grid then refined, with and without forcing the Bayes prediction.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .regularizers import feature_margin_term, orthogonality_penalty, truncate_margin

__all__ = ["FisherCheck", "score_level_minimum", "score_level_check", "head_level_risk", "head_level_check",
           "random_posteriors", "offset_score_minimum", "biased_head_check",
           "HAND_DISTRIBUTIONS", "score_level_grid"]


def _check_eta(eta: np.ndarray) -> np.ndarray:
    eta = np.asarray(eta, dtype=np.float64)
    if eta.ndim != 2 or eta.shape[1] < 2:
        raise ValueError(f"eta must be (points, classes >= 2), got shape {eta.shape}")
    if (eta < 0).any() or not np.allclose(eta.sum(1), 1.0, atol=1e-9):
        raise ValueError("each row of eta must be a probability vector (non-negative, summing to 1)")
    return eta


def random_posteriors(points: int, classes: int, *, concentration: float = 1.0, seed: int = 0) -> np.ndarray:
    """``points`` class posteriors drawn from a symmetric Dirichlet(``concentration``)."""
    return np.random.default_rng(seed).dirichlet(np.full(classes, concentration), size=points)


def _bisect(fn, lo: np.ndarray, hi: np.ndarray, iters: int = 80) -> np.ndarray:
    """Root of an increasing ``fn`` on [lo, hi], elementwise."""
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        up = fn(mid) > 0
        hi = np.where(up, mid, hi)
        lo = np.where(up, lo, mid)
    return 0.5 * (lo + hi)


def score_level_minimum(eta: np.ndarray, lam: float, tau: float) -> tuple[np.ndarray, np.ndarray]:
    """Exact min over scores with prediction j of the per-point eq. (15) risk, for every point and j.

    Returns ``risk`` (K, C): min_{s: argmax s = j} CE(s) - lam * eta_j * [gap_j(s)]_0^tau, and ``gap`` (K, C)
    the minimising gap g*. The point's overall minimiser predicts argmin_j risk[i, j].
    """
    eta = _check_eta(eta)
    if lam < 0 or tau < 0:
        raise ValueError(f"lam and tau must be >= 0, got {lam}, {tau}")
    K, C = eta.shape
    others = ~np.eye(C, dtype=bool)  # others[j, k]: k != j
    e_other = np.where(others[None], eta[:, None, :], 0.0)  # (K, j, k)
    ej = eta  # (K, j)

    def fill(q: np.ndarray) -> np.ndarray:  # sum_{k != j} min(eta_k, q), q (K, C)
        return np.where(others[None], np.minimum(e_other, q[..., None]), 0.0).sum(-1)

    target = (1.0 + lam) * ej
    # Best gap: p_j(g) = target; with q = target e^{-g}, sum_{k != j} min(eta_k, q) = 1 - target.
    feasible = target < 1.0
    q = _bisect(lambda q: fill(q) - (1.0 - np.minimum(target, 1.0)), np.zeros_like(ej), np.ones_like(ej))
    with np.errstate(divide="ignore", invalid="ignore"):
        g = np.where(feasible, np.log(np.maximum(target, 1e-300) / np.maximum(q, 1e-300)), np.inf)
    g = np.clip(np.nan_to_num(g, nan=0.0, posinf=tau), 0.0, tau)
    # p_j at that gap: p + sum_{k != j} min(eta_k, p e^{-g}) = 1.
    pj = _bisect(lambda p: p + fill(p * np.exp(-g)) - 1.0, np.zeros_like(ej), np.ones_like(ej))
    pk = np.minimum(e_other, (pj * np.exp(-g))[..., None])  # (K, j, k), k != j
    with np.errstate(divide="ignore"):
        ce = -np.where(others[None] & (e_other > 0), e_other * np.log(np.maximum(pk, 1e-300)), 0.0).sum(-1)
        ce = ce - np.where(ej > 0, ej * np.log(np.maximum(pj, 1e-300)), 0.0)
    return ce - lam * ej * g, g


@dataclass(frozen=True)
class FisherCheck:
    """Verdict of a Fisher-consistency check on one distribution and one (lam, tau, beta).

    ``consistent``: every point with a unique Bayes class is predicted as it; ``bayes`` / ``predicted``
    (K,): argmax eta and the minimiser's argmax; ``slack`` (K,): risk of the best wrong prediction minus
    the risk of the best Bayes prediction (> 0 where the point is consistent; score level only);
    ``risk``: the minimum found; ``detail``: parametrisation-specific numbers (head norms, restarts).
    """

    parametrisation: str
    lam: float
    tau: float
    beta: float
    consistent: bool
    bayes: list[int]
    predicted: list[int]
    slack: list[float]
    risk: float
    detail: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _unique_bayes(eta: np.ndarray, tol: float = 1e-9) -> np.ndarray:
    top = np.sort(eta, 1)
    return top[:, -1] - top[:, -2] > tol


def score_level_check(p: Sequence[float] | np.ndarray, eta: np.ndarray, lam: float, tau: float) -> FisherCheck:
    """Eq. (15) with an orthonormal head (scores free per point), solved exactly point by point."""
    eta = _check_eta(eta)
    p = np.asarray(p, dtype=np.float64)
    if p.shape != (eta.shape[0],) or (p < 0).any() or not np.isclose(p.sum(), 1.0):
        raise ValueError("p must be a probability vector with one entry per point")
    risk, _ = score_level_minimum(eta, lam, tau)
    bayes = eta.argmax(1)
    pred = risk.argmin(1)
    wrong = np.where(np.arange(eta.shape[1])[None] == bayes[:, None], np.inf, risk).min(1)
    slack = wrong - risk[np.arange(len(bayes)), bayes]
    uniq = _unique_bayes(eta)
    ok = bool(np.all((pred == bayes)[uniq]) and np.all(slack[uniq] > 0))
    return FisherCheck("scores", float(lam), float(tau), 0.0, ok, bayes.tolist(), pred.tolist(), slack.tolist(),
                       float(p @ risk.min(1)))


def head_level_risk(weight: torch.Tensor, bias: torch.Tensor, phi: torch.Tensor, p: torch.Tensor, eta: torch.Tensor,
                    lam: float, tau: float, beta: float) -> torch.Tensor:
    """Population eq. (15) for R heads at once: ``weight`` (R, C, m), ``bias`` (R, C), ``phi`` (R, K, m) -> (R,).

    The same terms as :class:`marginkit.training.AverageMarginRegularizer` (``feature_margin_term`` with
    normalised rows, ``truncate_margin``, ``orthogonality_penalty``), batched over R restarts; the
    reward is for the predicted class, as the indicator 1{argmax f = y} selects.
    """
    logits = phi @ weight.transpose(1, 2) + bias[:, None, :]
    ce = -(eta[None] * F.log_softmax(logits, 2)).sum(2)  # (R, K)
    pred = logits.detach().argmax(2)
    w = weight / weight.norm(dim=2, keepdim=True).clamp_min(1e-12)
    scores = phi @ w.transpose(1, 2)
    gaps = scores.gather(2, pred[..., None]) - scores
    margin = gaps.scatter(2, pred[..., None], float("inf")).min(2).values
    reward = eta[None].expand_as(ce[..., None].expand(-1, -1, eta.shape[1])).gather(2, pred[..., None]).squeeze(2)
    risk = (p[None] * (ce - lam * reward * truncate_margin(margin, tau))).sum(1)
    if beta > 0:
        eye = torch.eye(weight.shape[1], dtype=weight.dtype, device=weight.device)
        risk = risk + beta * (weight @ weight.transpose(1, 2) - eye).pow(2).sum((1, 2))
    return risk


def head_level_check(p: Sequence[float] | np.ndarray, eta: np.ndarray, lam: float, tau: float, beta: float, *,
                     restarts: int = 8, steps: int = 3000, lr: float = 0.03, bias: bool = True,
                     seed: int = 0) -> FisherCheck:
    """Eq. (15) as trained (shared normalised head, bias, orthogonality), minimised by Adam from
    ``restarts`` random starts plus the exact score-level solution lifted to (W = I, b = 0), all
    restarts in one batch.

    The lowest risk reached gives the verdict. ``detail`` holds that head's row norms and bias, and the
    lowest risk among the runs that predict the Bayes class everywhere, for comparison.
    """
    eta_np = _check_eta(eta)
    K, C = eta_np.shape
    pt = torch.as_tensor(np.asarray(p, dtype=np.float64))
    et = torch.as_tensor(eta_np)
    # The lifted score-level solution: scores log eta with the best class raised to the exact gap g*.
    risk_s, gap_s = score_level_minimum(eta_np, lam, tau)
    j = risk_s.argmin(1)
    g = gap_s[np.arange(K), j]
    s0 = np.log(np.maximum(eta_np, 1e-6))
    for i in range(K):
        s0[i, j[i]] = max(s0[i, j[i]], np.delete(s0[i], j[i]).max() + g[i])
    gen = torch.Generator().manual_seed(seed)
    w0 = torch.linalg.qr(torch.randn(restarts + 1, C, C, generator=gen, dtype=torch.float64))[0]
    w0[0] = torch.eye(C, dtype=torch.float64)
    phi0 = torch.randn(restarts + 1, K, C, generator=gen, dtype=torch.float64)
    phi0[0] = torch.as_tensor(s0)
    weight = w0.clone().requires_grad_(True)
    b = torch.zeros(restarts + 1, C, dtype=torch.float64, requires_grad=bias)
    phi = phi0.requires_grad_(True)
    opt = torch.optim.Adam([weight, phi] + ([b] if bias else []), lr=lr)
    best = torch.full((restarts + 1,), float("inf"), dtype=torch.float64)
    best_pred = torch.zeros(restarts + 1, K, dtype=torch.long)
    best_norm = torch.zeros(restarts + 1, C, dtype=torch.float64)
    best_bias = torch.zeros(restarts + 1, C, dtype=torch.float64)
    for _ in range(steps):
        opt.zero_grad()
        r = head_level_risk(weight, b, phi, pt, et, lam, tau, beta)
        with torch.no_grad():
            better = r < best
            best = torch.where(better, r, best)
            best_pred[better] = (phi @ weight.transpose(1, 2) + b[:, None]).argmax(2)[better]
            best_norm[better] = weight.norm(dim=2)[better]
            best_bias[better] = b[better]
        r.sum().backward()
        opt.step()
    bayes = eta_np.argmax(1)
    uniq = _unique_bayes(eta_np)
    top = int(best.argmin())
    pred = best_pred[top].numpy()
    is_bayes = np.array([np.all((best_pred[i].numpy() == bayes)[uniq]) for i in range(restarts + 1)])
    ok = bool(np.all((pred == bayes)[uniq]))
    detail = {"row_norms": best_norm[top].tolist(), "bias": best_bias[top].tolist(), "restarts": restarts,
              "steps": steps, "bias_term": bias, "risks": best.tolist(),
              "best_bayes_risk": float(best[torch.as_tensor(is_bayes)].min()) if is_bayes.any() else None,
              "score_level_risk": float(pt.numpy() @ risk_s.min(1))}
    return FisherCheck("head", float(lam), float(tau), float(beta), ok, bayes.tolist(), pred.tolist(), [],
                       float(best[top]), detail)


def offset_score_minimum(eta: np.ndarray, lam: float, tau: float, offsets: np.ndarray,
                         iters: int = 60) -> np.ndarray:
    """Per-point minimum of eq. (15) with an orthonormal head *and a bias* b, for each predicted class.

    With W orthogonal (what beta -> infinity enforces) and logits s = W Phi + b, the margin term of
    eq. (15) sees W Phi = s - b, not s: for prediction j and margin level g the constraints are
    s_j - s_k >= c_k = max(0, g + b_j - b_k), whose CE minimum has the closed form
    p_k = min(eta_k, p_j e^{-c_k}) (KKT). The value is convex in g and minimised by golden section; the
    branch without reward (only s_j >= s_k, biased gap negative) is the other candidate.
    ``offsets`` (B, C): B bias vectors at once. Returns (B, K, C): the minimum risk with prediction j.
    """
    eta = _check_eta(eta)
    b = np.atleast_2d(np.asarray(offsets, dtype=np.float64))
    if b.shape[1] != eta.shape[1]:
        raise ValueError(f"offsets must have {eta.shape[1]} columns, got {b.shape}")
    K, C = eta.shape
    others = ~np.eye(C, dtype=bool)
    e = np.broadcast_to(eta[None, :, None, :], (b.shape[0], K, C, C))  # (B, K, j, k)
    diff = (b[:, :, None] - b[:, None, :])[:, None]  # (B, 1, j, k): b_j - b_k
    ej = np.broadcast_to(eta[None], (b.shape[0], K, C))

    def risk(g: np.ndarray, plain: bool = False) -> np.ndarray:  # g (B, K, C)
        # plain: no reward, only the prediction constraint s_j >= s_k (a negative biased gap earns 0)
        c = np.zeros_like(g[..., None] + diff) if plain else np.maximum(0.0, g[..., None] + diff)
        decay = np.exp(-c)

        def excess(pj: np.ndarray) -> np.ndarray:
            return pj + np.where(others, np.minimum(e, pj[..., None] * decay), 0.0).sum(-1) - 1.0

        pj = _bisect(excess, np.zeros_like(g), np.ones_like(g))
        pk = np.minimum(e, pj[..., None] * decay)
        ce = -np.where(others & (e > 0), e * np.log(np.maximum(pk, 1e-300)), 0.0).sum(-1)
        ce = ce - np.where(ej > 0, ej * np.log(np.maximum(pj, 1e-300)), 0.0)
        return ce - lam * ej * g

    lo = np.zeros((b.shape[0], K, C))
    hi = np.full_like(lo, float(tau))
    phi = (math.sqrt(5) - 1) / 2
    for _ in range(iters):
        m1, m2 = hi - phi * (hi - lo), lo + phi * (hi - lo)
        left = risk(m1) <= risk(m2)
        hi = np.where(left, m2, hi)
        lo = np.where(left, lo, m1)
    g = 0.5 * (lo + hi)
    best = np.minimum(np.minimum(risk(g), risk(np.zeros_like(g))), risk(np.full_like(g, float(tau))))
    return np.minimum(best, risk(np.zeros_like(g), plain=True))


def biased_head_check(p: Sequence[float] | np.ndarray, eta: np.ndarray, lam: float, tau: float, *,
                      span: float = 3.0, steps: int = 61) -> FisherCheck:
    """Eq. (15) with an orthogonal head and a bias, minimised over a grid of biases (b_0 = 0, the
    others on ``steps`` values in [-span, span]), each point's scores exactly.

    ``risk`` is the best population risk over the grid; ``detail["bayes_risk"]`` the best risk when every
    point must predict its Bayes class. Inconsistent (on the grid) when the first is lower: a bias
    makes some non-Bayes prediction pay, because the margin term does not see the bias.
    """
    eta = _check_eta(eta)
    p = np.asarray(p, dtype=np.float64)
    K, C = eta.shape
    axes = [np.linspace(-span, span, steps)] * (C - 1)
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, C - 1)
    b = np.concatenate([np.zeros((len(grid), 1)), grid], 1)
    r = offset_score_minimum(eta, lam, tau, b)  # (B, K, C)
    bayes = eta.argmax(1)
    free = (r.min(2) * p).sum(1)
    forced = (r[:, np.arange(K), bayes] * p).sum(1)
    i, k = int(free.argmin()), int(forced.argmin())
    from scipy.optimize import minimize

    def total(rest: np.ndarray, force: bool) -> float:  # refine off the grid (Nelder-Mead in b_1..b_{C-1})
        rr = offset_score_minimum(eta, lam, tau, np.concatenate([[0.0], rest])[None])[0]
        return float(((rr[np.arange(K), bayes] if force else rr.min(1)) * p).sum())

    fr = minimize(total, b[i, 1:], args=(False,), method="Nelder-Mead", options={"xatol": 1e-6, "fatol": 1e-10})
    fo = minimize(total, b[k, 1:], args=(True,), method="Nelder-Mead", options={"xatol": 1e-6, "fatol": 1e-10})
    b_free = np.concatenate([[0.0], fr.x]) if fr.fun < free[i] else b[i]
    b_bayes = np.concatenate([[0.0], fo.x]) if fo.fun < forced[k] else b[k]
    risk_free, risk_bayes = min(float(fr.fun), float(free[i])), min(float(fo.fun), float(forced[k]))
    pred = offset_score_minimum(eta, lam, tau, b_free[None])[0].argmin(1)
    ok = bool(risk_free >= risk_bayes - 1e-9)
    return FisherCheck("orthogonal head + bias", float(lam), float(tau), float("inf"), ok, bayes.tolist(),
                       pred.tolist(), [], risk_free,
                       {"bias": b_free.tolist(), "bayes_risk": risk_bayes, "bayes_bias": b_bayes.tolist(),
                        "grid": f"{steps}^{C - 1} on [-{span}, {span}], then Nelder-Mead"})


# Two small distributions with near ties (4 points, 3 classes): (p, eta). Near ties are where a bias the
# margin term does not see can buy margin reward at little cross-entropy cost (see biased_head_check).
HAND_DISTRIBUTIONS: dict[str, tuple[np.ndarray, np.ndarray]] = {
    "dominant-0-near-tie": (np.array([0.4, 0.3, 0.2, 0.1]),
                            np.array([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.36, 0.40, 0.24], [0.1, 0.3, 0.6]])),
    "three-way-near-ties": (np.array([0.25, 0.25, 0.25, 0.25]),
                            np.array([[0.34, 0.33, 0.33], [0.30, 0.36, 0.34], [0.32, 0.31, 0.37], [0.5, 0.45, 0.05]])),
}


def score_level_grid(dists: int, *, points: int = 5, classes: Sequence[int] = (3, 5),
                     concentrations: Sequence[float] = (0.3, 1.0, 5.0),
                     lams: Sequence[float] = (0.0, 0.01, 0.1, 1.0, 10.0, 100.0),
                     taus: Sequence[float] = (0.1, 1.0, 5.0, 40.0)) -> list[dict[str, Any]]:
    """:func:`score_level_check` over random distributions (``dists`` per (classes, concentration); seeded,
    posteriors Dirichlet(concentration), point weights Dirichlet(1)) x ``lams`` x ``taus``: one row per case
    with ``consistent`` and ``min_slack`` (how much the best wrong prediction loses by, over points with a
    unique Bayes class)."""
    rows = []
    for c in classes:
        for conc in concentrations:
            for d in range(dists):
                eta = random_posteriors(points, c, concentration=conc, seed=1000 * c + 10 * int(10 * conc) + d)
                p = np.random.default_rng(d).dirichlet(np.ones(points))
                uniq = np.sort(eta, 1)[:, -1] - np.sort(eta, 1)[:, -2] > 1e-9
                for lam in lams:
                    for tau in taus:
                        chk = score_level_check(p, eta, lam, tau)
                        rows.append({"classes": c, "concentration": conc, "dist": d, "lam": lam, "tau": tau,
                                     "consistent": bool(chk.consistent),
                                     "min_slack": float(np.min(np.asarray(chk.slack)[uniq])) if uniq.any() else float("nan")})
    return rows
