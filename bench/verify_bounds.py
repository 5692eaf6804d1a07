"""Certified / attack gap: median lower/upper of IBP, CROWN and alpha-CROWN radii on the demo models.

For each model (demo MLP, demo CNN, an l2 PGD-trained MLP, all on mnist5k test points) and norm, the
attack engine's verified upper bounds (marginkit.attacks.input_margin, default schedule) bracket the
certified radii of marginkit.verify.certify. Reported per method: the median of lower/upper over the
samples, the median lower, the share of samples whose lower bound is positive, and the wall time per
sample (the batched search's time divided by the number of samples). ``--memory`` measures the peak
resident memory of one bound computation (``spec_lower_bounds``) on the demo CNN for a batch of 100
in a fresh subprocess per method.

    PYTHONPATH=src python bench/verify_bounds.py                      # the table of bench/verify.md
    PYTHONPATH=src python bench/verify_bounds.py --memory --skip-table # the memory rows

Bench code may import marginkit.attacks (bench/ sits outside the package layers).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time

import torch


def _models(names: list[str]):
    from marginkit.training import demo_model

    out = {}
    for name in names:
        if name == "mlp":
            out[name] = demo_model("mlp")[0].eval()
        elif name == "cnn":
            out[name] = demo_model("cnn")[0].eval()
        elif name == "mlp-pgd":  # the training helper's PGD-AT defaults: l2, eps 1.5, 7 steps
            out[name] = demo_model("mlp", method="pgd")[0].eval()
        else:
            raise SystemExit(f"unknown model {name!r}")
    return out


def _table(args: argparse.Namespace) -> list[dict]:
    from marginkit.attacks import input_margin
    from marginkit.data import load_dataset
    from marginkit.verify import certify

    ds = load_dataset("mnist5k", seed=0)
    rows = []
    for name, model in _models(args.models.split(",")).items():
        n = args.n_cnn if name == "cnn" else args.n
        x = ds.x_test[:n]
        for norm in args.norms.split(","):
            t0 = time.perf_counter()
            att = input_margin(model, x, norm=norm)
            t_att = (time.perf_counter() - t0) / n
            up = att.upper
            for method in args.methods.split(","):
                dtype = torch.float32 if name == "cnn" else torch.float64
                res = certify(model, x, norm=norm, upper=up, method=method, rtol=args.rtol, alpha_steps=args.alpha_steps, dtype=dtype)
                ok = torch.isfinite(up) & (up > 0)
                ratio = (res.lower[ok] / up[ok]).clamp(max=1.0)
                assert bool((res.lower[ok] <= up[ok] * (1 + 1e-9)).all()), "a certified radius above a verified flip"
                row = {"model": name, "norm": norm, "method": method, "n": n, "median_lower_over_upper": float(ratio.median()),
                       "p25": float(ratio.quantile(0.25)), "p75": float(ratio.quantile(0.75)),
                       "median_lower": float(res.lower.median()), "median_upper": float(up.median()),
                       "certified_share": float((res.lower > 0).double().mean()),
                       "seconds_per_sample": float(res.seconds.mean()), "evaluations": float(res.evaluations.double().mean()),
                       "attack_seconds_per_sample": t_att, "dtype": str(dtype).replace("torch.", "")}
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


_MEMORY_CHILD = r"""
import resource, sys, time, torch
torch.set_num_threads(1)
from marginkit.training import demo_model
from marginkit.data import load_dataset
from marginkit.verify import as_relu_network, spec_lower_bounds
method, n, eps = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
model = demo_model("cnn")[0].eval()
x = load_dataset("mnist5k", seed=0).x_test[:n]
net = as_relu_network(model, tuple(x.shape[1:]))
ref = model(x).argmax(1)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
lb = spec_lower_bounds(net, x, ref, eps, "l2", method=method, dtype=torch.float32, alpha_steps=5)
print(base / 1024, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, time.perf_counter() - t, float((lb > 0).all(1).double().mean()))
"""


def _memory(args: argparse.Namespace) -> list[dict]:
    """Peak RSS of the child (VmHWM, polled); a child still running after --memory-timeout is stopped and
    its peak so far reported with ``finished: false`` (the working set is bounded by the chunk size, so
    the peak is reached within the first row chunks)."""
    rows = []
    for method in args.memory_methods.split(","):
        proc = subprocess.Popen([sys.executable, "-c", _MEMORY_CHILD, method, str(args.memory_n), str(args.memory_eps)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        start, peak = time.perf_counter(), 0.0
        while proc.poll() is None and time.perf_counter() - start < args.memory_timeout:
            peak = max(peak, _vm_hwm(proc.pid))
            time.sleep(1.0)
        finished = proc.poll() is not None
        if not finished:
            peak = max(peak, _vm_hwm(proc.pid))
            proc.kill()
        out, _ = proc.communicate()
        row: dict = {"memory": True, "method": method, "n": args.memory_n, "eps": args.memory_eps, "finished": finished,
                     "wall_seconds": time.perf_counter() - start}
        if finished and out.strip():
            base, peak_child, secs, share = (float(v) for v in out.split())
            row.update(peak_rss_mib=peak_child, rss_before_mib=base, seconds=secs, certified_share=share)
        else:
            row.update(peak_rss_mib_so_far=peak)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def _vm_hwm(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return float(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="mlp,mlp-pgd,cnn")
    ap.add_argument("--norms", default="l2,linf")
    ap.add_argument("--methods", default="ibp,crown,alpha-crown")
    ap.add_argument("--n", type=int, default=20, help="test points per MLP")
    ap.add_argument("--n-cnn", type=int, default=3, help="test points for the CNN (CROWN on it is slow on CPU)")
    ap.add_argument("--rtol", type=float, default=0.01)
    ap.add_argument("--alpha-steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--memory", action="store_true")
    ap.add_argument("--memory-n", type=int, default=100)
    ap.add_argument("--memory-eps", type=float, default=0.05)
    ap.add_argument("--memory-methods", default="ibp,crown")
    ap.add_argument("--memory-timeout", type=float, default=3600.0, help="seconds before a memory child is stopped")
    ap.add_argument("--skip-table", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(json.dumps({"torch": torch.__version__, "python": platform.python_version(), "threads": args.threads,
                      "argv": sys.argv[1:]}), flush=True)
    if not args.skip_table:
        _table(args)
    if args.memory:
        _memory(args)
    print(json.dumps({"maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


if __name__ == "__main__":
    main()
