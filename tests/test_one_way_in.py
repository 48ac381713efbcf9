"""One way in: every public entry point of every pillar on every kind of model reference. Each cell either works or
raises a `MergelabError` whose message names what is not supported; a raw exception fails the test. The models are a
tiny Llama family written here the Hugging Face way (plain, sharded and `.bin` folders, PEFT adapters) and the
`digits` zoo's experts."""
import json, warnings
from pathlib import Path
import pytest, torch
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
from tokenizers import Tokenizer, models as tk_models, pre_tokenizers
from mergelab.io import MergelabError, open_model, open_module, model_names
from mergelab.config import merge, merge_config
from mergelab.kinship import kinship_matrix
from mergelab.interference import interference_report
from mergelab.activations import delta_activations
from mergelab.lmc import interpolation_curve, barrier, weight_matching, model_spec, mlp_spec
from mergelab.evaluate import evaluate, LMTask
from mergelab.masks import tall_compress
from mergelab.search import evolve
from mergelab.zoo import load_zoo
from mergelab.widgets import MergeExplorer, KinshipExplorer, LMCExplorer, InterferenceExplorer

torch.set_num_threads(1)
CFG = dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
           num_key_value_heads=2, max_position_embeddings=32, tie_word_embeddings=False)
WORDS = ["[PAD]", "[UNK]"] + [f"w{i}" for i in range(62)]

def _tokenizer():
    tok = Tokenizer(tk_models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]")

def _adapter(d: Path, seed: int):
    g = torch.Generator().manual_seed(seed)
    d.mkdir()
    (d / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 4,
                                                       "target_modules": ["q_proj", "v_proj"]}))
    sd = {}
    for l in range(2):
        for m in ("q_proj", "v_proj"):
            pre = f"base_model.model.model.layers.{l}.self_attn.{m}"
            sd[f"{pre}.lora_A.weight"] = torch.randn(2, 16, generator=g) * 0.3
            sd[f"{pre}.lora_B.weight"] = torch.randn(16, 2, generator=g) * 0.3
    save_file(sd, str(d / "adapter_model.safetensors"))

@pytest.fixture(scope="module")
def family(tmp_path_factory):
    d = tmp_path_factory.mktemp("family")
    torch.manual_seed(0)
    base = LlamaForCausalLM(LlamaConfig(**CFG)).eval()
    base.save_pretrained(d / "base"); _tokenizer().save_pretrained(d / "base")
    fts = []
    for i in (1, 2):
        ft = LlamaForCausalLM(LlamaConfig(**CFG)).eval(); ft.load_state_dict(base.state_dict())
        with torch.no_grad():
            for p in ft.parameters(): p.add_(torch.randn_like(p) * 0.02)
        ft.save_pretrained(d / f"ft{i}"); fts.append(ft)
    fts[0].save_pretrained(d / "sharded", max_shard_size="20KB")
    fts[0].save_pretrained(d / "bin", safe_serialization=False)
    _adapter(d / "ad1", 1); _adapter(d / "ad2", 2)
    ids = torch.randint(2, 64, (4, 12), generator=torch.Generator().manual_seed(0))
    task = LMTask("lm", ids, build=lambda sd: open_module(sd, config=open_model(d / "base").config))
    return dict(d=d, base=d / "base", fts=fts, task=task)

KINDS = ["hf_dir", "sharded_dir", "bin_dir", "base+adapter", "adapter_with_base", "mapping", "state_dict", "module", "zoo_model"]

def refs(kind: str, f: dict):
    "(two model references, or a mapping of two; their base; an evaluator taking a module or a state dict)."
    d = f["d"]
    if kind == "zoo_model":
        zoo = load_zoo("digits")
        return [zoo.experts["blur"], zoo.experts["hflip"]], zoo.base, lambda m: zoo.evaluate(m, tasks=["blur"], progress=False)
    ev = lambda m: evaluate(m, [f["task"]], progress=False)
    two = {"hf_dir": [d / "ft1", d / "ft2"], "sharded_dir": [d / "sharded", d / "ft2"], "bin_dir": [d / "bin", d / "ft2"],
           "base+adapter": [f"{d / 'base'}+{d / 'ad1'}", f"{d / 'base'}+{d / 'ad2'}"], "adapter_with_base": [d / "ad1", d / "ad2"],
           "mapping": {"a": d / "ft1", "b": d / "ft2"}, "state_dict": [m.state_dict() for m in f["fts"]], "module": f["fts"]}[kind]
    return two, f["base"], ev

def pair(models):
    return list(models.values()) if isinstance(models, dict) else list(models)

def _spec(base):
    if isinstance(base, Path): return model_spec(open_module(base))
    return mlp_spec(open_model(base).state_dict())

ENTRY = {
    "merge": lambda m, b, ev, tmp: merge(m, "task_arithmetic", base=b, weight=1.0, progress=False),
    "merge_config": lambda m, b, ev, tmp: merge_config({"merge_method": "ties", "base_model": b, "models":
                                                       [{"model": x, "parameters": {"weight": 1.0, "density": 0.5}} for x in pair(m)]}, progress=False),
    "kinship": lambda m, b, ev, tmp: kinship_matrix(m, b),
    "interference": lambda m, b, ev, tmp: interference_report(m, b),
    "activations": lambda m, b, ev, tmp: delta_activations(m, b, ["w1 w2 w3", "w4 w5"]),
    "lmc_curve": lambda m, b, ev, tmp: barrier(interpolation_curve(*pair(m), ev, alphas=3)),
    "lmc_matching": lambda m, b, ev, tmp: weight_matching(_spec(b), *pair(m), max_iter=2),
    "evaluate": lambda m, b, ev, tmp: [ev(x) for x in pair(m)],
    "masks": lambda m, b, ev, tmp: tall_compress(m, b, tmp / "tall"),
    "search": lambda m, b, ev, tmp: evolve(m, b, ev, budget=5, popsize=5, progress=False, metric="loss" if isinstance(b, Path) else "accuracy"),
    "merge_explorer": lambda m, b, ev, tmp: _ran(MergeExplorer(m, b, evaluate=ev, progress=False), "run"),
    "kinship_explorer": lambda m, b, ev, tmp: KinshipExplorer(m, b, progress=False),
    "lmc_explorer": lambda m, b, ev, tmp: _ran(LMCExplorer(m, evaluate=ev, alphas=3), "compute"),
    "interference_explorer": lambda m, b, ev, tmp: _ran(InterferenceExplorer(m, b, progress=False), "compute"),
}

def _ran(explorer, action: str):
    "An explorer's action; explorers show errors in their status line and keep them in `.error`: raise it here."
    out = getattr(explorer, action)()
    if out is None and explorer.error is not None: raise explorer.error
    return out

# The combinations that cannot work, each refused with a MergelabError that says why; every other cell must work.
UNSUPPORTED = {
    ("activations", "zoo_model"): "tokenizer",                   # Delta Activations embed language models
    ("lmc_curve", "adapter_with_base"): "LoRA adapter",          # a two-model path has no base to apply adapters to
    ("lmc_matching", "adapter_with_base"): "LoRA adapter",
    ("evaluate", "adapter_with_base"): "LoRA adapter",
    ("lmc_explorer", "adapter_with_base"): "LoRA adapter",
    ("lmc_curve", "state_dict"): "config.json",                  # a bare state dict does not say its architecture
    ("lmc_explorer", "state_dict"): "config.json",
}

@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("entry", list(ENTRY))
def test_every_entry_point_on_every_reference(entry, kind, family, tmp_path):
    models, base, ev = refs(kind, family)
    why = UNSUPPORTED.get((entry, kind))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if why is not None:
            with pytest.raises(MergelabError, match=why): ENTRY[entry](models, base, ev, tmp_path)
            return
        out = ENTRY[entry](models, base, ev, tmp_path)
    assert out is not None, f"{entry} on {kind} returned nothing"

def test_names_come_from_one_rule(family):
    d = family["d"]
    names = list(model_names([d / "ft1", f"{d / 'base'}+{d / 'ad2'}", family["fts"][0]]))
    assert names == ["ft1", "ad2", "m2"]
    km = kinship_matrix([d / "ft1", f"{d / 'base'}+{d / 'ad2'}"], family["base"])
    assert list(km.index) == ["ft1", "ad2"]


@pytest.mark.parametrize("kind", ["gpt2-hub", "bert-hub"])
def test_hub_names_against_saved_names(kind, tmp_path):
    """A base as the hub stores it (GPT-2 without the `transformer.` prefix; BERT with TensorFlow-era `LayerNorm.gamma`
    and `beta`) and fine-tunes saved by transformers: every pillar reads the fine-tunes under the base's names (a
    data-aware merge too, which runs the module), and the merge loads with `from_pretrained`."""
    import transformers as T
    from mergelab.io import task_vector
    if kind == "gpt2-hub":
        cls, cfg = T.GPT2LMHeadModel, T.GPT2Config(vocab_size=64, n_embd=16, n_layer=2, n_head=2, n_positions=32,
                                                   bos_token_id=0, eos_token_id=0, architectures=["GPT2LMHeadModel"])
        hub = lambda k: None if k == "lm_head.weight" else k.removeprefix("transformer.")
    else:
        cls, cfg = T.BertModel, T.BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                             intermediate_size=32, max_position_embeddings=32)
        hub = lambda k: k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")
    torch.manual_seed(0)
    base = cls(cfg).eval()
    sd = {hub(k): v.contiguous() for k, v in base.state_dict().items() if hub(k) is not None}
    (tmp_path / "base").mkdir(); cfg.save_pretrained(tmp_path / "base")
    save_file(sd, str(tmp_path / "base" / "model.safetensors"), metadata={"format": "pt"})
    for i, n in enumerate("ab"):
        ft = cls(cfg).eval(); ft.load_state_dict(base.state_dict())
        with torch.no_grad():
            for p in ft.parameters(): p.add_(torch.randn_like(p) * 0.01 * (i + 1))
        ft.save_pretrained(tmp_path / n)
    assert set(open_model(tmp_path / "a").keys()) != set(sd)
    models = {n: tmp_path / n for n in "ab"}
    out = merge(models, "ties", base=tmp_path / "base", weight=1.0, density=0.5, out=tmp_path / "m", progress=False)
    assert set(open_model(out).keys()) == set(sd)                     # written under the base's names
    cls.from_pretrained(out)
    avg = merge({"base": tmp_path / "base", "a": tmp_path / "a"}, "linear", weight=1.0, progress=False)
    assert set(avg) == set(sd)                                         # without a base: the first model's names
    k = kinship_matrix(models, tmp_path / "base", progress=False)
    assert k.shape == (2, 2) and k.notna().all().all()
    assert set(task_vector(tmp_path / "a", tmp_path / "base").keys()) <= set(sd)
    assert len(interference_report(models, tmp_path / "base", progress=False))
    tall_compress(models, tmp_path / "base", tmp_path / "tall")
    if kind == "gpt2-hub":                         # a data pass runs the module, whose names carry the prefix
        x = torch.randint(2, 60, (4, 8), generator=torch.Generator().manual_seed(0))
        rm = merge(models, "regmean", base=tmp_path / "base", data={"a": x, "b": x}, num_batches=1, progress=False)
        assert set(rm) == set(sd)
