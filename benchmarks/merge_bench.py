"""Benchmark: mergelab TIES vs mergekit-yaml on the same config, alternating runs.

Generates Llama-architecture checkpoints (default ≈172M params, bf16, 3 shards each: a base and 3 fine-tunes =
base + small noise), then times `mergelab merge` and, when mergekit is available, `mergekit-yaml` on the same YAML,
alternating, each in a fresh process whose peak RSS is measured the same way (ru_maxrss of a single child).
Prints the wall-time ratio, the peak-RSS ratio and the max |difference| of the outputs. Not a test.

    python benchmarks/merge_bench.py [--layers 16] [--repeats 2] [--mergekit /path/to/mergekit-yaml] [--method ties|dare_ties|linear|slerp|nuslerp|nearswap|arcee_fusion|...]
"""
from __future__ import annotations
import argparse, json, os, shutil, subprocess, sys, tempfile, time
from pathlib import Path

import torch

WRAP = ("import resource, subprocess, sys, time, json; t = time.perf_counter(); "
        "r = subprocess.run(sys.argv[1:]); w = time.perf_counter() - t; "
        "print('BENCH ' + json.dumps({'rc': r.returncode, 'wall': w, "
        "'rss': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024}))")

def measured(cmd: list[str], env=None) -> dict:
    "Run `cmd` as the only child of a fresh wrapper process: wall time and that child's peak RSS."
    r = subprocess.run([sys.executable, "-c", WRAP, *cmd], capture_output=True, text=True, env=env)
    line = [l for l in r.stdout.splitlines() if l.startswith("BENCH ")]
    if not line or json.loads(line[-1][6:])["rc"] != 0:
        raise SystemExit(f"command failed: {' '.join(cmd)}\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}")
    return json.loads(line[-1][6:])

def make_models(d: Path, layers: int, hidden: int, inter: int, vocab: int, n_ft: int, noise: float) -> list[Path]:
    "Write a base and `n_ft` fine-tunes (base + noise) as 3-shard bf16 HF checkpoints, one tensor at a time."
    from transformers import LlamaConfig
    from mergelab.io import ShardedWriter
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                      num_attention_heads=hidden // 64, num_key_value_heads=hidden // 64, tie_word_embeddings=False,
                      torch_dtype="bfloat16", architectures=["LlamaForCausalLM"])
    shapes = {"model.embed_tokens.weight": (vocab, hidden), "lm_head.weight": (vocab, hidden), "model.norm.weight": (hidden,)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes.update({p + "input_layernorm.weight": (hidden,), p + "post_attention_layernorm.weight": (hidden,),
                       **{p + f"self_attn.{x}_proj.weight": (hidden, hidden) for x in "qkvo"},
                       p + "mlp.gate_proj.weight": (inter, hidden), p + "mlp.up_proj.weight": (inter, hidden),
                       p + "mlp.down_proj.weight": (hidden, inter)})
    total = sum(torch.Size(s).numel() for s in shapes.values())
    shard = total * 2 // 3 + 1
    paths = [d / "base"] + [d / f"ft_{i}" for i in range(n_ft)]
    for j, p in enumerate(paths):
        with ShardedWriter(p, shard, config=cfg.to_dict(), dtype=torch.bfloat16) as w:
            for k, s in shapes.items():
                g = torch.Generator().manual_seed(hash(k) % 2**31)
                t = torch.randn(s, generator=g) * 0.02 if len(s) > 1 else torch.ones(s)
                if j: t += noise * torch.randn(s, generator=torch.Generator().manual_seed(1000 * j + len(k)))
                w.add(k, t.to(torch.bfloat16))
    print(f"generated {len(paths)} checkpoints of {total / 1e6:.1f}M params (bf16, 3 shards each) in {d}")
    return paths

def diff_stats(a: Path, b: Path) -> tuple[int, float]:
    "Number of differing entries and max |difference| between two checkpoints, streamed."
    from mergelab.io import Checkpoint
    ca, cb = Checkpoint.open(a), Checkpoint.open(b)
    assert set(ca.keys()) == set(cb.keys()), "outputs have different tensors"
    n, mx = 0, 0.0
    for k in ca.keys():
        x, y = ca.get(k, torch.float32), cb.get(k, torch.float32)
        n += int((x != y).sum()); mx = max(mx, float((x - y).abs().max()))
    return n, mx

def total_params(a: Path) -> int:
    from mergelab.io import Checkpoint
    c = Checkpoint.open(a)
    return sum(c.numel(k) for k in c.keys())

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=16); ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--inter", type=int, default=2304); ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--fine-tunes", type=int, default=3); ap.add_argument("--noise", type=float, default=0.002)
    ap.add_argument("--repeats", type=int, default=2); ap.add_argument("--method", default="ties")
    ap.add_argument("--density", type=float, default=0.5); ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--mergekit", default=shutil.which("mergekit-yaml"), help="path to mergekit-yaml (optional)")
    ap.add_argument("--workdir", default=None)
    a = ap.parse_args()
    d = Path(a.workdir or tempfile.mkdtemp(prefix="mergebench-"))
    d.mkdir(parents=True, exist_ok=True)
    paths = [d / "base"] + [d / f"ft_{i}" for i in range(a.fine_tunes)]
    if not all((p / "config.json").exists() for p in paths):
        for p in paths: shutil.rmtree(p, ignore_errors=True)
        make_models(d, a.layers, a.hidden, a.inter, a.vocab, a.fine_tunes, a.noise)
    w = 1.0 / a.fine_tunes
    if a.method == "linear":                 # an average of the fine-tunes (no base)
        models = "".join(f"  - model: {p}\n    parameters: {{weight: {w}}}\n" for p in paths[1:])
        text = f"merge_method: linear\nmodels:\n{models}dtype: bfloat16\n"
    elif a.method == "slerp":                # base and the first fine-tune, t = 0.5
        text = (f"merge_method: slerp\nbase_model: {paths[0]}\nmodels:\n  - model: {paths[0]}\n  - model: {paths[1]}\n"
                f"parameters: {{t: 0.5}}\ndtype: bfloat16\n")
    elif a.method in ("nearswap", "arcee_fusion"):   # the base and the first fine-tune
        extra = "parameters: {t: 0.001}\n" if a.method == "nearswap" else ""
        text = (f"merge_method: {a.method}\nbase_model: {paths[0]}\nmodels:\n  - model: {paths[0]}\n"
                f"  - model: {paths[1]}\n{extra}dtype: bfloat16\n")
    elif a.method == "nuslerp":              # two fine-tunes, as task vectors of the base, equal weights
        models = "".join(f"  - model: {p}\n    parameters: {{weight: 0.5}}\n" for p in paths[1:3])
        text = f"merge_method: nuslerp\nbase_model: {paths[0]}\nmodels:\n{models}dtype: bfloat16\n"
    else:
        models = "".join(f"  - model: {p}\n    parameters: {{weight: {w}, density: {a.density}}}\n" for p in paths[1:])
        text = f"merge_method: {a.method}\nbase_model: {paths[0]}\nmodels:\n{models}dtype: bfloat16\n"
    (d / "config.yml").write_text(text)
    # mergelab's default picks among entries tied at the k-th magnitude as mergekit's argsort does (sorting only where
    # the choice is ambiguous); `tie_break: index` never sorts (tied entries in index order): timed as a variant
    fast = a.method == "ties"
    if fast: (d / "index.yml").write_text((d / "config.yml").read_text() + "parameters: {tie_break: index}\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    exe = shutil.which("mergelab") or str(Path(sys.executable).parent / "mergelab")
    ml_cmd = lambda o, cfg="config.yml": [exe, "merge", str(d / cfg), str(o), "--overwrite",
                        "--no-progress", "--threads", str(a.threads), "--seed", "0"]
    mk_cmd = lambda o: [a.mergekit, str(d / "config.yml"), str(o), "--random-seed", "0", "--quiet"]
    runs = {"mergelab": [], "mergelab-index": [], "mergekit": []}
    for r in range(a.repeats):
        runs["mergelab"].append(measured(ml_cmd(d / "out_mergelab"), env))
        if fast: runs["mergelab-index"].append(measured(ml_cmd(d / "out_index", "index.yml"), env))
        if a.mergekit:
            shutil.rmtree(d / "out_mergekit", ignore_errors=True)
            runs["mergekit"].append(measured(mk_cmd(d / "out_mergekit"), env))
    best = {k: (min(x["wall"] for x in v), max(x["rss"] for x in v)) for k, v in runs.items() if v}
    print(f"\n{a.method}, {a.fine_tunes} fine-tunes + base, {a.repeats} alternating runs each (best wall, worst peak RSS)")
    for k, (wall, rss) in best.items(): print(f"  {k:16s} wall {wall:7.2f} s   peak RSS {rss / 2**30:6.3f} GiB")
    if "mergekit" in best:
        for k, out in (("mergelab", "out_mergelab"), ("mergelab-index", "out_index")):
            if k not in best: continue
            n, mx = diff_stats(d / out, d / "out_mergekit")
            print(f"  {k}/mergekit: wall {best[k][0] / best['mergekit'][0]:.3f}x, peak RSS {best[k][1] / best['mergekit'][1]:.3f}x, "
                  f"outputs differ in {n} of {total_params(d / out)} entries (max |diff| {mx:.3g})")
    else: print("  mergekit not found (pass --mergekit PATH): no ratio")

if __name__ == "__main__":
    main()
