"""Kinship at LLM vocabulary size: 8 fine-tunes whose embedding is a Llama-3 vocabulary (128256 × 2048, bf16, 525 MB
per model), every metric from one streaming pass, against one streamed read of the same files.

Three measurements, each in a fresh process (peak RSS from ru_maxrss):
1. `read`: every byte of the 9 files read once in 64 MiB positional reads (the I/O floor of any pass), twice, the
   faster kept (the first may come from disk; every later measurement reads the page cache);
2. `kinship`: `delta_statistics` (row blocks under the default `max_memory`) and the four metrics from it;
3. `reference`: an independent float64 computation with numpy over memory-mapped files (the deltas of 2048 rows of all
   models at a time; means first, then Gram, centred co-moments and squared distances), compared entry by entry.
The files are written once (about 5 GB, `--workdir` keeps them for reruns). Not a test.

    python benchmarks/kinship_vocab_bench.py [--n 8] [--vocab 128256] [--hidden 2048] [--workdir DIR]
"""
from __future__ import annotations
import argparse, json, os, subprocess, sys, tempfile, time
from pathlib import Path
import torch
sys.path.insert(0, str(Path(__file__).resolve().parent))
from kinship_bench import measured          # a fresh process per measurement, peak RSS from ru_maxrss

KEY, NORM = "model.embed_tokens.weight", "model.norm.weight"

def make_models(d: Path, n: int, vocab: int, hidden: int) -> list[Path]:
    "A base and `n` fine-tunes (base + a shared direction of 3 families + own noise), bf16, one file each."
    from safetensors.torch import save_file
    torch.set_num_threads(2)
    paths = [d / "base"] + [d / f"ft_{i:02d}" for i in range(n)]
    base = None
    for j, p in enumerate(paths):
        if (p / "model.safetensors").exists(): continue
        if base is None: base = torch.randn(vocab, hidden, generator=torch.Generator().manual_seed(0)) * 0.02
        t = base.clone()
        if j:
            t += 0.002 * torch.randn(vocab, hidden, generator=torch.Generator().manual_seed(100 + j % 3))
            t += 0.002 * torch.randn(vocab, hidden, generator=torch.Generator().manual_seed(1000 + j))
        p.mkdir(parents=True, exist_ok=True)
        save_file({KEY: t.bfloat16(), NORM: torch.ones(hidden, dtype=torch.bfloat16) + 0.01 * j}, str(p / "model.safetensors"))
        del t
    return paths

READ = r'''
import os, sys, json, time
t = time.perf_counter(); n = 0
buf = bytearray(64 << 20)
for p in sys.argv[1:]:
    fd, off = os.open(p + "/model.safetensors", os.O_RDONLY), 0
    while (k := os.preadv(fd, [buf], off)) > 0: off += k
    n += off; os.close(fd)
print("RESULT " + json.dumps({"seconds": time.perf_counter() - t, "bytes": n}))
'''

KINSHIP = r'''
import sys, json, time, torch
from mergelab.kinship import delta_statistics, kinship_matrix, statistics_block, METRICS
base, *models = sys.argv[1:]
t = time.perf_counter()
st = delta_statistics(models, base, progress=False)
out = {m: kinship_matrix(st, metric=m).values.tolist() for m in METRICS}
print("RESULT " + json.dumps({"seconds": time.perf_counter() - t, "K": out, "block": statistics_block(None, 2)}))
'''

REFERENCE = r'''
import sys, json, time, numpy as np
from mergelab.io import read_safetensors_header
base, *models = sys.argv[1:]
def view(p, key):
    f = p + "/model.safetensors"
    info = read_safetensors_header(f)[0][key]                      # absolute byte offsets
    return np.memmap(f, dtype=np.uint16, mode="r", offset=info["offsets"][0], shape=tuple(info["shape"]))
def f64(u16): return (u16.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
t = time.perf_counter()
N = len(models); G = np.zeros((N, N)); C = np.zeros((N, N)); D = np.zeros((N, N)); S = np.zeros(N); n = 0
for key in ("model.embed_tokens.weight", "model.norm.weight"):
    B, Ms = view(base, key), [view(m, key) for m in models]
    rows = B.shape[0] if B.ndim > 1 else 1
    for s in range(0, rows, 2048):
        b = f64(B[s:s + 2048]).reshape(-1)
        X = np.stack([f64(M[s:s + 2048]).reshape(-1) - b for M in Ms])
        G += X @ X.T; S += X.sum(1); n += X.shape[1]
        for i in range(N): D[i] += ((X - X[i]) ** 2).sum(1)
mean = S / n
for key in ("model.embed_tokens.weight", "model.norm.weight"):
    B, Ms = view(base, key), [view(m, key) for m in models]
    rows = B.shape[0] if B.ndim > 1 else 1
    for s in range(0, rows, 2048):
        b = f64(B[s:s + 2048]).reshape(-1)
        X = np.stack([f64(M[s:s + 2048]).reshape(-1) - b for M in Ms]) - mean[:, None]
        C += X @ X.T
def corr(M):
    d = np.sqrt(np.diag(M)); return np.clip(M / np.outer(d, d), -1, 1)
K = {"pcc": corr(C), "cosine": corr(G), "abs_cosine": np.abs(corr(G)), "euclidean": np.sqrt(D)}
print("RESULT " + json.dumps({"seconds": time.perf_counter() - t, "K": {m: v.tolist() for m, v in K.items()}}))
'''

def load() -> str:
    return open("/proc/loadavg").read().split()[0] if os.path.exists("/proc/loadavg") else "?"

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=8); ap.add_argument("--vocab", type=int, default=128256)
    ap.add_argument("--hidden", type=int, default=2048); ap.add_argument("--workdir", default=None)
    a = ap.parse_args()
    d = Path(a.workdir or tempfile.mkdtemp(prefix="kinvocab-")); d.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    paths = make_models(d, a.n, a.vocab, a.hidden)
    size = sum((p / "model.safetensors").stat().st_size for p in paths)
    print(f"{a.n} fine-tunes + base, {a.vocab} × {a.hidden} bf16 embedding, {size / 2**30:.2f} GiB in all, in {d} "
          f"(written in {time.perf_counter() - t:.0f} s)", flush=True)
    args = [str(p) for p in paths]
    rd = min((measured(READ, args) for _ in range(2)), key=lambda r: r["result"]["seconds"])
    kin, ref = measured(KINSHIP, args), measured(REFERENCE, args)
    diff = max(abs(x - y) for m in kin["result"]["K"] for r1, r2 in zip(kin["result"]["K"][m], ref["result"]["K"][m])
               for x, y in zip(r1, r2))
    rs, ks = rd["result"]["seconds"], kin["result"]["seconds"]
    print(f"load average {load()}")
    print(f"streamed read of the files: {rs:.1f} s ({rd['result']['bytes'] / rs / 2**30:.2f} GiB/s), peak RSS {rd['rss'] / 2**30:.2f} GiB")
    print(f"kinship, all 4 metrics: {ks:.1f} s = {ks / rs:.2f}x the read; peak RSS {kin['rss'] / 2**30:.2f} GiB "
          f"(row blocks of {kin['result']['block'] / 2**20:.0f} MiB of float64 deltas)")
    print(f"numpy float64 reference: {ref['result']['seconds']:.1f} s, peak RSS {ref['rss'] / 2**30:.2f} GiB; "
          f"max |ΔK| over the 4 metrics {diff:.1e}")

if __name__ == "__main__":
    main()
