"""Rebuild the `tiny-llama` zoo (a 2-block Llama base and two fine-tunes on synthetic token tasks): `python data/zoo/build_tiny_llama.py [OUT]`.

Without OUT it rebuilds data/zoo/tiny-llama in place (the old directory is replaced only after the new one is complete).
About 15 s on one CPU core. Training runs in one thread with deterministic algorithms under a fixed seed, and on kernels
that do not depend on the processor: ATen's scalar kernels (`ATEN_CPU_CAPABILITY=default`) and MKL's conditional
numerical reproducibility (`MKL_CBWR=COMPATIBLE`), both set before torch is imported. Without them a rebuild on another
x86 processor (AVX2 instead of AVX-512, AMD instead of Intel) drifts by up to 0.007 nats after 300 steps. The sequences come from
`mergelab.zoo.tiny_llama_data` (the package's data, also what `load_zoo` evaluates on); the training is here."""
from __future__ import annotations
import argparse, json, shutil, time, sys
import os
from pathlib import Path
os.environ.update(ATEN_CPU_CAPABILITY="default", MKL_CBWR="COMPATIBLE")    # read once, when torch loads its kernels
import torch
from mergelab.evaluate import LMTask, evaluate
from mergelab.io import load_with_transformers
from mergelab.zoo import ZooError, TINY_LLAMA_TASKS, tiny_llama_data, token_ids_hash
sys.path.insert(0, str(Path(__file__).resolve().parent))     # the helpers next to this script, however it is loaded
from zoo_build import build_in_place

ARCH = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            tie_word_embeddings=False)

def tiny_llama(vocab: int, seq_len: int, seed: int):
    "A freshly initialised 2-block `LlamaForCausalLM` (`ARCH`), its weights drawn under `seed`."
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab, max_position_embeddings=seq_len, **ARCH))

def train(model, pools: dict[str, torch.Tensor], steps: int, seed: int, lr: float, bs: int):
    "Teacher-forced next-token training, AdamW at `lr`: each step `bs` sequences, an equal share drawn from each pool."
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        x = torch.cat([p[torch.randint(0, len(p), (bs // len(pools),), generator=g)] for p in pools.values()])
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad(); loss.backward(); opt.step()
        losses.append(loss.item())
    return model.eval(), losses

def _save(model, out: Path, meta: dict):
    model.save_pretrained(str(out), safe_serialization=True)
    cfg = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps(dict(cfg, mergelab_zoo=meta), indent=2, sort_keys=True) + "\n")

def build_tiny_llama_zoo(out: str | Path, *, seed: int = 0, vocab: int = 64, seq_len: int = 16, n_train: int = 1024,
                         n_eval: int = 64, base_steps: int = 150, expert_steps: int = 150, base_lr: float = 1e-2,
                         expert_lr: float = 1e-3, bs: int = 32) -> dict:
    """Train the `tiny-llama` zoo into `out` (a new directory); return the manifest it writes. The base: `base_steps`
    at `base_lr` on both tasks (half of each batch from each), from weights drawn under `seed`; expert `t` (the i-th
    task): a copy of the base, `expert_steps` at the gentler `expert_lr` on task `t` alone, data order under
    `seed + 1 + i` (gentle, so that the experts stay near the base and their merges are informative). Losses are
    measured on the held-out sequences with the saved files reloaded by `from_pretrained`, through `mergelab.evaluate`."""
    from transformers.utils import logging
    logging.set_verbosity_error(); logging.disable_progress_bar()
    out, t0 = Path(out), time.time()
    if out.exists() and any(out.iterdir()): raise ZooError(f"{out} exists and is not empty; give a new directory")
    if torch.backends.cpu.get_cpu_capability() != "DEFAULT":
        raise ZooError("torch was imported before this script set ATEN_CPU_CAPABILITY=default; run it as a script, "
                       "`python data/zoo/build_tiny_llama.py`, so that the build does not depend on the processor")
    threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1); torch.use_deterministic_algorithms(True)
    try:
        tmp = out.parent / f".{out.name}.building"
        shutil.rmtree(tmp, ignore_errors=True); tmp.mkdir(parents=True)
        data = tiny_llama_data(seed, vocab, seq_len, n_train, n_eval)
        pools = {t: v["train"] for t, v in data.items()}
        arch = f"LlamaForCausalLM, 2 blocks, hidden 64, vocabulary {vocab}, {seq_len}-token sequences"
        base, bl = train(tiny_llama(vocab, seq_len, seed), pools, base_steps, seed, base_lr, bs)
        _save(base, tmp / "base", dict(role="base", task=None, tasks=list(pools), seed=seed, steps=base_steps, architecture=arch))
        curves = {"base": bl}
        for i, t in enumerate(pools):
            ft = tiny_llama(vocab, seq_len, seed); ft.load_state_dict(base.state_dict())
            ft, curves[t] = train(ft, {t: pools[t]}, expert_steps, seed + 1 + i, expert_lr, bs)
            _save(ft, tmp / "experts" / t, dict(role="expert", task=t, seed=seed + 1 + i, steps=expert_steps, init="base",
                                                architecture=arch))
        tasks = [LMTask(t, v["eval"], batch_size=64) for t, v in data.items()]
        dirs = {"base": tmp / "base", **{t: tmp / "experts" / t for t in pools}}
        loss = {n: evaluate(load_with_transformers(p), tasks, progress=False).loss.round(6).to_dict() for n, p in dirs.items()}
        import transformers
        manifest = dict(
            zoo="tiny-llama", version=1, built_by="data/zoo/build_tiny_llama.py", seed=seed, vocab=vocab, seq_len=seq_len,
            n_train=n_train, n_eval=n_eval, architecture=dict(ARCH, vocab_size=vocab, max_position_embeddings=seq_len),
            models=dict(base=f"{base_steps} steps at lr {base_lr} on both tasks ({bs // len(pools)} sequences of each "
                             f"per step), from weights drawn under seed {seed}",
                        **{t: f"the base fine-tuned {expert_steps} steps at lr {expert_lr} on {t} alone ({bs} sequences "
                              f"per step), data order under seed {seed + 1 + i}" for i, t in enumerate(pools)}),
            training=dict(optimizer="AdamW (torch defaults otherwise)", base_lr=base_lr, expert_lr=expert_lr,
                          batch_size=bs, base_steps=base_steps, expert_steps=expert_steps, objective="teacher-forced next-token cross-entropy on every token",
                          threads=1, deterministic_algorithms=True,
                          kernels="ATEN_CPU_CAPABILITY=default, MKL_CBWR=COMPATIBLE (independent of the processor)"),
            data="mergelab.zoo.tiny_llama_data(seed, vocab, seq_len, n_train, n_eval)",
            tasks={t: dict(description=TINY_LLAMA_TASKS[t], n_train=len(v["train"]), n_eval=len(v["eval"]),
                           eval_sha256=token_ids_hash(v["eval"])) for t, v in data.items()},
            loss=loss, train_loss={n: dict(first=round(c[0], 4), last=round(sum(c[-5:]) / 5, 4)) for n, c in curves.items()},
            metric="mean teacher-forced next-token loss (nats) on the held-out sequences (mergelab.evaluate.LMTask)",
            torch=torch.__version__, transformers=transformers.__version__, build_seconds=round(time.time() - t0, 1))
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
        if out.exists(): out.rmdir()
        tmp.rename(out)
    finally:
        torch.set_num_threads(threads); torch.use_deterministic_algorithms(det)
    return manifest

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", nargs="?", default=str(Path(__file__).resolve().parent / "tiny-llama"))
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    out = Path(a.out)
    man = build_in_place(out, lambda tmp: build_tiny_llama_zoo(tmp, seed=a.seed))
    print(f"wrote {out} in {man['build_seconds']} s; held-out loss (rows: model, columns: task)")
    for n, row in man["loss"].items(): print(f"  {n:6s} " + "  ".join(f"{t} {v:.3f}" for t, v in row.items()))
