"""Benchmark: mergelab at real scale — a Llama-3.2-3B-shaped base and 3 fine-tunes, larger together than this machine's RAM.

Generates a base with Llama-3.2-3B's shapes (28 blocks, hidden 3072, FFN 8192, 24 query / 8 key-value heads, a tied
128256 × 3072 embedding: 3.21B parameters, 6.4 GB bf16) and 3 fine-tunes (base + small noise), one tensor at a time, in
2 GB shards. Then measures, each in a fresh process (wall time, peak RSS of that process): one streamed read of the four
checkpoints (the I/O floor), a TIES merge (`mergelab merge --max-memory 2GB`: the embedding merged in row blocks),
kinship (all 4 metrics from one statistics pass), the default interference report, and kinship on a 2-worker Dask
`LocalCluster` (peak RSS: the largest process); with `--mergekit PATH`, mergekit's TIES on the same YAML. Not a test.

    python benchmarks/scale_bench.py [--workdir DIR] [--mergekit /path/to/mergekit-yaml] [--only ties kinship ...]
    python benchmarks/scale_bench.py --layers 1 --vocab 1000      # a smoke run of the same steps
"""
from __future__ import annotations
import argparse, json, os, shutil, subprocess, sys, tempfile, time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from merge_bench import measured, diff_stats                       # one way to time a fresh process

LLAMA_3B = dict(vocab=128256, hidden=3072, inter=8192, layers=28, heads=24, kv_heads=8)

def shapes_of(vocab: int, hidden: int, inter: int, layers: int, heads: int, kv_heads: int) -> dict[str, tuple]:
    "Tensor shapes of a Llama with grouped-query attention and tied embeddings (no `lm_head.weight`)."
    kv = hidden // heads * kv_heads
    out = {"model.embed_tokens.weight": (vocab, hidden), "model.norm.weight": (hidden,)}
    for i in range(layers):
        p = f"model.layers.{i}."
        out.update({p + "input_layernorm.weight": (hidden,), p + "post_attention_layernorm.weight": (hidden,),
                    p + "self_attn.q_proj.weight": (hidden, hidden), p + "self_attn.k_proj.weight": (kv, hidden),
                    p + "self_attn.v_proj.weight": (kv, hidden), p + "self_attn.o_proj.weight": (hidden, hidden),
                    p + "mlp.gate_proj.weight": (inter, hidden), p + "mlp.up_proj.weight": (inter, hidden),
                    p + "mlp.down_proj.weight": (hidden, inter)})
    return out

def make_models(d: Path, n_ft: int = 3, noise: float = 0.002, shard: int = 2 * 10**9, **shape) -> list[Path]:
    "Write the base and `n_ft` fine-tunes as sharded bf16 HF checkpoints, one tensor in memory at a time."
    from transformers import LlamaConfig
    from mergelab.io import ShardedWriter
    s = {**LLAMA_3B, **shape}
    cfg = LlamaConfig(vocab_size=s["vocab"], hidden_size=s["hidden"], intermediate_size=s["inter"],
                      num_hidden_layers=s["layers"], num_attention_heads=s["heads"], num_key_value_heads=s["kv_heads"],
                      tie_word_embeddings=True, torch_dtype="bfloat16", architectures=["LlamaForCausalLM"])
    shapes = shapes_of(**s)
    paths = [d / "base"] + [d / f"ft_{i}" for i in range(n_ft)]
    for j, p in enumerate(paths):
        t0 = time.perf_counter()
        with ShardedWriter(p, shard, config=cfg.to_dict(), dtype=torch.bfloat16) as w:
            for i, (k, sh) in enumerate(shapes.items()):
                t = torch.randn(sh, generator=torch.Generator().manual_seed(i)) * 0.02 if len(sh) > 1 else torch.ones(sh)
                if j: t += noise * torch.randn(sh, generator=torch.Generator().manual_seed(100_003 * j + i))
                w.add(k, t.to(torch.bfloat16)); del t
        print(f"  wrote {p.name} in {time.perf_counter() - t0:.0f} s", flush=True)
    n = sum(torch.Size(x).numel() for x in shapes.values())
    print(f"generated {len(paths)} checkpoints of {n / 1e9:.2f}B params (bf16) in {d}", flush=True)
    return paths

READ = """
import os, sys
buf = bytearray(64 * 2**20); n = 0
for p in sys.argv[1:]:
    for f in sorted(os.listdir(p)):
        if not f.endswith('.safetensors'): continue
        with open(os.path.join(p, f), 'rb', buffering=0) as fh:
            while (k := fh.readinto(buf)): n += k
print(n)
"""

KINSHIP = """
import json, sys
from mergelab.kinship import delta_statistics, kinship_matrix
base, *models = sys.argv[1:]
st = delta_statistics(models, base, progress=False)
out = {m: kinship_matrix(st, metric=m).values.tolist() for m in ("pcc", "cosine", "abs_cosine", "euclidean")}
print("RESULT " + json.dumps(out))
"""

DASK_KINSHIP = """
import json, sys
from dask.distributed import Client, LocalCluster
from mergelab.kinship import delta_statistics, kinship_matrix
base, *models = sys.argv[1:]
with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cl, Client(cl) as c:
    st = delta_statistics(models, base, progress=False, client=c)
print("RESULT " + json.dumps({"pcc": kinship_matrix(st, metric="pcc").values.tolist()}))
"""

INTERFERENCE = """
import json, sys, warnings
from mergelab.interference import interference_statistics
base, *models = sys.argv[1:]
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    st = interference_statistics(models, base, progress=False)
g = st.table(None).set_index("measure").value
print("RESULT " + json.dumps({"row_blocked": len(st.row_blocked), "tensors": len(st.tensors),
                              "measures": {k: float(v) for k, v in g.items()}}))
"""

def run_py(code: str, args: list[Path], env) -> dict:
    "A fresh `python -c code args` measured by merge_bench's wrapper, with its RESULT line parsed."
    out = Path(tempfile.mkstemp(suffix=".log")[1])
    r = measured(["bash", "-c", f'"$0" -c "$1" "${{@:2}}" > {out}', sys.executable, code, *map(str, args)], env)
    res = [l for l in out.read_text().splitlines() if l.startswith("RESULT ")]
    r["result"] = json.loads(res[-1][7:]) if res else None
    return r

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default=None); ap.add_argument("--mergekit", default=None)
    ap.add_argument("--fine-tunes", type=int, default=3); ap.add_argument("--layers", type=int, default=LLAMA_3B["layers"])
    ap.add_argument("--max-shard-size", default="1GB", help="output shard size of both merges (mergekit's writer buffers one)")
    ap.add_argument("--max-memory", default="2GB", help="mergelab's working-memory budget for the TIES merge ('' = auto)")
    ap.add_argument("--vocab", type=int, default=LLAMA_3B["vocab"], help="smaller for a smoke run")
    ap.add_argument("--only", nargs="*", default=["read", "ties", "kinship", "interference", "dask", "mergekit"])
    a = ap.parse_args()
    d = Path(a.workdir or tempfile.mkdtemp(prefix="scalebench-")); d.mkdir(parents=True, exist_ok=True)
    paths = [d / "base"] + [d / f"ft_{i}" for i in range(a.fine_tunes)]
    if not all((p / "config.json").exists() for p in paths):
        for p in paths: shutil.rmtree(p, ignore_errors=True)
        t0 = time.perf_counter(); make_models(d, a.fine_tunes, layers=a.layers, vocab=a.vocab)
        print(f"generation: {time.perf_counter() - t0:.0f} s", flush=True)
    size = sum(f.stat().st_size for p in paths for f in p.glob("*.safetensors"))
    w = 1.0 / a.fine_tunes
    models = "".join(f"  - model: {p}\n    parameters: {{weight: {w}, density: 0.5}}\n" for p in paths[1:])
    (d / "ties.yml").write_text(f"merge_method: ties\nbase_model: {paths[0]}\nmodels:\n{models}dtype: bfloat16\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    from mergelab.io import parse_size
    exe = shutil.which("mergelab") or str(Path(sys.executable).parent / "mergelab")
    rows = []
    def report(name, r, extra=""):
        rows.append((name, r["wall"], r["rss"], extra))
        print(f"{name:28s} wall {r['wall']:8.1f} s   peak RSS {r['rss'] / 2**30:6.3f} GiB   {extra}", flush=True)
    print(f"{len(paths)} checkpoints, {size / 1e9:.1f} GB on disk; machine RAM "
          f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.1f} GiB, load {os.getloadavg()[0]:.1f}", flush=True)
    if "read" in a.only:
        r = run_py(READ, paths, env); report("streamed read of all files", r, f"{size / r['wall'] / 1e9:.2f} GB/s")
    if "ties" in a.only:
        shutil.rmtree(d / "out_mergelab", ignore_errors=True)
        try: r = measured([exe, "merge", str(d / "ties.yml"), str(d / "out_mergelab"), "--no-progress", "--seed", "0",
                           "--max-shard-size", a.max_shard_size, *(["--max-memory", a.max_memory] if a.max_memory else [])], env)
        except SystemExit as e:                  # e.g. the memory guard's refusal: print it, go on with the analyses
            print("TIES merge (mergelab) failed:\n" + "\n".join(str(e).strip().splitlines()[-6:]), flush=True)
        else:
            report("TIES merge (mergelab)", r, f"--max-memory {a.max_memory}" if a.max_memory else "planned by the guard")
            from mergelab.config import build_plan                  # the memory guard's figure for the same plan
            est = build_plan(d / "ties.yml", prepare=False, max_memory=a.max_memory or None).memory
            base = measured([exe, "validate", str(d / "ties.yml")], env)["rss"]
            print(f"  memory guard: {est.peak / 2**30:.2f} GiB beyond the interpreter ({base / 2**30:.2f} GiB, `mergelab "
                  f"validate`): predicted peak RSS {(base + est.peak) / 2**30:.2f} GiB; measured growth "
                  f"{(r['rss'] - base) / 2**30:.2f} GiB; parts (MiB) " +
                  ", ".join(f"{k} {v / 2**20:.0f}" for k, v in est.parts.items()), flush=True)
    if "kinship" in a.only:
        r = run_py(KINSHIP, paths, env); report("kinship, 4 metrics", r, f"pcc[0][1] = {r['result']['pcc'][0][1]:.4f}")
    if "interference" in a.only:
        r = run_py(INTERFERENCE, paths, env); m = r["result"]
        report("interference report", r, f"{m['row_blocked']} of {m['tensors']} tensors in row blocks; "
               f"sign conflict rate {m['measures']['sign_conflict_rate']:.3f}")
    if "dask" in a.only:
        r = run_py(DASK_KINSHIP, paths, env); report("kinship on 2 Dask workers", r, f"pcc[0][1] = {r['result']['pcc'][0][1]:.4f}")
    if a.mergekit and "mergekit" in a.only:
        shutil.rmtree(d / "out_mergekit", ignore_errors=True)
        r = measured([a.mergekit, str(d / "ties.yml"), str(d / "out_mergekit"), "--random-seed", "0", "--quiet",
                      "--out-shard-size", str(parse_size(a.max_shard_size) // 2)], env)    # parameters of bf16
        report("TIES merge (mergekit)", r)
        if (d / "out_mergelab").exists():
            n, mx = diff_stats(d / "out_mergelab", d / "out_mergekit")
            t = [x for x in rows if x[0].startswith("TIES merge (mergelab")]
            if t: print(f"mergelab/mergekit TIES: wall {t[0][1] / r['wall']:.3f}x, peak RSS {t[0][2] / r['rss']:.3f}x, "
                        f"outputs differ in {n} entries (max |diff| {mx:.3g})")
    print(f"load average at the end: {os.getloadavg()}")

if __name__ == "__main__":
    main()
