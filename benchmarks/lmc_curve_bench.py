"""Cost of a 25-point interpolation curve relative to the 25 evaluations alone.

`mergelab.lmc.interpolation_curve` overwrites one preallocated model in place with `torch.lerp`, so the curve should
cost about what its evaluations cost. This prints the ratio (target ≤ 1.2) for the digits zoo's MLPs (or random MLPs
of the same shape when the zoo is not built), best of `--repeats` interleaved runs, single-threaded. Not a timed test.

    python benchmarks/lmc_curve_bench.py [--repeats 15] [--points 25]
"""
import argparse, time
import torch
from torch import nn
import torch.nn.functional as F
from mergelab.lmc import interpolation_curve

def models_and_eval():
    try:
        from mergelab.zoo import load_zoo
        zoo = load_zoo("digits-lmc")
        a, b = zoo.build(zoo.experts["plain-s0"]), zoo.build(zoo.experts["plain-s1"])
        x, y = zoo.data["digits"]["test"]
        src = "digits-lmc zoo, plain-s0 / plain-s1 (MLP 64-128-128-128-10), 497 test digits"
    except Exception as e:                                           # zoo not built: same shapes, random weights
        torch.manual_seed(0)
        mk = lambda: nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(),
                                   nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10))
        a, b = mk(), mk()
        x, y = torch.rand(497, 8, 8), torch.randint(0, 10, (497,))
        src = f"random MLPs 64-128-128-128-10 (zoo unavailable: {e})"
    def evaluate(m):
        logits = m(x)
        return dict(loss=F.cross_entropy(logits, y).item(), accuracy=100 * (logits.argmax(1) == y).float().mean().item())
    return a, b, evaluate, src

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--points", type=int, default=25)
    args = ap.parse_args()
    torch.set_num_threads(1)
    a, b, evaluate, src = models_and_eval()
    a.eval()
    def evals_only():
        with torch.no_grad():
            for _ in range(args.points): evaluate(a)
    def curve(): interpolation_curve(a, b, evaluate, alphas=args.points)
    fns = {"evaluations": evals_only, "curve": curve}
    for fn in fns.values(): fn()                                      # warm-up
    times = {k: [] for k in fns}
    for _ in range(args.repeats):                                     # interleaved, so load changes hit both alike
        for name, fn in fns.items():
            t0 = time.perf_counter(); fn(); times[name].append(time.perf_counter() - t0)
    best = {k: min(v) for k, v in times.items()}
    ratio = best["curve"] / best["evaluations"]
    print(f"models: {src}")
    print(f"{args.points} evaluations alone: {best['evaluations'] * 1e3:.1f} ms; {args.points}-point curve: "
          f"{best['curve'] * 1e3:.1f} ms (best of {args.repeats}, 1 thread)")
    print(f"ratio curve / evaluations: {ratio:.3f} (target <= 1.2: {'OK' if ratio <= 1.2 else 'ABOVE TARGET'})")

if __name__ == "__main__":
    main()
