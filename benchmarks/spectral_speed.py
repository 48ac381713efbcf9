"""SVD methods at real scale: wall time of TSV-M, Iso-C, Iso-CTS and STAR, exact (the default) and fast
(`svd="gram"`), against TIES, and both modes' error against float64.

    python benchmarks/spectral_speed.py [--layers 2 --hidden 2048 --inter 8192 --vocab 32000] [--workdir DIR]
                                        [--methods tsv,iso_c,iso_cts,star] [--modes exact,fast] [--no-errors]

Generates (`merge_bench.make_models`, kept in --workdir when given) a Llama-shaped bf16 base and 3 fine-tunes (noise
0.002; the defaults are the 265M shape: 2 layers, hidden 2048, MLP 8192, vocabulary 32000), then times, in one
process and one after the other, each through the public `merge(models, method, base=base, out=dir, progress=False)`:
TIES (density 0.5, the yardstick; once first and once last, as the load drifts), then for each SVD method the exact
default and the fast mode. Prints each wall time and the process's CPU time (user + system, all threads: less
sensitive than the wall time to other jobs on the machine), their ratios to TIES (the mean of the two TIES runs), and
each mode's error: on layer 0's q_proj (square) and down_proj (wide), the method called directly on float32 tensors
against the same merge computed from float64 task vectors with float64 SVDs (`reference`); the written weights are not
compared, since the methods return the base's dtype and bf16 rounding of θ₀ + Δθ (about 1e-2 of Δθ here) would hide
both modes' errors. It also records every eigendecomposition a merge makes (`torch.linalg.eigh`: size and dtype) and
replays one of each kind after it, one after another at the process's thread count: their count times their time is
the merge's LAPACK floor, what its eigendecompositions alone take, however the rest is done. Ends with a markdown
table (date, load averages). Not a test.
"""
from __future__ import annotations
import argparse, collections, datetime, os, shutil, sys, tempfile, threading, time
from pathlib import Path
import torch
sys.path.insert(0, str(Path(__file__).resolve().parent))
from merge_bench import make_models

METHODS = {"tsv": "TSV-M", "iso_c": "Iso-C", "iso_cts": "Iso-CTS", "star": "STAR"}

def reference(method: str, ds: list[torch.Tensor]) -> torch.Tensor:
    "The method's merged update (before α = 1) from float64 task vectors through float64 SVDs: the yardstick for both modes."
    from mergelab.spectral import iso_cts_ranks, polar, star_truncate, top_svd
    if method == "star": return sum(star_truncate(d) for d in ds) / len(ds)
    if method == "iso_c":
        U, S, Vh = torch.linalg.svd(sum(ds), full_matrices=False)
        return S.mean() * (U @ Vh)
    if method == "tsv": kc, kt, parts = 0, min(ds[0].shape) // len(ds), []
    else: (kc, kt), parts = iso_cts_ranks(min(ds[0].shape), len(ds), 0.8), []
    Uc, Sc, Vc = top_svd(sum(ds), kc)
    parts = [(Uc, Sc, Vc)] + [top_svd(d - Uc @ (Uc.T @ d), kt) for d in ds]
    U, S, V = torch.cat([p[0] for p in parts], 1), torch.cat([p[1] for p in parts]), torch.cat([p[2] for p in parts], 1)
    return (polar(U) * (S if method == "tsv" else S.mean())) @ polar(V).T

class EighLog:
    "Counts the `torch.linalg.eigh` calls (size, dtype) made inside the `with` block, from any thread."
    def __init__(self): self.calls, self.lock, self.orig = collections.Counter(), threading.Lock(), torch.linalg.eigh
    def __enter__(self):
        def eigh(A, *args, **kw):
            with self.lock: self.calls[(A.shape[-1], A.dtype)] += 1
            return self.orig(A, *args, **kw)
        torch.linalg.eigh = eigh
        return self
    def __exit__(self, *exc): torch.linalg.eigh = self.orig

    def floor(self) -> float:
        "Seconds the recorded eigendecompositions take one after another: each kind timed once (best of 2) on a random SPD matrix."
        total = 0.0
        for (n, dtype), count in self.calls.items():
            A = torch.randn(n, n, generator=torch.Generator().manual_seed(0), dtype=dtype)
            G, best = A @ A.T, float("inf")
            for _ in range(2):
                t = time.perf_counter(); torch.linalg.eigh(G); best = min(best, time.perf_counter() - t)
            total += count * best
        return total

    def summary(self) -> str:
        return ", ".join(f"{c}× {n}² {str(d).split('.')[-1]}" for (n, d), c in sorted(self.calls.items(), key=lambda x: (-x[1], x[0][0])))

def algorithm_errors(method: str, base: Path, fts: list[Path], names: list[str]) -> dict[str, float]:
    """Per mode, the largest ‖Δθ_mode − Δθ_float64‖_F / ‖Δθ_float64‖_F over `names`, the method called on float32
    tensors (the written weights would add the bf16 rounding of θ₀ + Δθ, which is larger than either mode's error)."""
    from mergelab.io import Checkpoint
    from mergelab.registry import METHODS as REGISTRY
    b, fs, worst = Checkpoint.open(base), [Checkpoint.open(f) for f in fts], {"exact": 0.0, "gram": 0.0}
    for n in names:
        z, xs = b.get(n, torch.float32), [f.get(n, torch.float32) for f in fs]
        ref = reference(method, [x.double() - z.double() for x in xs])
        for mode in worst:
            upd = REGISTRY[method](xs, z, svd=mode).double() - z.double()
            worst[mode] = max(worst[mode], float((upd - ref).norm() / ref.norm()))
    return worst

def main():
    from mergelab.config import merge
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=2); ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--inter", type=int, default=8192); ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--noise", type=float, default=0.002); ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--methods", default=",".join(METHODS)); ap.add_argument("--modes", default="exact,fast")
    ap.add_argument("--out-dtype", default=None)
    ap.add_argument("--no-errors", dest="errors", action="store_false", help="skip the float64 error check")
    ap.add_argument("--workdir", default=None)
    a = ap.parse_args()
    methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    modes = [m.strip() for m in a.modes.split(",") if m.strip()]
    d = Path(a.workdir or tempfile.mkdtemp(prefix="spectralspeed-"))
    d.mkdir(parents=True, exist_ok=True)
    paths = [d / "base"] + [d / f"ft_{i}" for i in range(3)]
    if not all((p / "config.json").exists() for p in paths):
        for p in paths: shutil.rmtree(p, ignore_errors=True)
        make_models(d, a.layers, a.hidden, a.inter, a.vocab, 3, a.noise)
    base, fts = paths[0], paths[1:]
    probes = [f"model.layers.0.{n}.weight" for n in ("self_attn.q_proj", "mlp.down_proj")]     # square; wide (m < n)
    load0, start = os.getloadavg(), datetime.datetime.now()
    print(f"{start:%Y-%m-%d %H:%M}, torch {torch.__version__}, {torch.get_num_threads()} torch threads, merge threads "
          f"{a.threads}, load average {' '.join(f'{x:.2f}' for x in load0)}", flush=True)

    def run(name: str, method: str, **kw) -> tuple[float, float, float]:
        out = d / f"out_{name}"
        with EighLog() as log:
            t, c = time.perf_counter(), time.process_time()
            merge(fts, method, base=base, out=out, progress=False, overwrite=True, threads=a.threads, out_dtype=a.out_dtype, **kw)
            wall, cpu = time.perf_counter() - t, time.process_time() - c
        floor = log.floor()
        print(f"  {name:20s} wall {wall:8.1f} s   CPU {cpu:8.1f} s   (load {os.getloadavg()[0]:.2f})"
              + (f"; eigh {log.summary()}: {floor:.1f} s one after another" if log.calls else ""), flush=True)
        return wall, cpu, floor

    ties = [run("ties", "ties", weight=1.0, density=0.5)]
    rows = []
    for m in methods:
        exact = run(f"{m}_exact", m) if "exact" in modes else None
        fast = run(f"{m}_fast", m, svd="gram") if "fast" in modes else None
        err = algorithm_errors(m, base, fts, probes) if a.errors else {"exact": float("nan"), "gram": float("nan")}
        rows.append((m, exact, fast, err))
        if a.errors: print(f"  {m}: error against float64 SVDs, max over {len(probes)} matrices: exact {err['exact']:.1e}, "
                           f"gram {err['gram']:.1e}", flush=True)
    ties.append(run("ties_again", "ties", weight=1.0, density=0.5))
    load1 = os.getloadavg()
    yard = tuple(sum(t[i] for t in ties) / len(ties) for i in (0, 1))
    fmt = lambda r: "—" if r is None else f"{r[0]:.1f} s (CPU {r[1]:.0f} s)"
    ratio = lambda r: "—" if r is None else f"{r[0] / yard[0]:.2f}× (CPU {r[1] / yard[1]:.2f}×)"
    floor = lambda r: "—" if r is None else f"{r[2]:.1f} s = {r[2] / yard[0]:.2f}× TIES"
    shape = f"{a.layers} layers, hidden {a.hidden}, MLP {a.inter}, vocabulary {a.vocab}"
    print(f"\nSVD methods vs TIES, {shape}: base + 3 fine-tunes (bf16, noise {a.noise}), `merge(..., threads={a.threads})`,"
          f" outputs {a.out_dtype or 'bf16'}; {start:%Y-%m-%d}, load average (1/5/15 min) {' '.join(f'{x:.2f}' for x in load0)} "
          f"before, {' '.join(f'{x:.2f}' for x in load1)} after\n")
    print(f"| method | exact (default) | fast (`svd=\"gram\"`) | fast / TIES | fast's eigh floor | exact / TIES | "
          f"error vs float64: exact | gram |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| TIES, density 0.5 (yardstick) | {fmt(ties[0])}; again at the end {fmt(ties[1])} | | 1 (mean {yard[0]:.1f} s, "
          f"CPU {yard[1]:.0f} s) | | | | |")
    for m, exact, fast, err in rows:
        print(f"| {METHODS.get(m, m)} (`{m}`) | {fmt(exact)} | {fmt(fast)} | **{ratio(fast)}** | {floor(fast)} | {ratio(exact)} | "
              f"{err['exact']:.1e} | {err['gram']:.1e} |")

if __name__ == "__main__":
    main()
