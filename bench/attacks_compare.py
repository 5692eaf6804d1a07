"""marginkit's presets against the stored public minimal-norm attacks on the same points: bench/attacks.md.

    OMP_NUM_THREADS=1 python bench/attacks_compare.py --models mlp,cnn,mlp-at --norms l2,linf

The peers (adv-lib, torchattacks, foolbox) are not run here: ``bench/attacks_peers.py`` ran them once, at
their documented settings and at one long budget, and stored their per-sample norms, passes and wall times
in bench/reference/peers/. This script runs every marginkit preset on the same points (the stored indices)
and, in the same run, one cheap peer again (adv-lib DeepFool) as a clock: the ratio of its time now to its
stored time says how much the machine's load moved between the two runs.

Every output is judged the same way: a point counts only if it lies in the [0, 1] box (1e-6 tolerance) and
a float64 copy of the model classifies it differently from the clean prediction; its norm is computed in
float64. "ratio" is the per-sample norm divided by the reference: the best norm any stored peer or any
preset found on that sample (failures count as inf). Passes = forward + backward rows per sample, counted
by a wrapper around the model. One torch thread for everything.

Peer wrappers (``peers``) are shared with ``bench/attacks_peers.py``. adv-lib imports torchvision and visdom
at import time; neither is usable here, so both are stubbed (the attacks used do not touch them).
"""

from __future__ import annotations

import argparse
import copy
import glob
import json
import os
import sys
import time
import types
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd
import torch
from torch import nn


def _stub_modules() -> None:
    class Stub(types.ModuleType):
        def __getattr__(self, name):
            if name.startswith("__"):
                raise AttributeError(name)
            return Stub(f"{self.__name__}.{name}")

        def __call__(self, *a, **k):
            return Stub("call")

    for name in ["torchvision", "torchvision.models", "torchvision.transforms", "visdom"]:
        sys.modules.setdefault(name, Stub(name))


class Counted(nn.Module):
    """Counts forward rows and backward rows that flow through the model output."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.rows = 0

    def forward(self, x):
        out = self.model(x)
        self.rows += x.shape[0]
        if out.requires_grad:
            out.register_hook(self._count)
        return out

    def _count(self, g):
        self.rows += g.shape[-2] if g.dim() >= 2 else 1
        return g


@dataclass
class Run:
    name: str
    library: str
    setting: str
    fn: Callable


def peers(norm: str, num_classes: int, long_steps: int | None = None) -> list[Run]:
    """Peer attacks at their documented settings and, with ``long_steps``, the iterative ones at that many steps."""
    _stub_modules()
    import adv_lib.attacks as al
    import foolbox as fb
    import torchattacks as ta

    p = {"l2": 2, "linf": float("inf"), "l1": 1}[norm]
    runs: list[Run] = []

    def fbrun(attack):
        def f(m, x, y):
            fm = fb.PyTorchModel(m, bounds=(0, 1))
            _, clipped, _ = attack(fm, x, y, epsilons=None)
            return clipped
        return f

    def add(key, lib, default_steps, make):
        runs.append(Run(key, lib, f"default ({default_steps} steps)", make(default_steps)))
        if long_steps is not None and long_steps != default_steps:
            runs.append(Run(key, lib, f"long ({long_steps} steps)", make(long_steps)))

    add("fmn", "adv-lib", 10, lambda s: (lambda m, x, y: al.fmn(m, x, y, norm=p, steps=s)))
    if norm == "l2":
        add("ddn", "adv-lib", 100, lambda s: (lambda m, x, y: al.ddn(m, x, y, steps=s, levels=None)))
        add("alma", "adv-lib", 1000, lambda s: (lambda m, x, y: al.alma(m, x, y, distance="l2", num_steps=s)))
    if norm == "l1":
        add("alma", "adv-lib", 1000, lambda s: (lambda m, x, y: al.alma(m, x, y, distance="l1", num_steps=s)))
    add("fab", "adv-lib", 100, lambda s: (lambda m, x, y: al.fab(m, x, y, norm=p, n_iter=s)))
    add("fab-t", "adv-lib", 100, lambda s: (lambda m, x, y: al.fab(m, x, y, norm=p, n_iter=s, targeted_restarts=True)))
    if norm in ("l2", "linf"):
        runs.append(Run("df", "adv-lib", "default (100 steps)", lambda m, x, y: al.df(m, x, y, norm=p)))
        tnorm = "L2" if norm == "l2" else "Linf"
        add("FAB", "torchattacks", 10, lambda s: (lambda m, x, y: ta.FAB(m, norm=tnorm, eps=1e3, steps=s, n_classes=num_classes)(x, y)))
    if norm == "l2":
        runs.append(Run("DeepFool", "torchattacks", "default (50 steps)", lambda m, x, y: ta.DeepFool(m)(x, y)))
        add("FMN", "foolbox", 100, lambda s: fbrun(fb.attacks.L2FMNAttack(steps=s)))
        add("DDN", "foolbox", 100, lambda s: fbrun(fb.attacks.DDNAttack(steps=s)))
        runs.append(Run("DeepFool", "foolbox", "default (50 steps)", fbrun(fb.attacks.L2DeepFoolAttack())))
        runs.append(Run("CW", "foolbox", "9 x 250 steps (documented 9 x 10000)",
                        fbrun(fb.attacks.L2CarliniWagnerAttack(binary_search_steps=9, steps=250))))
    elif norm == "linf":
        add("FMN", "foolbox", 100, lambda s: fbrun(fb.attacks.LInfFMNAttack(steps=s)))
        runs.append(Run("DeepFool", "foolbox", "default (50 steps)", fbrun(fb.attacks.LinfDeepFoolAttack())))
    else:
        add("FMN", "foolbox", 100, lambda s: fbrun(fb.attacks.L1FMNAttack(steps=s)))
    return runs


def judge(model64: nn.Module, x: torch.Tensor, y: torch.Tensor, adv: torch.Tensor, norm: str) -> np.ndarray:
    """Float64 norm of each adversarial that is in the box and flips in float64; inf otherwise."""
    from marginkit.norms import batch_norm

    adv = adv.detach().to(torch.float64)
    ok = torch.isfinite(adv).reshape(adv.shape[0], -1).all(1)
    adv = torch.nan_to_num(adv)
    inside = ((adv >= -1e-6) & (adv <= 1 + 1e-6)).reshape(adv.shape[0], -1).all(1)
    with torch.no_grad():
        flips = model64(adv).argmax(1) != y
    d = batch_norm(adv - x.double(), norm)
    good = ok & inside & flips & (d > 0)
    return torch.where(good, d, torch.full_like(d, float("inf"))).numpy()


def adversarially_trained_mlp(seed: int = 0):
    """An l2-PGD-trained MLP: the training helper's "pgd" method if registered, else a local PGD loop."""
    from marginkit.training import available_methods, demo_model

    if "pgd" in available_methods():
        model, ck = demo_model("mlp", method="pgd", seed=seed)
        return model.eval(), (f"demo_model('mlp', method='pgd') (training helper's PGD-AT defaults: "
                              f"{ck.metadata.get('method_params') or 'l2, eps 1.5, 7 steps'}; test accuracy "
                              f"{ck.metadata.get('test_accuracy', float('nan')):.3f})")
    return _local_pgd_mlp(seed), "local l2 PGD loop in bench/attacks_compare.py (eps=1.0, 7 steps, 15 epochs)"


def _local_pgd_mlp(seed: int) -> nn.Module:
    from marginkit.data import load_dataset
    from marginkit.models import ModelSpec, build_model
    from marginkit.models.checkpoint import load_checkpoint, save_checkpoint
    from marginkit.norms import project_ball, steepest_direction

    path = os.path.join("runs", "models", f"bench-attacks-mlp-l2pgd-seed{seed}.pt")
    if os.path.exists(path):
        return load_checkpoint(path)[0].eval()
    ds = load_dataset("mnist5k", seed=seed)
    spec = ModelSpec("mlp", ds.input_shape, ds.num_classes, hidden=256, depth=2)
    model = build_model(spec, seed=seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    eps, steps, alpha = 1.0, 7, 0.25
    for epoch in range(15):
        perm = torch.randperm(ds.x_train.shape[0], generator=g)
        for i in range(0, len(perm), 128):
            xb, yb = ds.x_train[perm[i:i + 128]], ds.y_train[perm[i:i + 128]]
            model.eval()
            delta = torch.zeros_like(xb)
            for _ in range(steps):
                delta.requires_grad_(True)
                loss = nn.functional.cross_entropy(model(xb + delta), yb)
                (grad,) = torch.autograd.grad(loss, delta)
                delta = project_ball(delta.detach() + alpha * steepest_direction(grad, "l2"), eps, "l2")
                delta = (xb + delta).clamp(0, 1) - xb
            model.train()
            opt.zero_grad()
            nn.functional.cross_entropy(model(xb + delta), yb).backward()
            opt.step()
    model.eval()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_checkpoint(path, model, spec, {"method": "local l2 PGD", "eps": eps, "steps": steps, "epochs": 15})
    return model


def load_models(names: list[str]) -> tuple[dict[str, nn.Module], dict[str, str]]:
    """The demo models by name ("linear", "mlp", "cnn", "mlp-at"), in eval mode, and a note per model."""
    from marginkit.training import demo_model

    models: dict[str, nn.Module] = {}
    notes: dict[str, str] = {}
    for name in names:
        if name == "mlp-at":
            models[name], notes[name] = adversarially_trained_mlp()
        else:
            models[name] = demo_model(name)[0].eval()
            notes[name] = f"demo_model({name!r})"
    return models, notes


def select_points(models: dict[str, nn.Module], points: int, offset: int = 0):
    """The first ``points`` mnist5k test points (after ``offset``) that every model classifies correctly:
    (indices into the test split, inputs, labels)."""
    from marginkit.data import load_dataset

    x_test, y_test = load_dataset("mnist5k").split("test")
    with torch.no_grad():
        correct = torch.stack([m(x_test).argmax(1) == y_test for m in models.values()]).all(0)
    idx = correct.nonzero().squeeze(1)[offset: offset + points]
    return idx, x_test[idx], y_test[idx]


PRESETS = ("fast", "default", "thorough")
# The speed targets: the peer configurations each preset should dominate (library, attack, setting prefix).
CLASSES = {
    "fast": [("adv-lib", "df", "default"), ("torchattacks", "DeepFool", "default"), ("foolbox", "DeepFool", "default"),
             ("adv-lib", "ddn", "default"), ("foolbox", "DDN", "default"), ("torchattacks", "FAB", "default")],
    "default": [("adv-lib", "alma", "default"), ("adv-lib", "fmn", "long"), ("foolbox", "FMN", "long"),
                ("adv-lib", "fab", "default"), ("adv-lib", "fab-t", "default")],
}
PEERS_DIR = os.path.join(os.path.dirname(__file__), "reference", "peers")


def load_peers(model: str, norm: str) -> list[dict]:
    """The stored peer runs of ``model`` in ``norm`` (bench/attacks_peers.py), values as float arrays (inf: failed)."""
    out = []
    for path in sorted(glob.glob(os.path.join(PEERS_DIR, f"{model}-{norm}-*.json"))):
        with open(path) as fh:
            rec = json.load(fh)
        rec["values"] = np.array([np.inf if v is None else v for v in rec["values"]], dtype=np.float64)
        rec["label"] = f"{rec['library']} {rec['attack']} [{rec['setting']}]"
        out.append(rec)
    return out


def ratios(values: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """Median and p95 of the per-sample ratio (a failure counts as inf; a quantile that reaches one is inf)."""
    r = np.where(np.isfinite(values / reference), values / reference, 1e300)
    med, p95 = np.median(r), np.quantile(r, 0.95)
    return (float(med) if med < 1e299 else np.inf), (float(p95) if p95 < 1e299 else np.inf)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="mlp,cnn,mlp-at")
    ap.add_argument("--norms", default="l2,linf")
    ap.add_argument("--out", default="bench/attacks.md")
    ap.add_argument("--raw", default="runs/bench_attacks")
    args = ap.parse_args()
    torch.set_num_threads(1)
    _stub_modules()
    import adv_lib.attacks as al

    import marginkit
    from marginkit.attacks import input_margin
    from marginkit.data import load_dataset

    x_test, y_test = load_dataset("mnist5k").split("test")
    models, notes = load_models(args.models.split(","))
    rows, per_sample = [], []
    commands: set[str] = set()
    for mname, model in models.items():
        model64 = copy.deepcopy(model).double().eval()
        for norm in args.norms.split(","):
            stored = load_peers(mname, norm)
            if not stored:
                print(f"no stored peers for {mname} {norm}: skipped (run bench/attacks_peers.py)")
                continue
            commands |= {r["command"] for r in stored}
            index = stored[0]["index"]
            if any(r["index"] != index for r in stored):
                raise SystemExit(f"stored peers of {mname} {norm} were run on different points")
            idx = torch.tensor(index)
            x, y = x_test[idx], y_test[idx]
            runs = {r["label"]: dict(kind="peer", values=r["values"], passes=r["passes_per_sample"], seconds=r["seconds"],
                                     key=(r["library"], r["attack"], r["setting"])) for r in stored}
            clock = next((r for r in stored if r["library"] == "adv-lib" and r["attack"] == "df"), None)
            for name in PRESETS:  # the presets, with the clock peer run between them
                if clock is not None:
                    p = {"l2": 2, "linf": float("inf"), "l1": 1}[norm]
                    t0 = time.perf_counter()
                    al.df(Counted(model).eval(), x.clone(), y.clone(), norm=p)
                    clock.setdefault("now", []).append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                res = input_margin(model, x, norm=norm, preset=name, return_adv=True)
                dt = time.perf_counter() - t0
                v = judge(model64, x, y, res.adversarial, norm)
                runs[f"marginkit {name}"] = dict(kind="marginkit", values=v, passes=float(res.passes.float().mean()), seconds=dt)
                print(f"{mname} {norm} marginkit {name}: median {np.median(v):.4f} passes {runs[f'marginkit {name}']['passes']:.0f} "
                      f"{dt:.1f}s", flush=True)
            ref = np.min(np.stack([r["values"] for r in runs.values()]), axis=0)
            ref_peers = np.min(np.stack([r["values"] for r in runs.values() if r["kind"] == "peer"]), axis=0)
            load = float(np.median(clock["now"]) / clock["seconds"]) if clock is not None else float("nan")
            for label, r in runs.items():
                med, p95 = ratios(r["values"], ref)
                pm, pp = ratios(r["values"], ref_peers)
                # marginkit's times scaled by the clock to the load of the stored peer run
                adj = r["seconds"] / load if r["kind"] == "marginkit" and np.isfinite(load) else r["seconds"]
                rows.append(dict(model=mname, norm=norm, method=label, kind=r["kind"], success=float(np.isfinite(r["values"]).mean()),
                                 median=float(np.median(r["values"])), ratio_med=med, ratio_p95=p95, peers_med=pm, peers_p95=pp,
                                 passes=r["passes"], seconds_raw=r["seconds"], seconds=adj, load=load, key=r.get("key")))
                per_sample += [dict(model=mname, norm=norm, method=label, sample=int(i), value=float(v))
                               for i, v in zip(index, r["values"])]
    summary = pd.DataFrame(rows)
    os.makedirs(args.raw, exist_ok=True)
    pd.DataFrame(per_sample).to_csv(os.path.join(args.raw, "per_sample.csv"), index=False)
    summary.to_csv(os.path.join(args.raw, "summary.csv"), index=False)
    write_markdown(args, summary, notes, marginkit.__version__, sorted(commands))


def pareto(g: pd.DataFrame) -> list[str]:
    """For every peer configuration: the presets at least as fast and at least as tight (median and p95 ratio)."""
    mk = g[g.kind == "marginkit"]
    out = []
    for r in g[g.kind == "peer"].itertuples():
        dom = [m.method.split()[-1] for m in mk.itertuples()
               if m.seconds <= r.seconds and m.ratio_med <= r.ratio_med and m.ratio_p95 <= r.ratio_p95]
        out.append(f"| {r.method} | {r.seconds:.2f} | {r.ratio_med:.4f} | {r.ratio_p95:.4f} | {', '.join(dom) if dom else '**none**'} |")
    return out


def write_markdown(args, summary: pd.DataFrame, notes: dict[str, str], version: str, commands: list[str]) -> None:
    import importlib.metadata as md

    vers = {k: md.version(k) for k in ["torch", "adv-lib", "torchattacks", "foolbox"]}
    cmd = f"OMP_NUM_THREADS=1 python bench/attacks_compare.py --models {args.models} --norms {args.norms}"
    n_points = int(len(summary) and pd.read_csv(os.path.join(args.raw, "per_sample.csv")).groupby(["model", "norm", "method"]).size().iloc[0])
    lines = ["# Input-margin engine: presets vs stored public minimal-norm attacks", "",
             f"Produced by `{cmd}` (marginkit {version}; " + ", ".join(f"{k} {v}" for k, v in vers.items()) +
             "), with the peers stored in bench/reference/peers/ by " + "; ".join(f"`{c}`" for c in commands) +
             " (runs interrupted and resumed with `--skip-existing` record each command in their files).", "",
             f"{n_points} MNIST test points (mnist5k) correctly classified by every model; the same points for every method. "
             "A point counts only if it is in [0,1] and flips under a float64 copy of the model; norms in float64. "
             "ratio = norm / reference, the best norm of any stored peer or preset on that sample (inf for failures); "
             "vs peers = norm / best stored peer norm. passes = forward + backward rows per sample. "
             "Wall time of the whole call with one torch thread on a 2-core machine shared with other jobs (up to 7 "
             "at once): noisy. The peers' times come from their stored run; `load` is adv-lib DeepFool's time in this "
             "run divided by its stored time (above 1: the machine was busier in this run than when the peers ran); "
             "marginkit's `seconds` are its measured times divided by `load` (`seconds raw`: as measured), and the Pareto "
             "table compares those. DeepFool has no l1 version, so in l1 there is no clock (`load` nan) and the times are as measured.", ""]
    lines += [f"- {m}: {n}" for m, n in notes.items()] + [""]
    lines += ["## Targets", "",
              "| model | norm | thorough vs peers median | thorough vs peers p95 | target (<= 1.000 / <= 1.01) | load |",
              "|---|---|---|---|---|---|"]
    for (m, nrm), g in summary.groupby(["model", "norm"], sort=False):
        t = g[g.method == "marginkit thorough"].iloc[0]
        ok = "met" if t.peers_med <= 1.0 and t.peers_p95 <= 1.01 else "missed"
        lines.append(f"| {m} | {nrm} | {t.peers_med:.4f} | {t.peers_p95:.4f} | {ok} | {t.load:.2f} |")
    lines += ["", "Speed classes: the peer configurations of each preset's class (issue 16) that it does **not** dominate "
              "(at least as fast and at least as tight in median and p95 ratio); \"met\" when it dominates all of them.", "",
              "| model | norm | fast vs DeepFool / DDN-100 / FAB-10 | default vs ALMA / FMN-1000 / FAB-100 |", "|---|---|---|---|"]
    for (m, nrm), g in summary.groupby(["model", "norm"], sort=False):
        cells = []
        for preset_name, members in CLASSES.items():
            mk = g[g.method == f"marginkit {preset_name}"].iloc[0]
            peers_in = [r for r in g[g.kind == "peer"].itertuples()
                        if any(r.key[0] == lib and r.key[1] == att and r.key[2].startswith(st) for lib, att, st in members)]
            miss = [r.method for r in peers_in if not (mk.seconds <= r.seconds and mk.ratio_med <= r.ratio_med and mk.ratio_p95 <= r.ratio_p95)]
            cells.append("met" if not miss else "not: " + "; ".join(miss))
        lines.append(f"| {m} | {nrm} | {cells[0]} | {cells[1]} |")
    lines += ["", "## Pareto: which preset is at least as fast and at least as tight as each peer configuration", "",
              "A preset dominates a peer configuration when its wall time is not larger and both its median and p95 "
              "ratio to the reference are not larger. **none**: no preset dominates it (the frontier below says by how much).", ""]
    for (m, nrm), g in summary.groupby(["model", "norm"], sort=False):
        lines += [f"### {m}, {nrm}", "", "| peer configuration | seconds | ratio median | ratio p95 | dominated by |", "|---|---|---|---|---|"]
        lines += pareto(g) + [""]
    lines += ["## Frontier: tightness against time per preset", "",
              "| model | norm | preset | seconds | seconds raw | passes | ratio median | ratio p95 | vs peers median | vs peers p95 | success |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in summary[summary.kind == "marginkit"].itertuples():
        lines.append(f"| {r.model} | {r.norm} | {r.method.split()[-1]} | {r.seconds:.2f} | {r.seconds_raw:.2f} | {r.passes:.0f} | {r.ratio_med:.4f} | "
                     f"{r.ratio_p95:.4f} | {r.peers_med:.4f} | {r.peers_p95:.4f} | {r.success:.0%} |")
    lines += ["", "Rows named in src/marginkit/attacks/presets.py: \"marginkit fast\", \"marginkit default\", "
              "\"marginkit thorough\" (this table and the per-model tables below).", "", "## All attacks", ""]
    for (m, nrm), g in summary.groupby(["model", "norm"], sort=False):
        lines += [f"### {m}, {nrm} (all)", "", "| attack | success | median | ratio median | ratio p95 | passes | seconds |",
                  "|---|---|---|---|---|---|---|"]
        for r in g.sort_values("seconds").itertuples():
            lines.append(f"| {r.method} | {r.success:.0%} | {r.median:.4f} | {r.ratio_med:.4f} | {r.ratio_p95:.4f} | "
                         f"{r.passes:.0f} | {r.seconds:.2f} |")
        lines.append("")
    with open(args.out, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
