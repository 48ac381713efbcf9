"""Kinship of N models: mergelab's one-pass `kinship_matrix` vs a pairwise reference that loads full models.

The reference follows the ModelKinship code's approach (Hu et al. 2024, arXiv:2410.12613): for each pair (i, j) it
loads both fine-tuned models and the base in full, flattens the two task vectors into one vector each and computes
their Pearson correlation — N(N−1)/2 pairs, each reading two whole models. mergelab reads every model once, tensor by
tensor, and keeps only N × N sufficient statistics. Both run for N ∈ {4, 8, 16} in fresh processes (peak RSS from
ru_maxrss), on Llama-shaped fp32 checkpoints; the script prints wall and peak-RSS ratios, their scaling in N, and the
largest difference of the matrices. `--dask` adds a 2-worker `LocalCluster` (processes) run of the largest N against
the local run. Not a test.

    python benchmarks/kinship_bench.py [--ns 4 8 16] [--layers 4] [--hidden 256] [--dask]
"""
from __future__ import annotations
import argparse, itertools, json, subprocess, sys, tempfile, time
from pathlib import Path
import torch

def make_zoo(d: Path, n: int, layers: int, hidden: int, vocab: int) -> list[Path]:
    "A base and n fine-tunes (base + a shared direction + own noise), fp32, written tensor by tensor."
    from mergelab.io import ShardedWriter
    shapes = {"model.embed_tokens.weight": (vocab, hidden), "lm_head.weight": (vocab, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes.update({p + "self_attn.q_proj.weight": (hidden, hidden), p + "self_attn.o_proj.weight": (hidden, hidden),
                       p + "mlp.up_proj.weight": (4 * hidden, hidden), p + "mlp.down_proj.weight": (hidden, 4 * hidden),
                       p + "input_layernorm.weight": (hidden,)})
    paths = [d / "base"] + [d / f"ft_{i:02d}" for i in range(n)]
    for j, p in enumerate(paths):
        if (p / "model.safetensors").exists() or (p / "model.safetensors.index.json").exists(): continue
        with ShardedWriter(p, "2GB") as w:
            for k, s in shapes.items():
                t = torch.randn(s, generator=torch.Generator().manual_seed(len(k) * 7919 + sum(map(ord, k)))) * 0.02
                if j:
                    shared = torch.randn(s, generator=torch.Generator().manual_seed(sum(map(ord, k)) + 13 * (j % 3)))
                    t += 0.002 * shared + 0.002 * torch.randn(s, generator=torch.Generator().manual_seed(1000 * j + len(k)))
                w.add(k, t)
    return paths

PAIRWISE = r'''
import sys, json, itertools, torch
from safetensors.torch import load_file
torch.set_num_threads(1)
base_p, *models = sys.argv[1:]
def flat_delta(p, base):
    sd = load_file(p + "/model.safetensors")                       # the whole model in memory
    return torch.cat([(sd[k].float() - base[k].float()).reshape(-1) for k in sorted(base)])
import time
t0 = time.perf_counter()
K = [[1.0] * len(models) for _ in models]
for i, j in itertools.combinations(range(len(models)), 2):
    base = load_file(base_p + "/model.safetensors")
    a, b = flat_delta(models[i], base), flat_delta(models[j], base)
    del base
    a, b = a.double() - a.double().mean(), b.double() - b.double().mean()
    K[i][j] = K[j][i] = float((a @ b) / (a.norm() * b.norm()))
    del a, b
print("RESULT " + json.dumps({"K": K, "compute": time.perf_counter() - t0}))
'''

ONEPASS = r'''
import sys, json, torch
from mergelab.kinship import kinship_matrix
torch.set_num_threads(1)
base_p, *models = sys.argv[1:]
import time
t0 = time.perf_counter()
K = kinship_matrix(models, base_p, "pcc", threads=2)
print("RESULT " + json.dumps({"K": K.values.tolist(), "compute": time.perf_counter() - t0}))
'''

DASK = r'''
import sys, json, time, torch
from mergelab.kinship import kinship_matrix
import distributed
torch.set_num_threads(1)
base_p, *models = sys.argv[1:]
if __name__ == "__main__":
    t = time.perf_counter(); local = kinship_matrix(models, base_p, "pcc", threads=2); t_local = time.perf_counter() - t
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  silence_logs=40) as cl, distributed.Client(cl) as c:
        kinship_matrix(models[:2], base_p, "pcc", client=c)          # warm the workers (imports)
        t = time.perf_counter(); remote = kinship_matrix(models, base_p, "pcc", client=c); t_dask = time.perf_counter() - t
    print("RESULT " + json.dumps({"local": t_local, "dask": t_dask, "maxdiff": float((local - remote).abs().max().max())}))
'''

WRAP = ("import resource, subprocess, sys, time, json; t = time.perf_counter(); "
        "r = subprocess.run(sys.argv[1:], capture_output=True, text=True); w = time.perf_counter() - t; "
        "res = [l for l in r.stdout.splitlines() if l.startswith('RESULT ')]; "
        "print('BENCH ' + json.dumps({'rc': r.returncode, 'wall': w, 'err': r.stderr[-2000:], "
        "'result': json.loads(res[-1][7:]) if res else None, "
        "'rss': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024}))")

def measured(code: str, args: list[str]) -> dict:
    r = subprocess.run([sys.executable, "-c", WRAP, sys.executable, "-c", code, *args], capture_output=True, text=True)
    out = json.loads([l for l in r.stdout.splitlines() if l.startswith("BENCH ")][-1][6:])
    if out["rc"] != 0: raise SystemExit(out["err"])
    return out

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ns", type=int, nargs="+", default=[4, 8, 16]); ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=256); ap.add_argument("--vocab", type=int, default=8000)
    ap.add_argument("--dask", action="store_true"); ap.add_argument("--workdir", default=None)
    a = ap.parse_args()
    d = Path(a.workdir or tempfile.mkdtemp(prefix="kinbench-")); d.mkdir(parents=True, exist_ok=True)
    paths = make_zoo(d, max(a.ns), a.layers, a.hidden, a.vocab)
    from mergelab.io import Checkpoint
    mb = Checkpoint.open(paths[0]).total_bytes / 2**20
    print(f"{max(a.ns)} fine-tunes + base, {mb:.0f} MiB each (fp32) in {d}")
    rows = []
    for n in a.ns:
        args = [str(paths[0])] + [str(p) for p in paths[1:n + 1]]
        one, pair = measured(ONEPASS, args), measured(PAIRWISE, args)
        diff = max(abs(x - y) for r1, r2 in zip(one["result"]["K"], pair["result"]["K"]) for x, y in zip(r1, r2))
        rows.append((n, one, pair, diff))
        oc, pc = one["result"]["compute"], pair["result"]["compute"]
        print(f"N={n:2d}: one-pass {oc:6.2f} s ({one['wall']:6.2f} s with start-up), {one['rss'] / 2**20:6.0f} MiB | "
              f"pairwise {pc:7.2f} s ({pair['wall']:7.2f} s), {pair['rss'] / 2**20:6.0f} MiB | "
              f"compute {oc / pc:.3f}x, wall {one['wall'] / pair['wall']:.3f}x, peak RSS {one['rss'] / pair['rss']:.3f}x, "
              f"max |ΔK| {diff:.1e}", flush=True)
    if len(rows) > 1:
        (n0, o0, p0, _), (n1, o1, p1, _) = rows[0], rows[-1]
        c = lambda r: r["result"]["compute"]
        print(f"scaling N {n0} -> {n1} ({n1 / n0:.0f}x models): one-pass compute {c(o1) / c(o0):.2f}x, "
              f"RSS {o1['rss'] / o0['rss']:.2f}x; pairwise compute {c(p1) / c(p0):.2f}x, RSS {p1['rss'] / p0['rss']:.2f}x")
    if a.dask:
        n = max(a.ns)
        r = measured(DASK, [str(paths[0])] + [str(p) for p in paths[1:n + 1]])["result"]
        print(f"dask, N={n}, 2-worker LocalCluster (processes, 1 thread each) vs local (2 threads): "
              f"{r['dask']:.2f} s vs {r['local']:.2f} s ({r['dask'] / r['local']:.2f}x), max |ΔK| {r['maxdiff']:.1e}")

if __name__ == "__main__":
    main()
