"""Benchmark: the data-aware methods' memory estimates against measured peak RSS, each pass in a fresh process.

Generates two bf16 families (a base and 3 fine-tunes = base + small noise): a Llama of 132.7M parameters (hidden 1024,
MLP 4096, vocabulary 32000, 4 layers; `merge_bench.make_models`) and a GPT-2 of 67.3M (768 wide, 4 layers, vocabulary
50257, head tied to the embedding). For each family and pass (RegMean's Grams and the empirical Fisher of one model,
RegMean++ and AdaMerging over the three fine-tunes) it runs the pass alone in a fresh process on random tokens and
prints the peak RSS growth beside `data_pass_memory`. Then it merges RegMean on the Llama family (Grams cached) with
one and two threads, beside the memory guard's estimate (`estimate_peak_memory`). Not a test.

    python benchmarks/data_pass_memory.py [--workdir DIR] [--batch 8] [--tokens 128] [--quick]
"""
from __future__ import annotations
import argparse, json, subprocess, sys, tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import merge_bench as bench

PASS = r'''
import json, resource, sys, tempfile, time, torch
torch.set_num_threads(2)
from pathlib import Path
from transformers import GPT2LMHeadModel, LlamaForCausalLM         # imported before the baseline
from mergelab.io import open_model, current_rss
from mergelab.data_aware import (regmean_pp_grams, _ada_fit, auto_build, TaskData, _model_statistics, data_pass_memory,
                                 fisher_information, gram_matrices)
method, d, B, T = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
cks, base = [open_model(d / f"ft_{i}") for i in range(3)], open_model(d / "base")
V = cks[0].config["vocab_size"]
g = torch.Generator().manual_seed(0)
tasks = [TaskData(f"t{i}", {"input_ids": torch.randint(0, V, (B, T), generator=g),
                            "attention_mask": torch.ones(B, T, dtype=torch.long)}) for i in range(3)]
build = auto_build(cks[0])
one = method in ("regmean", "fisher")
est = data_pass_memory(method, cks[:1] if one else cks, tasks[:1] if one else tasks, batch_size=B).peak
r0, t = current_rss(), time.perf_counter()
out = Path(tempfile.mkdtemp()) / "s.safetensors"
if method == "regmean": _model_statistics(("gram", cks[0], tasks[0], build, 0, dict(batch_size=B, num_batches=1), out, None))
elif method == "fisher":
    _model_statistics(("fisher", cks[0], tasks[0], build, 0, dict(estimator="empirical", batch_size=B, num_batches=1), out, None))
elif method == "regmean_pp": regmean_pp_grams(cks, tasks, build, batch_size=B, num_batches=1, progress=False)
else: _ada_fit(cks, base, tasks, build, steps=2, batch_size=B, progress=False)
grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - r0
print("RESULT " + json.dumps({"wall": time.perf_counter() - t, "grew": grew, "est": est}))
'''

MERGE = r'''
import json, resource, sys
from transformers import LlamaForCausalLM
from mergelab.config import merge_config, estimate_peak_memory
from mergelab.io import current_rss
cfg, out, threads = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3])
est = estimate_peak_memory(cfg, threads=threads).peak
r0 = current_rss()
merge_config(cfg, out, overwrite=True, threads=threads, progress=False)
print("RESULT " + json.dumps({"grew": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - r0, "est": est}))
'''

def run(code: str, *args) -> dict:
    r = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True)
    line = [l for l in r.stdout.splitlines() if l.startswith("RESULT ")]
    if r.returncode or not line: raise SystemExit(f"failed: {args}\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}")
    return json.loads(line[-1][7:])

def make_gpt2(d: Path) -> None:
    "A GPT-2 of 67.3M parameters in bf16 and 3 fine-tunes (base + noise), saved by transformers."
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(0)
    m = GPT2LMHeadModel(GPT2Config(n_embd=768, n_layer=4, n_head=12, vocab_size=50257, n_positions=512)).to(torch.bfloat16)
    m.save_pretrained(d / "base")
    for i in range(3):
        with torch.no_grad():
            for p in m.parameters(): p.add_(0.002 * torch.randn_like(p))
        m.save_pretrained(d / f"ft_{i}")

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--quick", action="store_true", help="the GPT-2 family, RegMean and Fisher only")
    a = ap.parse_args()
    d = a.workdir or Path(tempfile.mkdtemp(prefix="datapass-"))
    fams = {"GPT-2 67.3M": d / "gpt2"} if a.quick else {"Llama 132.7M": d / "llama", "GPT-2 67.3M": d / "gpt2"}
    if "Llama 132.7M" in fams and not (fams["Llama 132.7M"] / "base").exists():
        bench.make_models(fams["Llama 132.7M"], layers=4, hidden=1024, inter=4096, vocab=32000, n_ft=3, noise=0.002)
    if not (fams["GPT-2 67.3M"] / "base").exists(): make_gpt2(fams["GPT-2 67.3M"])
    methods = ("regmean", "fisher") if a.quick else ("regmean", "fisher", "regmean_pp", "adamerging")
    print(f"| family | pass | batch × tokens | measured (MiB) | estimated (MiB) | ratio | wall (s) |\n|---|---|---|---|---|---|---|")
    for fam, p in fams.items():
        for m in methods:
            r = run(PASS, m, p, a.batch, a.tokens)
            print(f"| {fam} | {m} | {a.batch} × {a.tokens} | {r['grew'] / 2**20:.0f} | {r['est'] / 2**20:.0f} | "
                  f"{r['est'] / r['grew']:.2f} | {r['wall']:.1f} |", flush=True)
    if a.quick: return
    import torch
    from safetensors.torch import save_file
    p = fams["Llama 132.7M"]
    g = torch.Generator().manual_seed(0)
    save_file({f"ft_{i}": torch.randint(0, 32000, (a.batch, a.tokens), generator=g) for i in range(3)}, str(d / "ids.safetensors"))
    cfg = {"merge_method": "regmean", "base_model": str(p / "base"), "models": [{"model": str(p / f"ft_{i}")} for i in range(3)],
           "dtype": "bfloat16", "parameters": {"data": {"path": str(d / "ids.safetensors")}, "batch_size": a.batch,
                                               "num_batches": 1, "cache_dir": str(d / "cache")}}
    run(MERGE, json.dumps(cfg), d / "out", 1)                          # computes and caches the Grams
    for threads in (1, 2):
        r = run(MERGE, json.dumps(cfg), d / "out", threads)
        print(f"RegMean merge, Llama 132.7M, Grams cached, {threads} thread(s): measured {r['grew'] / 2**30:.2f} GiB, "
              f"estimated {r['est'] / 2**30:.2f} GiB ({r['est'] / r['grew']:.2f}x)", flush=True)

if __name__ == "__main__":
    main()
