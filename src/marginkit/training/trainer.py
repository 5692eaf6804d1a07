"""One seeded, CPU-fast trainer for every training method, with per-epoch callbacks and checkpoints."""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, Sequence

import torch
from torch import nn

from ..checks import model_device
from ..data.dataset import Dataset
from ..models.checkpoint import load_torch_file
from ..results.provenance import atomic_write_bytes
from .methods import Method, Standard, method_settings

__all__ = ["TrainConfig", "TrainResult", "Callback", "Trainer", "train_model", "evaluate_accuracy"]


@dataclass
class TrainConfig:
    """Optimisation settings. ``schedule`` is ``"none"`` or ``"cosine"`` (per-step cosine decay)."""

    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    optimizer: str = "adam"
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    schedule: str = "none"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 0 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError(f"need epochs >= 0, batch_size >= 1 and lr > 0, got {self}")
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer must be 'adam' or 'sgd', got {self.optimizer!r}")
        if self.schedule not in ("none", "cosine"):
            raise ValueError(f"schedule must be 'none' or 'cosine', got {self.schedule!r}")


class Callback(Protocol):
    """Called after every epoch with the trainer and that epoch's logs (loss, accuracies, seconds).

    A callback may also define ``on_train_begin(trainer)``, called once before the first epoch of a
    fresh (not resumed) run, e.g. to record the initial model.
    """

    def on_epoch_end(self, trainer: "Trainer", epoch: int, logs: dict[str, Any]) -> None: ...


@dataclass
class TrainResult:
    model: nn.Module
    history: list[dict[str, Any]]
    train_accuracy: float
    test_accuracy: float
    seconds: float
    settings: dict[str, Any] = field(default_factory=dict)


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> float:
    """Fraction of ``x`` the model classifies as ``y`` (model put in eval mode and restored)."""
    if x.shape[0] == 0:
        return float("nan")
    was_training = model.training
    model.eval()
    device = model_device(model)
    correct = 0
    for s in range(0, x.shape[0], batch_size):
        correct += int((model(x[s : s + batch_size].to(device)).argmax(1) == y[s : s + batch_size].to(device)).sum())
    model.train(was_training)
    return correct / x.shape[0]


class Trainer:
    """Mini-batch training of ``model`` on ``dataset.train`` with a pluggable :class:`Method`.

    Deterministic given ``config.seed`` on CPU (the batch order comes from a private generator).
    With ``checkpoint_dir`` the state after every epoch is written atomically to ``last.pt`` there and
    a new Trainer on the same directory resumes from it.
    """

    def __init__(
        self,
        model: nn.Module,
        dataset: Dataset,
        config: TrainConfig | None = None,
        method: Method | None = None,
        callbacks: Sequence[Callback] = (),
        checkpoint_dir: str | os.PathLike | None = None,
        progress: bool = False,
    ) -> None:
        self.model = model
        self.dataset = dataset
        self.config = config or TrainConfig()
        self.method = method or Standard()
        self.callbacks = list(callbacks)
        self.checkpoint_dir = os.fspath(checkpoint_dir) if checkpoint_dir is not None else None
        self.progress = progress
        self.history: list[dict[str, Any]] = []
        self.epoch = 0
        self.device = model_device(model)
        cfg = self.config
        params = [p for p in model.parameters() if p.requires_grad]
        if cfg.optimizer == "adam":
            self.optimizer: torch.optim.Optimizer = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        else:
            self.optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                                             weight_decay=cfg.weight_decay)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self._resume()

    def settings(self) -> dict[str, Any]:
        return {"config": asdict(self.config), "method": method_settings(self.method), "dataset": self.dataset.name,
                "dataset_fingerprint": self.dataset.fingerprint()}

    def _steps_per_epoch(self) -> int:
        return -(-self.dataset.x_train.shape[0] // self.config.batch_size)

    def _lr_at(self, step: int) -> float:
        if self.config.schedule == "none":
            return self.config.lr
        total = max(1, self.config.epochs * self._steps_per_epoch())
        return 0.5 * self.config.lr * (1 + math.cos(math.pi * min(step, total) / total))

    def _ckpt_path(self) -> str | None:
        return os.path.join(self.checkpoint_dir, "last.pt") if self.checkpoint_dir else None

    def _resume(self) -> None:
        path = self._ckpt_path()
        if not path or not os.path.exists(path):
            return
        state = load_torch_file(path, weights_only=False, what="training checkpoint", map_location=self.device)
        if state.get("settings") != self.settings():
            raise ValueError(f"{path} was written with other training settings; use another checkpoint_dir or delete it")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        torch.random.set_rng_state(state["torch_rng"])
        self.epoch = state["epoch"]
        self.history = state["history"]

    def _save(self) -> None:
        path = self._ckpt_path()
        if not path:
            return
        import io

        buf = io.BytesIO()
        torch.save({"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                    "generator": self.generator.get_state(), "torch_rng": torch.random.get_rng_state(),
                    "epoch": self.epoch, "history": self.history, "settings": self.settings()}, buf)
        atomic_write_bytes(path, buf.getvalue())

    def fit(self) -> TrainResult:
        """Train up to ``config.epochs`` (continuing from a resumed epoch) and return the result."""
        cfg = self.config
        x, y = self.dataset.x_train, self.dataset.y_train
        n = x.shape[0]
        start = time.perf_counter()
        if self.epoch == 0:
            torch.manual_seed(cfg.seed)  # methods that draw random numbers (PGD starts) become reproducible
            for cb in self.callbacks:
                begin = getattr(cb, "on_train_begin", None)  # optional hook: see the initial model (epoch 0)
                if callable(begin):
                    begin(self)
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=cfg.epochs, initial=self.epoch, desc=f"train {self.method.name}", unit="epoch")
        step = self.epoch * self._steps_per_epoch()
        while self.epoch < cfg.epochs:
            t0 = time.perf_counter()
            self.model.train()
            perm = torch.randperm(n, generator=self.generator)
            total_loss, seen = 0.0, 0
            for s in range(0, n, cfg.batch_size):
                idx = perm[s : s + cfg.batch_size]
                xb, yb = x[idx].to(self.device), y[idx].to(self.device)
                for group in self.optimizer.param_groups:
                    group["lr"] = self._lr_at(step)
                loss = self.method.loss(self.model, xb, yb)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"training loss became {loss.item()} at epoch {self.epoch + 1}; lower the learning rate")
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                total_loss += float(loss.detach()) * idx.numel()
                seen += idx.numel()
                step += 1
            self.model.eval()
            self.epoch += 1
            logs = {"epoch": self.epoch, "loss": total_loss / max(seen, 1),
                    "train_accuracy": evaluate_accuracy(self.model, x, y),
                    "test_accuracy": evaluate_accuracy(self.model, *self.dataset.split("test")),
                    "seconds": time.perf_counter() - t0}
            self.history.append(logs)
            for cb in self.callbacks:
                cb.on_epoch_end(self, self.epoch, logs)
            self._save()
            if bar is not None:
                bar.set_postfix(loss=f"{logs['loss']:.3f}", test_acc=f"{logs['test_accuracy']:.3f}")
                bar.update(1)
        if bar is not None:
            bar.close()
        self.model.eval()
        return TrainResult(
            model=self.model, history=self.history,
            train_accuracy=evaluate_accuracy(self.model, x, y),
            test_accuracy=evaluate_accuracy(self.model, *self.dataset.split("test")),
            seconds=time.perf_counter() - start, settings=self.settings(),
        )


def train_model(model: nn.Module, dataset: Dataset, config: TrainConfig | None = None, method: Method | None = None,
                callbacks: Sequence[Callback] = (), checkpoint_dir: str | os.PathLike | None = None,
                progress: bool = False) -> TrainResult:
    """Train ``model`` on ``dataset`` (see :class:`Trainer`)."""
    return Trainer(model, dataset, config, method, callbacks, checkpoint_dir, progress).fit()
