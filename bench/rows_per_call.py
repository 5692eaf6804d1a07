"""Cost per row of one forward + backward pass of a demo model against the rows per call (one torch
thread): the measurement behind the engine's default ``RuntimeOptions.rows_per_call`` on CPU (``_CPU_ACTIVATION_BYTES``).

    OMP_NUM_THREADS=1 python bench/rows_per_call.py --model cnn --rows 25,50,100,128,160,192,224,256,300,400
    OMP_NUM_THREADS=1 python bench/rows_per_call.py --model cnn --rows 100,142 --layouts contiguous,channels_last

``--layouts``: also time the model copied to the channels-last memory layout, as the engine's search does on
CPU for conv nets (``RuntimeOptions(channels_last=None)``).
"""

from __future__ import annotations

import argparse
import copy
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="cnn")
    ap.add_argument("--rows", default="25,50,100,128,160,192,224,256,300,400")
    ap.add_argument("--seconds", type=float, default=1.5, help="time per measurement (the second of two counts)")
    ap.add_argument("--layouts", default="contiguous", help="comma list of contiguous, channels_last")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from marginkit.attacks.engine import _auto_rows, _probe
    from marginkit.training import demo_model

    model = demo_model(args.model)[0].eval()
    with torch.no_grad():
        _, floats = _probe(model, torch.rand(1, 1, 28, 28))
    print(f"{args.model}: {floats} activation floats per row ({4 * floats / 1024:.0f} KB); "
          f"default rows per call on CPU: {_auto_rows(floats, torch.device('cpu'))}")
    print("| layout | rows per call | ms per call | us per row |")
    print("|---|---|---|---|")
    for layout in args.layouts.split(","):
        fmt = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}[layout]
        m = model if layout == "contiguous" else copy.deepcopy(model).to(memory_format=fmt)
        for n in (int(v) for v in args.rows.split(",")):
            x = torch.rand(n, 1, 28, 28).contiguous(memory_format=fmt).requires_grad_(True)
            for _ in range(2):  # the first round warms up
                t0, calls = time.perf_counter(), 0
                while time.perf_counter() - t0 < args.seconds:
                    (g,) = torch.autograd.grad(m(x)[:, 0].sum(), x)
                    calls += 1
                dt = (time.perf_counter() - t0) / calls
            print(f"| {layout} | {n} | {dt * 1e3:.1f} | {dt / n * 1e6:.0f} |", flush=True)
        if layout != "contiguous":
            # what the engine's check (_LAYOUT_RTOL) compares: the logit difference relative to the logit scale
            with torch.no_grad():
                xs = torch.rand(500, 1, 28, 28, generator=torch.Generator().manual_seed(0))
                z, zl = model(xs), m(xs.contiguous(memory_format=fmt))
            rel = ((z - zl).abs().amax(1) / z.abs().amax(1).clamp_min(1.0)).max()
            print(f"{layout}: largest logit difference on 500 random inputs, relative to the logit scale: {rel:.2e}")


if __name__ == "__main__":
    main()
