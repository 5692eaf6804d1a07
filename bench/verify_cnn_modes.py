"""One CROWN bound evaluation on the demo CNN per ``intermediate`` mode: seconds, unstable neurons, bounds.

For the first ``--n`` mnist5k test points at one l2 eps, ``spec_lower_bounds(..., method="crown",
dtype=float32, intermediate=mode)`` is timed once per mode (after a warm-up call that builds the fan-in
tables), and the specification bounds of every mode are compared with the dense pass.

    PYTHONPATH=src python bench/verify_cnn_modes.py --eps 0.1 --n 1
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--n", type=int, default=1)
    ap.add_argument("--modes", default="dense,auto,sparse,forward")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from marginkit.data import load_dataset
    from marginkit.training import demo_model
    from marginkit.verify import as_relu_network, preactivation_bounds, spec_lower_bounds

    model = demo_model("cnn")[0].eval()
    x = load_dataset("mnist5k", seed=0).x_test[: args.n]
    net = as_relu_network(model, tuple(x.shape[1:]))
    ref = model(x).argmax(1)
    spec_lower_bounds(net, x, ref, args.eps, "l2", method="ibp", dtype=torch.float32)
    ref_bounds = None
    for mode in args.modes.split(","):
        if mode in ("auto", "sparse"):  # build the fan-in tables outside the timing
            spec_lower_bounds(net, x, ref, 1e-4, "l2", method="crown", dtype=torch.float32, intermediate=mode)
        t = time.perf_counter()
        lb = spec_lower_bounds(net, x, ref, args.eps, "l2", method="crown", dtype=torch.float32, intermediate=mode)
        secs = time.perf_counter() - t
        pre = preactivation_bounds(net, x, args.eps, "l2", method="crown", dtype=torch.float32, intermediate=mode)
        if ref_bounds is None:
            ref_bounds = lb
        print(json.dumps({"mode": mode, "eps": args.eps, "n": args.n, "seconds_per_evaluation": secs / args.n,
                          "unstable_per_layer": [int(((lo < 0) & (hi > 0)).sum()) for lo, hi in pre],
                          "min_spec_bound": float(lb.min(1).values.median()),
                          "max_abs_diff_to_first": float((lb - ref_bounds).abs().max())}), flush=True)


if __name__ == "__main__":
    main()
