"""Data-aware merging and Delta Activations on Hugging Face models with the user's own data: tiny random-init BERT,
RoBERTa, GPT-2, Llama with grouped-query attention, Qwen2 and ViT fine-tunes (saved as HF folders) plus the zoo MLPs,
× Fisher, RegMean, RegMean++, AdaMerging (task- and layer-wise) and Delta Activations, × data given as tensors, as a
DataLoader and as texts with a tokenizer. Every cell merges (finite, every tensor present, inputs untouched) or
raises a `MergelabError` saying what is not supported."""
import math
import pytest
import torch
import transformers as T
from tokenizers import Tokenizer, models as tk_models, pre_tokenizers
from torch.utils.data import DataLoader, TensorDataset
from conftest import tree_checksums
from mergelab.io import MergelabError, open_model
from mergelab.config import merge
from mergelab.activations import delta_activations

T.logging.set_verbosity_error()
V = 50
C = dict(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48)
ARCH = {
    "bert": lambda: T.BertForSequenceClassification(T.BertConfig(**C, max_position_embeddings=32, num_labels=3)),
    "roberta": lambda: T.RobertaForSequenceClassification(T.RobertaConfig(**C, max_position_embeddings=40, num_labels=3,
                                                                          pad_token_id=1)),
    "gpt2": lambda: T.GPT2LMHeadModel(T.GPT2Config(vocab_size=V, n_embd=32, n_layer=2, n_head=4, n_positions=32,
                                                   bos_token_id=0, eos_token_id=0)),
    "llama-gqa": lambda: T.LlamaForCausalLM(T.LlamaConfig(**C, num_key_value_heads=2, max_position_embeddings=32)),
    "qwen2": lambda: T.Qwen2ForCausalLM(T.Qwen2Config(**C, num_key_value_heads=1, max_position_embeddings=32)),
    "vit": lambda: T.ViTForImageClassification(T.ViTConfig(image_size=8, patch_size=4, num_channels=3, hidden_size=32,
                                                           num_hidden_layers=2, num_attention_heads=4,
                                                           intermediate_size=48, num_labels=3)),
}
METHODS = {"fisher": dict(estimator="empirical", num_batches=1), "regmean": dict(num_batches=1),
           "regmean_pp": dict(num_batches=1), "adamerging-task": dict(granularity="task", steps=2),
           "adamerging-layer": dict(granularity="layer", steps=2)}
WORDS = ["<pad>"] + [f"w{i}" for i in range(V - 1)]


@pytest.fixture(scope="module")
def tokenizer():
    tk = Tokenizer(tk_models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<pad>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    return T.PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>")


@pytest.fixture(scope="module")
def family(tmp_path_factory, tokenizer):
    "Per architecture: a base and two fine-tunes (the base plus small seeded deltas), saved as HF folders with a tokenizer."
    root, out = tmp_path_factory.mktemp("da_matrix"), {}
    for kind, make in ARCH.items():
        torch.manual_seed(0)
        base = make().eval()
        d = root / kind
        base.save_pretrained(d / "base"); tokenizer.save_pretrained(d / "base")
        for i, name in enumerate(("a", "b")):
            g = torch.Generator().manual_seed(i + 1)
            ft = make().eval(); ft.load_state_dict(base.state_dict())
            with torch.no_grad():
                for p in ft.parameters(): p.add_(torch.randn(p.shape, generator=g) * 0.02)
            ft.save_pretrained(d / name); tokenizer.save_pretrained(d / name)
        out[kind] = d
    sums = {k: tree_checksums(d) for k, d in out.items()}
    yield out
    assert {k: tree_checksums(d) for k, d in out.items()} == sums, "an input was modified"


def examples(kind: str, form: str, tokenizer):
    "Two tasks' examples in the requested form (labels included for classifiers)."
    g = torch.Generator().manual_seed(0)
    cls = kind in ("bert", "roberta", "vit")
    out = {}
    for t in ("a", "b"):
        y = torch.randint(0, 3, (8,), generator=g)
        if kind == "vit": x = torch.randn(8, 3, 8, 8, generator=g)
        else: x = torch.randint(2, V, (8, 12), generator=g)
        if form == "tensors": out[t] = (x, y) if cls else x
        elif form == "loader":
            if kind == "vit": out[t] = DataLoader(TensorDataset(x, y), batch_size=4)
            else: out[t] = DataLoader([dict(input_ids=r, attention_mask=torch.ones_like(r), **({"labels": l} if cls else {}))
                                       for r, l in zip(x, y)], batch_size=4)
        else:
            ids = torch.randint(2, V, (8, 12), generator=g)
            texts = [" ".join(WORDS[i] for i in r[: 6 + j % 5].tolist()) for j, r in enumerate(ids)]   # ragged: padded
            out[t] = (texts, y) if cls else texts
    return out


@pytest.mark.parametrize("form", ["tensors", "loader", "texts"])
@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("kind", list(ARCH))
def test_data_aware(family, tokenizer, kind, method, form):
    d = family[kind]
    name, kw = method.split("-")[0], dict(METHODS[method])
    if kind in ("bert", "roberta", "vit") and name == "fisher": kw["estimator"] = "expected"     # classifiers: the paper's
    data = examples(kind, form, tokenizer)                          # texts: tokenised with the base's own tokenizer
    run = lambda: merge({"a": d / "a", "b": d / "b"}, name, base=d / "base", data=data, progress=False, **kw)
    if form == "texts" and kind == "vit":
        with pytest.raises(MergelabError): run()
        return
    sd = run()
    a, b = open_model(d / "a").state_dict(), open_model(d / "b").state_dict()
    assert set(sd) == set(a)
    assert all(torch.isfinite(v).all() for v in sd.values() if v.is_floating_point())
    # the statistics reached every linear layer under the checkpoint's names: no layer fell back to the plain average
    # (a statistic keyed by another name, e.g. a renamed ViT module, would leave it at the mean)
    linear = [k for k, v in a.items() if v.dim() == 2 and "embed" not in k and "wte" not in k and "wpe" not in k
              and "lm_head" not in k and "classifier" not in k and "score" not in k]
    at_mean = [k for k in linear if torch.allclose(sd[k].float(), (a[k].float() + b[k].float()) / 2, atol=1e-7)]
    assert not at_mean, at_mean[:4]


def test_zoo_mlps_all_forms(tmp_path):
    "The zoo MLPs take the same forms: tensors, a DataLoader of (x, y) batches."
    from mergelab.zoo import load_zoo
    zoo = load_zoo("digits")
    names = list(zoo.experts)[:2]
    models = {n: zoo.experts[n].path for n in names}
    tensors = {n: (zoo.data[n]["finetune"][0][:32], zoo.data[n]["finetune"][1][:32]) for n in names}
    loader = {n: DataLoader(TensorDataset(*tensors[n]), batch_size=8) for n in names}
    for name, kw in METHODS.items():
        a = merge(models, name.split("-")[0], base=zoo.base.path, data=tensors, progress=False, cache_dir=tmp_path, **kw)
        b = merge(models, name.split("-")[0], base=zoo.base.path, data=loader, progress=False, cache_dir=tmp_path, **kw)
        assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5, name     # the same examples, the same merge
    texts = {n: ["an image is not text"] * 4 for n in names}                       # texts for an MLP: no tokenizer there
    with pytest.raises(MergelabError): merge(models, "regmean", base=zoo.base.path, data=texts, progress=False, cache_dir=tmp_path)


def test_fisher_where_vmap_cannot_run(tmp_path):
    """DeBERTa-v2's forward checks its input for padding in Python, which `torch.func.vmap` cannot trace: the Fisher of
    token tensors then goes one example at a time, and equals the Fisher of the same examples given as fields."""
    cfg = T.DebertaV2Config(**C, max_position_embeddings=32, num_labels=3)
    torch.manual_seed(0); T.DebertaV2ForSequenceClassification(cfg).save_pretrained(tmp_path / "base")
    for i, name in enumerate("ab"):
        torch.manual_seed(i + 1); T.DebertaV2ForSequenceClassification(cfg).save_pretrained(tmp_path / name)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randint(2, V, (6, 10), generator=g), torch.randint(0, 3, (6,), generator=g)
    models = {"a": tmp_path / "a", "b": tmp_path / "b"}
    run = lambda data, sub: merge(models, "fisher", base=tmp_path / "base", data=data, num_batches=1, progress=False,
                                  cache_dir=tmp_path / sub)
    tensors = run({t: (x, y) for t in models}, "t")
    fields = run({t: ({"input_ids": x}, y) for t in models}, "f")
    assert max(float((tensors[k] - fields[k]).abs().max()) for k in tensors) < 1e-6


def test_device_path_on_cpu(tmp_path):
    """`device=` reaches every data-aware method's statistics pass (the merge's prepare pass): on the CPU the device
    path gives the merge without it, computed afresh (separate caches); a device this machine lacks is refused first."""
    from mergelab.zoo import load_zoo
    from mergelab.io import InvalidValue
    zoo = load_zoo("digits")
    models = {n: zoo.experts[n].path for n in list(zoo.experts)[:2]}
    data = {n: (zoo.data[n]["finetune"][0][:32], zoo.data[n]["finetune"][1][:32]) for n in models}
    for i, (name, kw) in enumerate(METHODS.items()):
        run = lambda sub, **d: merge(models, name.split("-")[0], base=zoo.base.path, data=data, progress=False,
                                     cache_dir=tmp_path / f"{i}{sub}", seed=0, **kw, **d)
        a, b = run("a"), run("b", device="cpu")
        assert all(torch.equal(a[k], b[k]) for k in a), name
    with pytest.raises(InvalidValue): merge(models, "fisher", base=zoo.base.path, data=data, progress=False, device="tpu")
    if torch.cuda.is_available():
        g = merge(models, "regmean", base=zoo.base.path, data=data, progress=False, cache_dir=tmp_path / "gpu", device="cuda")
        r = merge(models, "regmean", base=zoo.base.path, data=data, progress=False, cache_dir=tmp_path / "r")
        assert max(float((g[k].cpu() - r[k]).abs().max()) for k in r) < 1e-4


@pytest.mark.parametrize("form", ["object", "path"])
@pytest.mark.parametrize("kind", list(ARCH))
def test_delta_activations(family, tokenizer, tmp_path, kind, form):
    d = family[kind]
    probes = ["w1 w2 w3 w4", "w5 w6 w7"]
    tok = tokenizer
    if form == "path":
        tokenizer.save_pretrained(tmp_path / "tok"); tok = tmp_path / "tok"
    if kind == "vit":
        with pytest.raises(MergelabError): delta_activations({"a": d / "a", "b": d / "b"}, d / "base", probes, tokenizer=tok)
        return
    emb = delta_activations({"a": d / "a", "b": d / "b"}, d / "base", probes, tokenizer=tok)
    assert list(emb.index) == ["a", "b"] and emb.shape[1] == 32 and emb.abs().sum().sum() > 0
    assert emb.attrs["protocol"]["pooling"] == ("last" if kind in ("gpt2", "llama-gqa", "qwen2") else "mean")


@pytest.mark.parametrize("fmt", ["jsonl", "txt", "safetensors"])
def test_yaml_data_files(family, tmp_path, fmt):
    "A data file named in the YAML: texts tokenised with the base's own tokenizer, or token fields; the record shows the path."
    import json, yaml
    from safetensors.torch import save_file
    from mergelab.config import merge_config
    d = family["gpt2"]
    lines = {t: [" ".join(f"w{(i * 7 + j * 3 + k) % 40 + 1}" for k in range(5 + j % 4)) for j in range(6)] for i, t in enumerate("ab")}
    if fmt == "jsonl":
        f = tmp_path / "data.jsonl"
        f.write_text("".join(json.dumps({"task": t, "text": s}) + "\n" for t, ss in lines.items() for s in ss))
    elif fmt == "txt":
        f = tmp_path / "a.txt"; f.write_text("\n".join(lines["a"] + lines["b"]) + "\n")      # one task: shared by both
    else:
        f = tmp_path / "data.safetensors"
        g = torch.Generator().manual_seed(0)
        save_file({f"{t}.{k}": v for t in "ab" for k, v in dict(input_ids=torch.randint(1, V, (6, 9), generator=g),
                                                                 attention_mask=torch.ones(6, 9, dtype=torch.long)).items()}, str(f))
    cfg = dict(merge_method="regmean", base_model=str(d / "base"), models=[{"model": str(d / "a")}, {"model": str(d / "b")}],
               parameters=dict(data={"path": str(f)}, num_batches=1, cache_dir=str(tmp_path / "cache")))
    out = merge_config(yaml.safe_dump(cfg), tmp_path / "out", progress=False)
    rec = yaml.safe_load((out / "mergelab_config.yml").read_text())
    assert rec["parameters"]["data"] == {"path": str(f)}
    assert open_model(out).state_dict().keys() == open_model(d / "a").state_dict().keys()
