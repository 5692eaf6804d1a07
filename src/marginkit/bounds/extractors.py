"""A fixed feature extractor seen as a chain of affine maps, each optionally followed by a ReLU.

Section 3 of the fixed-feature-extractor paper writes f = f^(l) o ... o f^(1) with
f^(i)(z) = (k^(i) + L^(i) z)^+. This module turns the prefix of a PyTorch ``nn.Sequential`` (cut with
:func:`marginkit.models.truncate`) into that form:

* consecutive affine modules (Linear, Conv1d/2d, BatchNorm in eval mode, Flatten, Identity, Dropout in
  eval mode) are merged into ONE affine stage -- batch norm is thereby folded into the preceding
  linear/conv map (section 3.3);
* a ReLU closes the current stage (``relu=True``);
* anything else (max pooling, other activations) raises: the descent of section 3.2 only covers
  piecewise-linear maps whose pieces are ReLU sign patterns.

Each stage keeps the float64 copy of its modules, so a convolution can be used as a linear map
through forward / backward passes without materialising its (possibly huge) Toeplitz matrix: the
closed form of section 3.1 only needs the Gram matrix L^T L (n_in x n_in), see :meth:`AffineStage.gram`.
The dense matrix is built only when the ReLU descent needs it (:meth:`AffineStage.dense`).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..checks import check_model_mode
from ..models import list_layers, truncate

__all__ = ["AffineStage", "FeatureChain", "feature_chain", "analysis_layers"]

_AFFINE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d, nn.Flatten, nn.Identity, nn.Dropout)


@dataclass
class AffineStage:
    """z -> L z + k on flattened vectors (then a ReLU when ``relu``), backed by float64 modules."""

    module: nn.Module
    in_shape: tuple[int, ...]
    out_dim: int
    relu: bool
    _dense: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)
    _gram: np.ndarray | None = field(default=None, repr=False)

    @property
    def in_dim(self) -> int:
        return math.prod(self.in_shape)

    @torch.no_grad()
    def apply(self, z: torch.Tensor) -> torch.Tensor:
        """The affine map (without the ReLU) on a batch of flattened float64 vectors."""
        return self.module(z.reshape(-1, *self.in_shape)).reshape(z.shape[0], -1)

    @torch.no_grad()
    def bias(self) -> np.ndarray:
        return self.apply(torch.zeros(1, self.in_dim, dtype=torch.float64))[0].numpy()

    @torch.no_grad()
    def dense(self, chunk: int = 512) -> tuple[np.ndarray, np.ndarray]:
        """(L, k) as dense float64 arrays, built column block by column block from forward passes."""
        if self._dense is None:
            k = self.bias()
            cols = []
            for s in range(0, self.in_dim, chunk):
                e = torch.zeros(min(chunk, self.in_dim - s), self.in_dim, dtype=torch.float64)
                e[torch.arange(e.shape[0]), torch.arange(s, s + e.shape[0])] = 1.0
                cols.append((self.apply(e).numpy() - k).T)
            self._dense = (np.concatenate(cols, axis=1), k)
        return self._dense

    def gram(self, chunk: int = 256) -> np.ndarray:
        """L^T L (n_in x n_in), cached. Small maps go through the dense matrix; large ones (convolutions with
        many output channels) through forward passes and vector-Jacobian products, never holding L whole."""
        if self._gram is not None:
            return self._gram
        if self._dense is not None or self.out_dim * self.in_dim <= 4_000_000:
            L = self.dense()[0]
            self._gram = L.T @ L
            return self._gram
        n = self.in_dim
        out = np.empty((n, n))
        for s in range(0, n, chunk):
            b = min(chunk, n - s)
            e = torch.zeros(b, n, dtype=torch.float64)
            e[torch.arange(b), torch.arange(s, s + b)] = 1.0
            x0 = torch.zeros(b, n, dtype=torch.float64, requires_grad=True)
            with torch.enable_grad():
                y = self.module(x0.reshape(-1, *self.in_shape)).reshape(b, -1)
                ly = (self.apply(e) - self.apply(torch.zeros(1, n, dtype=torch.float64))).detach()
                (g,) = torch.autograd.grad((y * ly).sum(), x0)
            out[s : s + b] = g.numpy()  # row s+i is L^T L e_{s+i}
        self._gram = 0.5 * (out + out.T)
        return self._gram


@dataclass
class FeatureChain:
    """f = stage_m o ... o stage_1 on flattened inputs; ``name`` is the layer it ends at."""

    name: str
    input_shape: tuple[int, ...]
    stages: list[AffineStage]

    @property
    def input_dim(self) -> int:
        return math.prod(self.input_shape)

    @property
    def is_identity(self) -> bool:
        return not self.stages

    @property
    def is_affine(self) -> bool:
        return all(not s.relu for s in self.stages)

    @property
    def num_relus(self) -> int:
        return sum(s.out_dim for s in self.stages if s.relu)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Features of a batch of flattened inputs (float64)."""
        z = x.reshape(x.shape[0], -1).to(torch.float64)
        for st in self.stages:
            z = st.apply(z)
            if st.relu:
                z = z.clamp_min(0)
        return z

    def lipschitz(self, norm: str) -> float:
        """Upper bound on the Lipschitz constant of f from the input ``norm`` to l2 on the features.

        First stage: exact operator norm for l2 (largest singular value), column-norm bounds for l1
        (max_j ||L e_j||_2) and linf (sum_j ||L e_j||_2); later stages: spectral norms (ReLU is
        1-Lipschitz). Used only to prune pairs that cannot collide (a certified lower bound on eps_f).
        """
        if not self.stages:
            return 1.0
        lip = 1.0
        for i, st in enumerate(self.stages):
            if i == 0 and norm != "l2":
                col = np.sqrt(np.clip(np.diag(st.gram()), 0, None))
                lip *= float(col.max() if norm == "l1" else col.sum())
            else:
                g = st.gram()
                lip *= float(np.sqrt(max(np.linalg.eigvalsh(g)[-1], 0.0)))
        return lip


def _float64(module: nn.Module) -> nn.Module:
    m = copy.deepcopy(module).to(device="cpu", dtype=torch.float64)
    m.eval()
    return m


def feature_chain(model: nn.Module, layer: str | int | None, input_shape: tuple[int, ...]) -> FeatureChain:
    """The prefix of ``model`` up to ``layer`` (None or "input": the identity) as a :class:`FeatureChain`.

    Raises ``ValueError`` naming the module when the prefix contains a layer the collision search cannot
    handle (max pooling, sigmoid, ...), and warns (via :func:`check_model_mode`) on a train-mode model.
    """
    check_model_mode(model)
    input_shape = tuple(int(s) for s in input_shape)
    if layer is None or layer == "input":
        return FeatureChain("input", input_shape, [])
    prefix = truncate(model, layer)
    name = list_layers(prefix)[-1]
    stages: list[AffineStage] = []
    group: list[nn.Module] = []
    shape = input_shape
    group_in = shape

    def close(relu: bool) -> None:
        nonlocal group, group_in
        if not group and not relu:
            return
        mod = _float64(nn.Sequential(*group)) if group else nn.Sequential(nn.Flatten())
        with torch.no_grad():
            out = mod(torch.zeros(1, *group_in, dtype=torch.float64))
        stages.append(AffineStage(mod, group_in, int(out[0].numel()), relu))
        group, group_in = [], shape

    for mname, mod in prefix.named_children():
        if isinstance(mod, nn.ReLU):
            if not group and stages and stages[-1].relu:
                continue  # ReLU(ReLU(z)) == ReLU(z)
            close(relu=True)
            continue
        if not isinstance(mod, _AFFINE):
            raise ValueError(
                f"layer {mname!r} ({type(mod).__name__}) is not supported by collision finding: only Linear, Conv, "
                "BatchNorm (eval), Flatten, Dropout (eval) and ReLU are (max pooling is future work in the paper); "
                "analyse a layer before it")
        if not group:
            group_in = shape
        group.append(mod)
        with torch.no_grad():
            probe = _float64(nn.Sequential(*group))(torch.zeros(1, *group_in, dtype=torch.float64))
        shape = tuple(probe.shape[1:])
    close(relu=False)
    # A chain of only Flatten/Identity is the identity on flattened inputs.
    if all(not st.relu for st in stages) and all(
        all(isinstance(m, (nn.Flatten, nn.Identity, nn.Dropout)) for m in st.module.modules() if not isinstance(m, nn.Sequential))
        for st in stages):
        return FeatureChain(name, input_shape, [])
    return FeatureChain(name, input_shape, stages)


def analysis_layers(model: nn.Module) -> list[str]:
    """The cut points of a layer-wise analysis: "input", then every layer up to the penultimate one
    (Flatten/Identity/Dropout are skipped: they do not change the representation). The list stops before
    the first layer collision finding cannot handle (e.g. max pooling), with a warning."""
    import warnings

    from ..checks import MarginkitWarning

    names = ["input"]
    children = list(model.named_children())
    for mname, mod in children[:-1]:
        if isinstance(mod, (nn.Flatten, nn.Identity, nn.Dropout)):
            continue
        if not isinstance(mod, _AFFINE + (nn.ReLU,)):
            warnings.warn(f"layer-wise bounds stop before {mname!r} ({type(mod).__name__}): not supported by "
                          "collision finding", MarginkitWarning, stacklevel=2)
            break
        names.append(mname)
    return names
