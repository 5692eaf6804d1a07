"""Engine (and certification) throughput on a CUDA device: samples per second (writes bench/gpu.md).

For each demo model and norm: the minimal-norm attack engine (``marginkit.attacks.input_margin``) on the
first ``--n`` mnist5k test points, with its default schedule and with a fixed pass budget, and, where
``marginkit.verify`` is installed, certification of the same points (``certify(model, x, None, norm,
upper=...)``) from the engine's upper bounds. The model and the inputs are moved with ``.to(device)``;
everything else follows them, so ``--device cpu`` runs the very same code on the CPU (a smoke check that
writes nothing unless ``--out`` is given). Each measurement is preceded by a warm-up call on a few points
and timed with the device synchronised.

    python bench/gpu.py                              # on a machine with a GPU: writes bench/gpu.md
    python bench/gpu.py --device cpu --n 20 --models cnn --norms l2,linf --settings budget --budget 50 --threads 1
                                                     # the same path on the CPU (a quick check)
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from typing import Any, Callable

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "src"))

from marginkit.attacks import input_margin  # noqa: E402
from marginkit.data import load_dataset  # noqa: E402
from marginkit.results import library_versions  # noqa: E402
from marginkit.training import demo_model  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[Any, float, float]:
    """``fn()``, its wall time with the device synchronised, and the peak device memory it allocated (MiB)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _sync(device)
    t0 = time.perf_counter()
    out = fn()
    _sync(device)
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")
    return out, seconds, peak


def certifier() -> Callable[..., Any] | None:
    try:
        from marginkit.verify import certify  # type: ignore[attr-defined]
    except ImportError:
        return None
    return certify  # type: ignore[no-any-return]


def certified_count(res: Any) -> str:
    lower = getattr(res, "lower", None)
    if lower is None:
        return "n/a"
    lower = torch.as_tensor(lower).double().cpu()
    return str(int((torch.nan_to_num(lower, nan=0.0) > 0).sum()))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="cuda (default), cuda:K, or cpu for the smoke check")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--models", default="cnn,mlp")
    ap.add_argument("--norms", default="l2,linf,l1")
    ap.add_argument("--budget", type=int, default=300, help="the fixed-budget setting (passes per sample)")
    ap.add_argument("--settings", default="default,budget",
                    help="engine settings to measure: default (the full schedule) and/or budget (--budget passes)")
    ap.add_argument("--cache-dir", default=os.path.join(ROOT, "runs", "models"))
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--out", default=None, help="results file (default: bench/gpu.md on CUDA, none on CPU)")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench/gpu.py: no CUDA device on this machine (torch.cuda.is_available() is False); nothing measured. "
              "Run it on a GPU machine, or pass --device cpu to exercise the same code path on the CPU.")
        return 0
    out_path = args.out or (os.path.join(ROOT, "bench", "gpu.md") if device.type == "cuda" else None)
    x_all, _ = load_dataset("mnist5k").split("test")
    x = x_all[: args.n].to(device)
    certify = certifier()
    rows = []
    for arch in args.models.split(","):
        model = demo_model(arch, cache_dir=args.cache_dir)[0].eval().to(device)
        for norm in args.norms.split(","):
            settings = {"default": ("default schedule", None), "budget": (f"budget {args.budget}", args.budget)}
            for label, budget in (settings[k] for k in args.settings.split(",")):
                input_margin(model, x[:4], None, norm, budget=budget)  # warm-up: kernels, allocator, layout probe
                res, secs, peak = timed(lambda: input_margin(model, x, None, norm, budget=budget), device)
                assert res.upper.shape[0] == x.shape[0] and res.upper.device.type == "cpu"
                row = {"model": arch, "norm": norm, "setting": label, "engine_sps": x.shape[0] / secs,
                       "engine_s": secs, "median": float(np.median(res.upper.numpy())),
                       "passes": float(res.passes.double().mean()), "peak": peak, "cert_sps": float("nan"), "certified": "n/a"}
                if certify is not None:
                    certify(model, x[:4], None, norm, upper=res.upper[:4])
                    cres, csecs, cpeak = timed(lambda: certify(model, x, None, norm, upper=res.upper), device)
                    row.update(cert_sps=x.shape[0] / csecs, certified=certified_count(cres), peak=max(peak, cpeak))
                rows.append(row)
                print(f"{arch} {norm} {label}: {row['engine_sps']:.1f} samples/s (engine), "
                      f"{row['cert_sps']:.1f} samples/s (certification)", flush=True)

    v = library_versions()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())
    lines = [
        "# Engine and certification throughput on a GPU",
        "",
        f"Command: `{' '.join(['python', 'bench/gpu.py', *sys.argv[1:]])}` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}). "
        f"Device: {name} ({device}); torch {v.get('torch')}"
        + (f", CUDA {torch.version.cuda}" if device.type == "cuda" else "")
        + f". {x.shape[0]} mnist5k test points per row; demo models from `demo_model(arch)`; "
        f"certification: {'marginkit.verify.certify from the engine upper bounds' if certify else 'marginkit.verify not installed, not measured'}.",
        "",
        "| model | norm | engine setting | engine samples/s | engine s | median upper bound | passes / sample | certification samples/s | certified (lower > 0) | peak device memory (MiB) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['model']} | {r['norm']} | {r['setting']} | {r['engine_sps']:.1f} | {r['engine_s']:.1f} | "
                     f"{r['median']:.4f} | {r['passes']:.0f} | {r['cert_sps']:.1f} | {r['certified']} | {r['peak']:.0f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if out_path:
        with open(out_path, "w") as fh:
            fh.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
