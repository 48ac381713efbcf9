"""Delta Activations: batched probes vs one prompt at a time, on 15 LoRA adapters of a tiny Llama (issue 7, acceptance 3).

Not a test: prints the equivalence (min cosine) and the speed ratio of two batched modes against the one-prompt-at-a-time
loop: probes batched per adapter (ΔW merged in place, `stack=1`), and probes and all 15 adapters in one batch
(`stack=15`, per-row LoRA hooks). Offline: a random tiny Llama (vocab ~250, 2 layers,
hidden 64) with a word-level tokenizer, and 15 random PEFT-format LoRA adapters (r 8, all linear projections).
Usage: python benchmarks/delta_activations_bench.py [--threads 1] [--repeats 3] [--hidden 64]
"""
import argparse, json, tempfile, time
from pathlib import Path
import numpy as np
import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, models as tk_models, pre_tokenizers, processors
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
from mergelab.activations import GENERIC_PROBES, DeltaActivations

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

def tokenizer() -> PreTrainedTokenizerFast:
    words = sorted({w for p in GENERIC_PROBES for w in p.replace("\n", " ").split()})
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[BOS]"] + words + [f"w{i}" for i in range(200)])}
    tk = Tokenizer(tk_models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tk.post_processor = processors.TemplateProcessing(single="[BOS] $A", special_tokens=[("[BOS]", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="[BOS]", pad_token="[PAD]", unk_token="[UNK]")

def adapters(model, out: Path, n: int = 15, r: int = 8) -> list[Path]:
    paths = []
    for i in range(n):
        g = torch.Generator().manual_seed(i)
        sd = {}
        for name, mod in model.named_modules():
            if name.rsplit(".", 1)[-1] in TARGETS:
                sd[f"base_model.model.{name}.lora_A.weight"] = torch.randn(r, mod.in_features, generator=g) * 0.05
                sd[f"base_model.model.{name}.lora_B.weight"] = torch.randn(mod.out_features, r, generator=g) * 0.05
        d = out / f"adapter_{i:02d}"; d.mkdir()
        (d / "adapter_config.json").write_text(json.dumps(dict(peft_type="LORA", r=r, lora_alpha=16, target_modules=list(TARGETS))))
        save_file(sd, d / "adapter_model.safetensors")
        paths.append(d)
    return paths

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--hidden", type=int, default=64)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    tok = tokenizer()
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=a.hidden, intermediate_size=2 * a.hidden,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                         tie_word_embeddings=False)).eval()
    paths = adapters(model, Path(tempfile.mkdtemp()))
    res = {}
    modes = (("one prompt at a time", 1, 1), ("batched probes", 32, 1), ("batched + 15 stacked", 128, 15))
    for label, bs, stack in modes:
        da = DeltaActivations(model, tok, batch_size=bs, stack=stack).fit()
        da.transform(paths[:1])                                            # warm-up
        times = []
        for _ in range(a.repeats):
            t = time.perf_counter(); V = da.transform(paths); times.append(time.perf_counter() - t)
        res[label] = (min(times), V.values)
        print(f"{label:>22}: {min(times):.3f} s for {len(paths)} adapters × {len(da.probes)} probes (best of {a.repeats})")
    t1, V1 = res["one prompt at a time"]
    for label, (tb, Vb) in list(res.items())[1:]:
        cos = (Vb * V1).sum(1) / np.linalg.norm(Vb, axis=1) / np.linalg.norm(V1, axis=1)
        print(f"{label}: min cosine vs one-at-a-time {cos.min():.8f}; speed ratio (one-at-a-time / this) {t1 / tb:.2f}x"
              f"  [torch threads {a.threads}, hidden {a.hidden}]")

if __name__ == "__main__":
    main()
