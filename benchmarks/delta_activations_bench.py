"""Delta Activations: batched vs one prompt at a time, on 15 LoRA adapters.

Not a test: prints the equivalence (min cosine) and the speed ratio of each batched mode against two one-prompt-at-a-time
baselines, all measured in the same run: the reference script's loop (per adapter: ΔW merged, then each probe alone
through the whole model, `model(input_ids, output_hidden_states=True)`, logits of every position included), and
mergelab's own loop (`batch_size=1, stack=1, reuse_prefix=False`, which skips all but the last position's logits).
The batched modes:
probes batched per adapter (ΔW merged in place), probes and all 15 adapters in one batch (`stack=15`, per-row LoRA
hooks), and either of them with the base's lower layers computed once (`reuse_prefix=True`, the default).
Default: the 15 adapters of the `smollm2-domains` zoo (12 domain adapters + 3 mixed) on SmolLM2-135M-Instruct.
`--tiny`: a random tiny Llama (vocab ~250, 2 layers, hidden 64) with 15 random PEFT adapters on every projection.
Usage: python benchmarks/delta_activations_bench.py [--tiny] [--threads 1] [--repeats 3] [--hidden 64]
"""
import argparse, json, tempfile, time
from pathlib import Path
import numpy as np
import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, models as tk_models, pre_tokenizers, processors
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
from mergelab.activations import GENERIC_PROBES, DeltaActivations, encode_probes, _Switcher
from mergelab.io import AdapterCheckpoint

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
    ap.add_argument("--tiny", action="store_true", help="random tiny Llama and random adapters instead of the zoo")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if a.tiny:
        tok = tokenizer()
        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=a.hidden, intermediate_size=2 * a.hidden,
                                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                             tie_word_embeddings=False)).eval()
        paths = adapters(model, Path(tempfile.mkdtemp()))
        what = f"tiny Llama, hidden {a.hidden}"
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from mergelab.zoo import load_zoo
        zoo = load_zoo("smollm2-domains")
        model = AutoModelForCausalLM.from_pretrained(str(zoo.base.path), dtype=torch.float32).eval()
        tok = AutoTokenizer.from_pretrained(str(zoo.base.path))
        paths = [m.path for m in [*zoo.experts.values(), *zoo.extras.values()]]
        what = f"SmolLM2-135M-Instruct, smollm2-domains zoo"
    res = {}
    ids = encode_probes(tok, GENERIC_PROBES)
    def reference(paths):
        "The reference implementation's loop: one adapter on the base at a time, one probe per forward pass."
        base_h = torch.stack([model(input_ids=torch.tensor([x]), output_hidden_states=True).hidden_states[-1][0, -1]
                              for x in ids])
        sw, out = _Switcher(model), []
        for p in paths:
            h = sw.run(AdapterCheckpoint(p), lambda m: torch.stack([
                m(input_ids=torch.tensor([x]), output_hidden_states=True).hidden_states[-1][0, -1] for x in ids]))
            out.append((h - base_h).mean(0).double().numpy())
        return np.stack(out)
    with torch.no_grad():
        reference(paths[:1]); times = []
        for _ in range(a.repeats):
            t = time.perf_counter(); Vr = reference(paths); times.append(time.perf_counter() - t)
    res["reference loop"] = (min(times), Vr)
    print(f"{'reference loop':>36}: {min(times):.3f} s for {len(paths)} adapters × {len(ids)} probes (best of {a.repeats})", flush=True)
    modes = (("one prompt at a time", 1, 1, False), ("batched probes", 32, 1, False),
             ("batched + 15 stacked", 128, 15, False), ("batched, prefix reused", 32, 1, True),
             ("batched + 15 stacked, prefix reused", 128, 15, True))
    for label, bs, stack, prefix in modes:
        da = DeltaActivations(model, tok, batch_size=bs, stack=stack, reuse_prefix=prefix).fit()
        da.transform(paths[:1])                                            # warm-up
        times = []
        for _ in range(a.repeats):
            t = time.perf_counter(); V = da.transform(paths); times.append(time.perf_counter() - t)
        res[label] = (min(times), V.values)
        print(f"{label:>36}: {min(times):.3f} s for {len(paths)} adapters × {len(da.probes)} probes (best of {a.repeats})",
              flush=True)
    t0, V0 = res["reference loop"]
    t1, V1 = res["one prompt at a time"]
    print(f"[torch threads {a.threads}, {what}]")
    for label, (tb, Vb) in list(res.items())[1:]:
        cos = (Vb * V0).sum(1) / np.linalg.norm(Vb, axis=1) / np.linalg.norm(V0, axis=1)
        print(f"{label:>36}: min cosine vs the reference loop {cos.min():.8f}; speed ratio vs the reference loop "
              f"{t0 / tb:.2f}x, vs mergelab's one-at-a-time {t1 / tb:.2f}x")

if __name__ == "__main__":
    main()
