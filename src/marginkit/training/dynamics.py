"""Margin dynamics during training (min-vs-average margin paper, Wu & Yu, sections 3 and 5).

* :func:`lipschitz_margin` - the Theorem 3 lower bound min(min_k (f_y - f_k) / L_k, r) with L_k the
  largest dual-norm gradient of f_y - f_k over points sampled in the ball B(x, r) (section 5.1).
* :func:`estimate_margins` - one entry point for the three margin estimates a run can track: exact for
  affine models, the Lipschitz lower bound, and the input-margin engine's upper bound.
* :class:`MarginTracker` - a trainer callback recording, every k epochs, the minimum and average margin
  of correctly classified points of fixed train / test subsets and their margins (for histograms).
* :func:`linear_margin_dynamics` - section 3: binary logistic regression by gradient descent on MNIST
  0-vs-1, its minimum margin rising towards the hard-margin SVM's while the average margin falls, and
  the minimal adversarial examples x - (w^T x / ||w||^2) w (eq. 7) at several epochs.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from ..attacks.pgd import random_ball
from ..checks import check_inputs, check_labels, check_logits, check_model_mode, model_device
from ..margins.output import pairwise_gaps
from ..margins.affine import is_affine
from ..margins.estimators import check_estimator, resolve_estimator
from ..norms import Norm, as_norm, batch_norm
from ..results.jsonio import dumps
from ..results.provenance import atomic_write_text

__all__ = [
    "ESTIMATORS",
    "LipschitzMargin",
    "lipschitz_margin",
    "estimate_margins",
    "MarginTracker",
    "LinearDynamics",
    "linear_margin_dynamics",
    "hard_margin_svm",
]

# The package's names (marginkit.margins.estimators: auto = exact for affine models, else attack) plus
# the Theorem 3 estimate and "paper", the paper's choice: exact for affine models, else lipschitz.
ESTIMATORS = ("auto", "exact", "attack", "lipschitz", "paper")


def _resolve(estimator: str, model: nn.Module, input_shape: tuple[int, ...]) -> str:
    name = check_estimator(estimator, ESTIMATORS)
    if name == "paper":
        return "exact" if is_affine(model, input_shape) else "lipschitz"
    return resolve_estimator(name, model, input_shape) if name == "auto" else name


@dataclass
class LipschitzMargin:
    """Theorem 3 lower bounds (not certified: L_k is a sampled maximum, as in the paper).

    ``bound`` (N,): min(min_k gap_k / L_k, radius), 0 for samples misclassified w.r.t. ``labels``.
    ``lipschitz`` (N, C): the estimated L_k (``nan`` for the reference class); ``gaps`` (N, C):
    f_ref - f_k at x (``inf`` for the reference class). ``curve`` maps a sample count s (each of
    ``checkpoints``) to the (N,) bound that the first s samples alone give (x itself always counted),
    so one run shows how the estimate moves as samples are added.
    """

    bound: torch.Tensor
    lipschitz: torch.Tensor
    gaps: torch.Tensor
    reference: torch.Tensor
    radius: float
    samples: int
    norm: Norm
    curve: dict[int, torch.Tensor] = field(default_factory=dict)


def _theorem3_bound(gaps: torch.Tensor, lip: torch.Tensor, ref: torch.Tensor, correct: torch.Tensor,
                    radius: float) -> torch.Tensor:
    """Eq. (16): min(min_k gap_k / L_k, r), 0 where the reference class is not the prediction."""
    ratio = torch.where(lip > 0, gaps / lip.clamp_min(1e-300), torch.full_like(gaps, float("inf")))
    ratio = ratio.scatter(1, ref[:, None], float("inf"))
    bound = ratio.min(1).values.clamp(max=float(radius))
    return torch.where(correct, bound.clamp_min(0), torch.zeros_like(bound))


def _sample_blocks(samples: int, block: int, checkpoints: Sequence[int]) -> list[int]:
    """Cumulative sample counts at which a block ends: every checkpoint, and at most ``block`` apart."""
    ends = sorted({c for c in checkpoints if 0 < c < samples} | {samples})
    out: list[int] = []
    prev = 0
    for e in ends:
        out.extend(range(prev + block, e, block))
        out.append(e)
        prev = e
    return [e for e in out if e > 0]


def lipschitz_margin(
    model: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor | None = None,
    norm: Norm | str = "l2",
    *,
    radius: float = 5.0,
    samples: int = 128,
    batch_size: int = 4096,
    seed: int = 0,
    checkpoints: Sequence[int] = (),
) -> LipschitzMargin:
    """Paper Theorem 3 (Hein & Andriushchenko 2017) with the section 5.1 estimate of L_k.

    For each x, ``samples`` points are drawn uniformly from the ``norm``-ball B(x, radius) (x itself is
    always included) and L_k = max ||grad (f_ref - f_k)||_q over them, q the dual norm. Rows of
    ``batch_size`` (point, sample) pairs go through one forward pass and one backward pass per class (no
    per-point loops); when ``samples`` exceeds ``batch_size`` (the paper's 1024 x 50 = 51,200), the
    samples of a point are streamed in blocks and L_k is a running maximum, so memory stays bounded.
    ``checkpoints`` (sample counts <= ``samples``) add the bound after that many samples to ``curve``.
    The bound is exact for affine models (constant gradients) whenever it is below ``radius``; for
    nonlinear models it is an estimate (a sampled maximum can miss the true local Lipschitz constant).
    The ball is not intersected with the input box, which can only make the bound smaller.
    """
    norm = as_norm(norm)
    check_inputs(inputs)
    if radius <= 0 or samples < 0 or batch_size < 1:
        raise ValueError(f"need radius > 0, samples >= 0 and batch_size >= 1, got {radius}, {samples}, {batch_size}")
    bad = [c for c in checkpoints if not 0 <= int(c) <= samples]
    if bad:
        raise ValueError(f"checkpoints must lie in [0, samples={samples}], got {bad}")
    check_model_mode(model)
    device = model_device(model)
    x = inputs.detach().to(device)
    n = x.shape[0]
    with torch.no_grad():
        logits = check_logits(model(x), n)
    c = logits.shape[1]
    ref = logits.argmax(1) if labels is None else check_labels(labels, n, c).to(device)
    gaps = pairwise_gaps(logits, ref).double()  # f_ref - f_k, +inf for the reference class
    correct = logits.argmax(1) == ref
    per = samples + 1
    chunk = max(1, batch_size // per)  # points per pass; 1 when a point's samples need several blocks
    block = max(1, batch_size // chunk)
    ends = _sample_blocks(samples, block, checkpoints)
    gen = torch.Generator().manual_seed(seed)
    lip = torch.zeros(n, c, dtype=torch.float64, device=device)
    curve_lip: dict[int, torch.Tensor] = {int(k): torch.zeros(n, c, dtype=torch.float64, device=device) for k in checkpoints}
    eye = torch.eye(c, dtype=x.dtype, device=device)
    shape = x.shape[1:]
    for s in range(0, n, chunk):
        xs, rs = x[s : s + chunk], ref[s : s + chunk]
        m = xs.shape[0]
        run = torch.zeros(m, c, dtype=torch.float64, device=device)
        start = 0
        for end in [0, *ends]:  # the first "block" is x itself (sample count 0)
            b = end - start
            noise = random_ball((m * b, *shape), torch.full((m * b,), float(radius)), norm, generator=gen,
                                dtype=x.dtype, device=device)
            z = xs[:, None] + noise.reshape(m, b, *shape)
            if end == 0:
                z, b = xs[:, None], 1
            z = z.reshape(m * b, *shape).requires_grad_(True)
            out = model(z)
            r_rep = rs.repeat_interleave(b)
            for k in range(c):
                sel = eye[r_rep] - eye[k]  # row-wise e_ref - e_k: the gradient of f_ref - f_k
                (g,) = torch.autograd.grad(out, z, grad_outputs=sel, retain_graph=k < c - 1)
                gn = batch_norm(g.detach(), norm.dual).reshape(m, b).max(1).values
                run[:, k] = torch.maximum(run[:, k], gn.double())
            if end in curve_lip:
                curve_lip[end][s : s + m] = run
            start = end
        lip[s : s + m] = run
    curve = {k: _theorem3_bound(gaps, v, ref, correct, radius) for k, v in sorted(curve_lip.items())}
    lip = lip.scatter(1, ref[:, None], float("nan"))
    bound = _theorem3_bound(gaps, lip.nan_to_num(0.0), ref, correct, radius)
    return LipschitzMargin(bound, lip, gaps, ref, float(radius), int(samples), norm, curve)


def estimate_margins(
    model: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    estimator: str = "paper",
    norm: Norm | str = "l2",
    *,
    bounds: tuple[float, float] | None = None,
    radius: float = 5.0,
    samples: int = 128,
    seed: int = 0,
    engine_options: dict[str, Any] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Input margins w.r.t. ``labels`` and the mask of correctly classified samples, both (N,).

    ``estimator``: ``"exact"`` (affine models: ``marginkit.margins.affine_input_margin``), ``"lipschitz"``
    the Theorem 3 lower bound, ``"attack"`` the input-margin engine's upper bound (``inf`` where it
    failed), ``"auto"`` as everywhere in the package (exact for affine models, else attack) and
    ``"paper"`` the paper's choice (exact for affine models, else lipschitz). ``bounds`` is the
    input box (None: the whole space, as in the paper's closed forms; the engine needs a box and
    uses (0, 1) then). Margins of misclassified samples are returned as 0; use the mask.
    """
    check_estimator(estimator, ESTIMATORS)
    check_inputs(inputs)
    device = model_device(model)
    with torch.no_grad():
        logits = check_logits(model(inputs.to(device)), inputs.shape[0])
    labels = check_labels(labels, inputs.shape[0], logits.shape[1]).to(device)
    correct = (logits.argmax(1) == labels).cpu()
    estimator = _resolve(estimator, model, tuple(inputs.shape[1:]))
    if estimator == "exact":
        from ..margins import affine_input_margin

        margin = affine_input_margin(model, inputs, labels, norm, bounds=bounds).margin
    elif estimator == "lipschitz":
        margin = lipschitz_margin(model, inputs, labels, norm, radius=radius, samples=samples, seed=seed).bound
    else:
        from ..attacks import input_margin

        res = input_margin(model, inputs, labels, norm, bounds=bounds or (0.0, 1.0), **(engine_options or {}))
        margin = res.upper
    margin = margin.detach().double().cpu()
    return torch.where(correct, margin, torch.zeros_like(margin)), correct


def _summary(margin: torch.Tensor, correct: torch.Tensor) -> dict[str, Any]:
    m = margin[correct]
    finite = m[torch.isfinite(m)]
    return {"n": int(margin.numel()), "n_correct": int(correct.sum()), "accuracy": float(correct.double().mean()),
            "min_margin": float(m.min()) if m.numel() else float("nan"),
            "avg_margin": float(finite.mean()) if finite.numel() else float("nan"),
            "median_margin": float(finite.median()) if finite.numel() else float("nan"),
            "n_infinite": int((~torch.isfinite(m)).sum()),
            "margins": [float(v) for v in m.tolist()]}


class MarginTracker:
    """Trainer callback: minimum / average margin of correctly classified points on fixed subsets.

    ``splits`` maps a name (``"train"``, ``"test"``) to a fixed ``(x, y)`` subset. Records are taken at
    epochs that are multiples of ``every`` (epoch 0, the initial model, included) or listed in ``at``. Each record holds the summary statistics and every correct sample's margin (for the
    histograms of the paper's Figure 1b / 7 / 8). ``history`` is a list of dicts, one per (epoch, split).
    """

    def __init__(self, splits: dict[str, tuple[torch.Tensor, torch.Tensor]], *, every: int = 1,
                 at: Iterable[int] = (), estimator: str = "paper", norm: Norm | str = "l2",
                 bounds: tuple[float, float] | None = None, radius: float = 5.0, samples: int = 128, seed: int = 0,
                 engine_options: dict[str, Any] | None = None, path: str | os.PathLike | None = None) -> None:
        estimator = check_estimator(estimator, ESTIMATORS)
        if every < 0:
            raise ValueError(f"every must be >= 0, got {every}")
        self.splits = splits
        self.every = every
        self.at = set(int(a) for a in at)
        self.estimator = estimator
        self.norm = as_norm(norm)
        self.bounds = bounds
        self.radius = radius
        self.samples = samples
        self.seed = seed
        self.engine_options = engine_options
        self.path = os.fspath(path) if path is not None else None
        self.history: list[dict[str, Any]] = []

    def settings(self) -> dict[str, Any]:
        return {"estimator": self.estimator, "norm": str(self.norm), "bounds": self.bounds, "radius": self.radius,
                "samples": self.samples, "seed": self.seed, "every": self.every, "at": sorted(self.at),
                "splits": {k: int(v[0].shape[0]) for k, v in self.splits.items()}}

    def wants(self, epoch: int) -> bool:
        return epoch in self.at or (self.every > 0 and epoch % self.every == 0)

    def record(self, model: nn.Module, epoch: int) -> list[dict[str, Any]]:
        was_training = model.training
        model.eval()
        out = []
        try:
            for name, (x, y) in self.splits.items():
                t0 = time.perf_counter()
                est = _resolve(self.estimator, model, tuple(x.shape[1:]))
                margin, correct = estimate_margins(model, x, y, est, self.norm, bounds=self.bounds,
                                                   radius=self.radius, samples=self.samples, seed=self.seed,
                                                   engine_options=self.engine_options)
                rec = {"epoch": int(epoch), "split": name, "estimator": est, **_summary(margin, correct),
                       "seconds": time.perf_counter() - t0}
                out.append(rec)
        finally:
            model.train(was_training)
        self.history.extend(out)
        if self.path:
            self.save(self.path)
        return out

    def on_train_begin(self, trainer: Any) -> None:
        if self.wants(0) and not any(r["epoch"] == 0 for r in self.history):
            self.record(trainer.model, 0)

    def on_epoch_end(self, trainer: Any, epoch: int, logs: dict[str, Any]) -> None:
        if self.wants(epoch):
            recs = self.record(trainer.model, epoch)
            for r in recs:
                logs[f"{r['split']}_min_margin"] = r["min_margin"]
                logs[f"{r['split']}_avg_margin"] = r["avg_margin"]

    def frame(self):
        """The summary statistics as a pandas DataFrame (one row per epoch and split, no raw margins)."""
        import pandas as pd

        return pd.DataFrame([{k: v for k, v in r.items() if k != "margins"} for r in self.history])

    def save(self, path: str | os.PathLike) -> None:
        atomic_write_text(os.fspath(path), dumps({"settings": self.settings(), "history": self.history}, indent=None))


# --------------------------------------------------------------------------- the linear case (section 3)


def hard_margin_svm(x: np.ndarray, s: np.ndarray, bias: bool = False) -> tuple[np.ndarray, float]:
    """Hard-margin linear SVM, min ||w||^2 / 2 s.t. s_i (w^T x_i + b) >= 1, solved by Clarabel via cvxpy.

    ``s`` in {-1, +1}. Raises ``ValueError`` when the data are not linearly separable (infeasible).
    """
    import cvxpy as cp

    w = cp.Variable(x.shape[1])
    b = cp.Variable() if bias else 0.0
    problem = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(w)), [cp.multiply(s, x @ w + b) >= 1])
    problem.solve(solver=cp.CLARABEL)
    if problem.status not in ("optimal", "optimal_inaccurate"):
        raise ValueError(f"the hard-margin SVM is {problem.status}: the data are not linearly separable")
    return np.asarray(w.value, dtype=np.float64), float(b.value) if isinstance(b, cp.Variable) else 0.0  # type: ignore[arg-type]


@dataclass
class LinearDynamics:
    """Margins of GD-trained logistic regression over epochs, next to the hard-margin SVM's.

    ``curves``: one dict per recorded epoch (min / average margin on train and test, errors, loss).
    ``margins``: epoch -> train margins (signed, for histograms); ``svm``: the SVM's numbers and margins;
    ``adversarial``: epoch -> (k, *input_shape) minimal adversarial examples (eq. 7) of ``examples``;
    ``weight`` / ``bias``: the final GD iterate.
    """

    curves: list[dict[str, Any]]
    margins: dict[int, list[float]]
    svm: dict[str, Any]
    examples: torch.Tensor
    example_labels: torch.Tensor
    adversarial: dict[int, torch.Tensor]
    input_shape: tuple[int, ...]
    weight: torch.Tensor | None = None
    bias: float = 0.0
    settings: dict[str, Any] = field(default_factory=dict)

    def frame(self):
        import pandas as pd

        return pd.DataFrame(self.curves)

    def to_json(self) -> str:
        return dumps({"curves": self.curves, "svm": self.svm, "settings": self.settings,
                      "margins": {str(k): v for k, v in self.margins.items()}}, indent=None)


def _log_epochs(steps: int, per_decade: int = 6) -> list[int]:
    pts = np.unique(np.round(np.logspace(0, math.log10(max(steps, 1)), per_decade * max(1, int(math.log10(max(steps, 10)))) + 1)))
    return sorted(set(int(p) for p in pts if 1 <= p <= steps) | {steps})


def linear_margin_dynamics(
    dataset: str = "mnist5k",
    classes: Sequence[int | str] = (0, 1),
    *,
    epochs: int = 10000,
    lr: float | None = None,
    bias: bool = False,
    record_at: Sequence[int] | None = None,
    image_epochs: Sequence[int] | None = None,
    examples_per_class: int = 1,
    seed: int = 0,
    progress: bool = False,
) -> LinearDynamics:
    """Paper section 3 / Figure 1: full-batch gradient descent on the mean logistic loss of f(x) = w^T x (+ b).

    One epoch is one gradient step on the whole training set. ``lr`` defaults to 1 / beta with
    beta = lambda_max(X^T X) / (4 n) the smoothness constant of the loss (the "small constant step size"
    of Theorem 1). Margins are signed l2 distances to the decision boundary (no input box, as in the
    paper's closed form); min margin = min_i m_i, average margin = mean_i |m_i| (section 2). The SVM is
    solved exactly by :func:`hard_margin_svm`. The adversarial examples of ``image_epochs`` are the
    closest boundary points (eq. 7), read from ``affine_input_margin(..., return_delta=True)``.
    """
    from ..data import load_dataset
    from ..margins import affine_input_margin, feature_margin

    ds = load_dataset(dataset, classes=classes, seed=seed)
    if ds.num_classes != 2:
        raise ValueError(f"the linear case needs two classes, got {ds.num_classes}")
    xtr = ds.x_train.reshape(ds.x_train.shape[0], -1).double()
    xte = ds.x_test.reshape(ds.x_test.shape[0], -1).double()
    ytr, yte = ds.y_train.long(), ds.y_test.long()
    str_, ste = (2 * ytr - 1).double(), (2 * yte - 1).double()
    n, d = xtr.shape
    design = torch.cat([xtr, torch.ones(n, 1, dtype=torch.float64)], 1) if bias else xtr
    if lr is None:
        smooth = float(torch.linalg.matrix_norm(design, ord=2) ** 2) / (4 * n)
        lr = 1.0 / smooth
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(design.shape[1], generator=g, dtype=torch.float64) * 1e-3
    record = sorted(set(record_at or _log_epochs(epochs)) | {0})
    image_epochs = sorted(set(image_epochs or [e for e in (1, 10, 100, 1000, 10000, 100000) if e <= epochs] + [epochs]))
    # A few examples per class for the adversarial-example grid (the first ones of the training set).
    pick = torch.cat([torch.nonzero(ytr == k).squeeze(1)[:examples_per_class] for k in range(2)])
    ex, ex_y = ds.x_train[pick].double(), ytr[pick]

    def as_affine(th: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w = th[:d]
        b = th[d] if bias else torch.zeros((), dtype=torch.float64)
        # Two-class logits (0, w^T x + b): the margin formulas of marginkit.margins apply unchanged.
        return torch.stack([torch.zeros_like(w), w]), torch.stack([torch.zeros_like(b), b])

    def margins(th: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        a, c = as_affine(th)
        return feature_margin(x @ a.T + c, a, "l2", y)  # signed y (w^T x + b) / ||w||

    curves: list[dict[str, Any]] = []
    hist: dict[int, list[float]] = {}
    adv: dict[int, torch.Tensor] = {}
    steps = range(0, epochs + 1)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc="logistic regression (GD)", unit="epoch", mininterval=1.0)
    t0 = time.perf_counter()
    for t in steps:
        score = design @ theta
        loss = torch.nn.functional.softplus(-str_ * score).mean()
        if t in record:
            mtr, mte = margins(theta, xtr, ytr), margins(theta, xte, yte)
            curves.append({"epoch": t, "loss": float(loss), "train_error": float((mtr <= 0).double().mean()),
                           "test_error": float((mte <= 0).double().mean()),
                           "train_min_margin": float(mtr.min()), "train_avg_margin": float(mtr.abs().mean()),
                           "test_min_margin": float(mte.min()), "test_avg_margin": float(mte.abs().mean()),
                           "weight_norm": float(theta[:d].norm())})
            hist[t] = [float(v) for v in mtr.tolist()]
        if t in image_epochs and t > 0:
            res = affine_input_margin(as_affine(theta), ex.reshape(ex.shape[0], -1), None, "l2", bounds=None,
                                      return_delta=True)
            if res.delta is None:
                raise RuntimeError("affine_input_margin returned no perturbation although return_delta=True")
            adv[t] = (ex.reshape(ex.shape[0], -1) + res.delta).reshape(ex.shape).float()
        if t == epochs:
            break
        # Gradient of mean softplus(-s * score): -(1/n) X^T (s * sigmoid(-s * score)).
        grad = -(design.T @ (str_ * torch.sigmoid(-str_ * score))) / n
        theta = theta - lr * grad
    seconds = time.perf_counter() - t0

    w_svm, b_svm = hard_margin_svm(xtr.numpy(), str_.numpy(), bias=bias)
    th_svm = torch.as_tensor(np.append(w_svm, b_svm) if bias else w_svm, dtype=torch.float64)
    m_svm_tr, m_svm_te = margins(th_svm, xtr, ytr), margins(th_svm, xte, yte)
    cos = float(theta[:d] @ th_svm[:d] / (theta[:d].norm() * th_svm[:d].norm()))
    svm = {"train_min_margin": float(m_svm_tr.min()), "train_avg_margin": float(m_svm_tr.abs().mean()),
           "test_min_margin": float(m_svm_te.min()), "test_avg_margin": float(m_svm_te.abs().mean()),
           "test_error": float((m_svm_te <= 0).double().mean()), "cosine_to_final_lr": cos,
           "margins": [float(v) for v in m_svm_tr.tolist()]}
    settings = {"dataset": ds.name, "classes": [str(c) for c in classes], "dataset_fingerprint": ds.fingerprint(),
                "epochs": epochs, "lr": lr, "bias": bias, "seed": seed, "train_size": n, "test_size": int(xte.shape[0]),
                "solver": "cvxpy+CLARABEL", "seconds": seconds}
    return LinearDynamics(curves, hist, svm, ex.float(), ex_y, adv, tuple(ds.input_shape), theta[:d].clone(),
                          float(theta[d]) if bias else 0.0, settings)
