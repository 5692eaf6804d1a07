"""Learned pseudo-margin for weakly margin-consistent models (seed paper section 3.3, appendix B.4).

A small MLP maps a sample's representation -- the penultimate features h(x) by default, as the paper
describes, or the logits -- to a pseudo-margin trained by mean-squared error (pointwise
learning-to-rank) on a monotone transform of estimated input margins. Being monotone, the transform
keeps the ranking, which is all that detection and Kendall tau look at:

    t(d) = min(sqrt(d) / sqrt(d_cap), 1)    (``transform="sqrt"``, the paper's code uses sqrt(d))

with d_cap the largest finite training margin, so that targets fit the sigmoid output in [0, 1].
A failed attack (d = inf) gets target 1: it is at least as robust as anything measured.

Unlike the authors' code, the input is the feature representation (``source="features"``), any number
of classes works, and a held-out validation split chooses the epoch (best validation MSE).
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..checks import check_inputs
from ..models.checkpoint import load_torch_file
from .metrics import as_margin_array

__all__ = ["PseudoMarginConfig", "PseudoMargin", "representation"]

FORMAT = "marginkit-pseudo-margin"
_TRANSFORMS = ("sqrt", "log1p", "identity")


@dataclass
class PseudoMarginConfig:
    """Architecture and training of the pseudo-margin network (defaults follow appendix B.4 loosely:
    dense layers of 512 with ReLU and a sigmoid output; Adam; MSE)."""

    source: str = "features"  # "features" (h(x), penultimate layer) or "logits"
    hidden: tuple[int, ...] = (512, 512, 512)
    output: str = "sigmoid"  # "sigmoid" (targets in [0, 1]) or "linear"
    transform: str = "sqrt"  # monotone target transform: "sqrt", "log1p" or "identity"
    epochs: int = 200
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    val_fraction: float = 0.2
    patience: int = 40  # epochs without validation improvement before stopping
    standardize: bool = True  # z-score the inputs with training statistics
    seed: int = 0

    def __post_init__(self) -> None:
        self.hidden = tuple(int(h) for h in self.hidden)
        if self.source not in ("features", "logits"):
            raise ValueError(f"source must be 'features' or 'logits', got {self.source!r}")
        if self.output not in ("sigmoid", "linear"):
            raise ValueError(f"output must be 'sigmoid' or 'linear', got {self.output!r}")
        if self.transform not in _TRANSFORMS:
            raise ValueError(f"transform must be one of {_TRANSFORMS}, got {self.transform!r}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must lie in (0, 1), got {self.val_fraction}")
        if any(h < 1 for h in self.hidden) or self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError("hidden sizes, epochs and batch_size must be >= 1 and lr > 0")


def _build_net(in_dim: int, cfg: PseudoMarginConfig) -> nn.Sequential:
    layers: list[nn.Module] = []
    prev = in_dim
    for h in cfg.hidden:
        layers += [nn.Linear(prev, h), nn.ReLU()]
        prev = h
    layers.append(nn.Linear(prev, 1))
    if cfg.output == "sigmoid":
        layers.append(nn.Sigmoid())
    return nn.Sequential(*layers)


@torch.no_grad()
def representation(model: nn.Module, inputs: torch.Tensor, source: str = "features", batch_size: int = 1024) -> torch.Tensor:
    """The representation a pseudo-margin reads: penultimate features h(x) or logits, shape (N, m)."""
    from ..margins import output_margins

    out = output_margins(model, inputs, batch_size=batch_size, keep_features=(source == "features"))
    if source == "features":
        if out.features is None:
            raise TypeError("the model has no linear head to split off, so it has no feature representation; "
                            "use source='logits' or give the model marginkit_split()")
        return out.features
    return out.logits


class PseudoMargin:
    """A fitted pseudo-margin: network, input statistics and target transform. Save with :meth:`save`."""

    def __init__(self, net: nn.Sequential, config: PseudoMarginConfig, in_mean: torch.Tensor, in_std: torch.Tensor,
                 cap: float, history: dict[str, list[float]] | None = None, info: dict[str, Any] | None = None) -> None:
        self.net = net.eval()
        self.config = config
        self.in_mean = in_mean
        self.in_std = in_std
        self.cap = float(cap)
        self.history = history or {"train_mse": [], "val_mse": []}
        self.info = info or {}

    # -- target transform ---------------------------------------------------------------------
    @staticmethod
    def _raw(d: np.ndarray, transform: str) -> np.ndarray:
        with np.errstate(over="ignore"):
            if transform == "sqrt":
                return np.sqrt(d)
            if transform == "log1p":
                return np.log1p(d)
            if transform == "identity":
                return d
        raise KeyError(transform)

    def target(self, input_margin: Any) -> np.ndarray:
        """Training target of each input margin: monotone in d_in, in [0, 1]; inf -> 1."""
        d = as_margin_array(input_margin)
        t = self._raw(d, self.config.transform) / self._raw(np.array([self.cap]), self.config.transform)[0]
        return np.minimum(np.where(np.isinf(d), 1.0, t), 1.0)

    # -- fitting --------------------------------------------------------------------------------
    @classmethod
    def fit(cls, features: torch.Tensor, input_margin: Any, config: PseudoMarginConfig | None = None,
            progress: bool = False) -> "PseudoMargin":
        """Fit on representations ``features`` (N, m) and estimated input margins (N,).

        A fraction ``config.val_fraction`` is held out (seeded permutation); the weights of the epoch
        with the lowest validation MSE are kept.
        """
        cfg = config or PseudoMarginConfig()
        check_inputs(features, "features")
        feats = features.detach().reshape(features.shape[0], -1).float()
        d = as_margin_array(input_margin)
        if len(d) != feats.shape[0]:
            raise ValueError(f"input_margin has {len(d)} values for {feats.shape[0]} feature rows")
        finite = d[np.isfinite(d)]
        if len(finite) == 0 or finite.max() <= 0:
            raise ValueError("a pseudo-margin needs some positive finite input margins to learn from")
        n = feats.shape[0]
        n_val = max(1, int(round(cfg.val_fraction * n)))
        if n - n_val < 2:
            raise ValueError(f"too few samples ({n}) to fit a pseudo-margin with a validation split")
        gen = torch.Generator().manual_seed(cfg.seed)
        perm = torch.randperm(n, generator=gen)
        val_idx, tr_idx = perm[:n_val], perm[n_val:]
        dev = feats.device
        mean = feats[tr_idx].mean(0) if cfg.standardize else torch.zeros(feats.shape[1], device=dev)
        std = feats[tr_idx].std(0).clamp_min(1e-6) if cfg.standardize else torch.ones(feats.shape[1], device=dev)
        cap = float(finite.max())
        torch.manual_seed(cfg.seed)
        net = _build_net(feats.shape[1], cfg).to(dev)
        pm = cls(net, cfg, mean, std, cap)
        y = torch.as_tensor(pm.target(d), dtype=torch.float32, device=dev)
        x = (feats - mean) / std
        opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        best, best_state, since = math.inf, None, 0
        loss_fn = nn.MSELoss()
        epochs = range(cfg.epochs)
        if progress:
            from tqdm.auto import tqdm

            epochs = tqdm(epochs, desc="pseudo-margin", leave=False)
        for _ in epochs:
            net.train()
            order = tr_idx[torch.randperm(len(tr_idx), generator=gen)].to(dev)
            total = 0.0
            for start in range(0, len(order), cfg.batch_size):
                b = order[start : start + cfg.batch_size]
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(net(x[b]).squeeze(1), y[b])
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(b)
            net.eval()
            with torch.no_grad():
                val = float(loss_fn(net(x[val_idx.to(dev)]).squeeze(1), y[val_idx.to(dev)]))
            pm.history["train_mse"].append(total / len(order))
            pm.history["val_mse"].append(val)
            if val < best - 1e-9:
                best, since = val, 0
                best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
            else:
                since += 1
                if since >= cfg.patience:
                    break
        if best_state is not None:
            net.load_state_dict(best_state)
        net.eval()
        pm.info = {"n_train": int(len(tr_idx)), "n_val": int(n_val), "best_val_mse": best,
                   "epochs_run": len(pm.history["val_mse"]), "val_indices": val_idx.tolist(), "cap": cap,
                   "n_infinite_margin": int(np.isinf(d).sum())}
        return pm

    @classmethod
    def fit_model(cls, model: nn.Module, inputs: torch.Tensor, input_margin: Any,
                  config: PseudoMarginConfig | None = None, progress: bool = False) -> "PseudoMargin":
        """Fit on the representation of ``inputs`` read from ``model`` (see :func:`representation`)."""
        cfg = config or PseudoMarginConfig()
        return cls.fit(representation(model, inputs, cfg.source), input_margin, cfg, progress)

    # -- scoring ----------------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, features: torch.Tensor) -> torch.Tensor:
        """Pseudo-margin (in target units, larger = more robust) of representations (N, m)."""
        check_inputs(features, "features")
        feats = features.reshape(features.shape[0], -1).float()
        if feats.shape[1] != self.in_mean.shape[0]:
            raise ValueError(f"features have {feats.shape[1]} dims but the pseudo-margin was fitted on {self.in_mean.shape[0]}")
        dev = next(self.net.parameters()).device
        feats = feats.to(dev)
        return self.net((feats - self.in_mean.to(dev)) / self.in_std.to(dev)).squeeze(1)

    def predict_margin(self, features: torch.Tensor) -> torch.Tensor:
        """Pseudo-margin mapped back to input-margin units through the inverse target transform."""
        t = self.predict(features).clamp_min(0).double() * float(self._raw(np.array([self.cap]), self.config.transform)[0])
        inv = {"sqrt": lambda v: v**2, "log1p": torch.expm1, "identity": lambda v: v}[self.config.transform]
        return inv(t)

    def score(self, model: nn.Module, inputs: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
        """Pseudo-margin of ``inputs`` with one forward pass of ``model`` (the deployment path)."""
        return self.predict(representation(model, inputs, self.config.source, batch_size))

    def to(self, device: str | torch.device) -> "PseudoMargin":
        self.net.to(device)
        return self

    # -- persistence ------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        cfg = asdict(self.config)
        cfg["hidden"] = list(cfg["hidden"])
        info = {k: v for k, v in self.info.items() if k != "val_indices"}
        return {"format": FORMAT, "version": 1, "config": cfg,
                "state_dict": {k: v.detach().cpu() for k, v in self.net.state_dict().items()},
                "in_mean": self.in_mean.detach().cpu(), "in_std": self.in_std.detach().cpu(), "cap": self.cap,
                "history": self.history, "info": info}

    @classmethod
    def from_state(cls, payload: dict[str, Any]) -> "PseudoMargin":
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise ValueError("not a marginkit pseudo-margin (missing format header)")
        cfg = PseudoMarginConfig(**{**payload["config"], "hidden": tuple(payload["config"]["hidden"])})
        net = _build_net(int(payload["in_mean"].shape[0]), cfg)
        net.load_state_dict(payload["state_dict"])
        return cls(net, cfg, payload["in_mean"], payload["in_std"], payload["cap"], payload.get("history"), payload.get("info"))

    def save(self, path: str | os.PathLike) -> str:
        """Write the fitted pseudo-margin (plain tensors and numbers, loadable with weights_only=True)."""
        from ..results import atomic_write_bytes

        buf = io.BytesIO()
        torch.save(self.state(), buf)
        atomic_write_bytes(path, buf.getvalue())
        return os.fspath(path)

    @classmethod
    def load(cls, path: str | os.PathLike, map_location: str | torch.device = "cpu") -> "PseudoMargin":
        if not os.path.exists(path):
            raise FileNotFoundError(f"no pseudo-margin file at {path}")
        payload = load_torch_file(path, what="pseudo-margin file", map_location=map_location)
        return cls.from_state(payload)

    def __repr__(self) -> str:
        return (f"PseudoMargin(source={self.config.source!r}, hidden={self.config.hidden}, transform={self.config.transform!r}, "
                f"best_val_mse={self.info.get('best_val_mse')})")
