"""GPU check: every device-aware entry point run on a GPU against the same call on the CPU, in one short script.

    python benchmarks/gpu_check.py [--device cuda] [--layers 4] [--hidden 1024]

Generates a Llama-shaped bf16 family (a base and 3 fine-tunes, `merge_bench.make_models`), then for each check prints
the CPU and device wall times, their ratio, and the largest difference of the results against its tolerance:
merges (linear, task_arithmetic, ties, dare_ties with a seed: the drop masks are drawn on the CPU, so they are the same,
slerp) and the exact kinship matrix (float64 on the device). Exit code 1 when a difference exceeds its tolerance. On a
machine without the device it says so and runs the same code with device='cpu' (a dry run of the script). Not a test.
"""
from __future__ import annotations
import argparse, sys, tempfile, time
from pathlib import Path
import torch
sys.path.insert(0, str(Path(__file__).resolve().parent))
from merge_bench import make_models

def timed(fn):
    if torch.cuda.is_available(): torch.cuda.synchronize()
    t = time.perf_counter(); r = fn()
    if torch.cuda.is_available(): torch.cuda.synchronize()
    return r, time.perf_counter() - t

def main() -> int:
    from mergelab.config import merge
    from mergelab.kinship import kinship_matrix
    from mergelab.io import InvalidValue
    from mergelab.scheduler import parse_device
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda"); ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=1024)
    a = ap.parse_args()
    try: parse_device(a.device); device = a.device
    except InvalidValue as e: print(f"{e}: dry run with device='cpu'"); device = "cpu"
    print(f"device {device}" + (f" ({torch.cuda.get_device_name()})" if device.startswith("cuda") else ""))
    d = Path(tempfile.mkdtemp(prefix="gpucheck-"))
    base, *fts = make_models(d, a.layers, a.hidden, 4 * a.hidden, 32000, 3, 0.002)
    checks = {"linear": dict(weight=[1 / 3] * 3), "task_arithmetic": dict(base=base, weight=[1.0] * 3, **{"lambda": 0.5}),
              "ties": dict(base=base, weight=[1.0] * 3, density=0.5), "dare_ties": dict(base=base, weight=[1.0] * 3, density=0.5, seed=7),
              "slerp": dict(base=base, t=0.4)}
    ok = True
    print(f"{'check':24} {'cpu s':>8} {'device s':>9} {'ratio':>7} {'max |diff|':>11} {'tolerance':>10}")
    for method, kw in checks.items():
        models = fts[:1] if method == "slerp" else fts
        cpu, tc = timed(lambda: merge(models, method, progress=False, **kw))
        dev, td = timed(lambda: merge(models, method, progress=False, device=device, **kw))
        diff = max(float((cpu[k].float() - dev[k].float()).abs().max()) for k in cpu)
        tol = 2 ** -7 * max(float(v.float().abs().max()) for v in cpu.values())       # one bf16 rounding step
        ok &= diff <= tol
        print(f"{'merge ' + method:24} {tc:8.2f} {td:9.2f} {td / tc:7.2f} {diff:11.2e} {tol:10.1e}")
    kc, tc = timed(lambda: kinship_matrix(fts, base, progress=False))
    kd, td = timed(lambda: kinship_matrix(fts, base, progress=False, device=device))
    diff = float((kc - kd).abs().max().max())
    ok &= diff <= 1e-10
    print(f"{'kinship (pcc, float64)':24} {tc:8.2f} {td:9.2f} {td / tc:7.2f} {diff:11.2e} {1e-10:10.1e}")
    print("all within tolerance" if ok else "SOME CHECKS EXCEED THEIR TOLERANCE")
    return 0 if ok else 1

if __name__ == "__main__":
    sys.exit(main())
