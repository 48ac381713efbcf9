"""Fuzzing the analysis APIs (kinship, interference, masks, LMC curves, barriers and alignment of MLPs and
transformers, Delta Activations and embeddings, evaluation tables and sweeps, search, the explorers): generated calls with good and bad models, bases and keyword values end in a result or a
`MergelabError`, never another exception, never a hang (each call runs under a timer). At least 500 calls per run, in
well under a minute."""
import math, time
import pytest, torch
import pandas as pd
from hypothesis import given, settings, strategies as st
from test_fuzz import SETTINGS, outcome, tiny_sd, H
from mergelab.io import save_checkpoint, task_vector
from mergelab.kinship import kinship_matrix, kinship, delta_statistics
from mergelab.interference import interference_report, norm_at_k, sign_conflict_rate
from mergelab.masks import tall_masks
from mergelab.lmc import barrier
from mergelab.evaluate import normalized_accuracy, summarize

CALLS = {"n": 0, "results": 0}

def run(fn, *a, **kw):
    "One generated call (see `test_fuzz.outcome`), counting those that returned a result."
    CALLS.setdefault("t0", time.time())
    r = outcome(fn, *a, **kw)
    CALLS["results"] += not isinstance(r, Exception); CALLS["t1"] = time.time()
    return r

@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzzanalysis")
    for name, sd in {"base": tiny_sd(0), "a": tiny_sd(1), "b": tiny_sd(2), "c": tiny_sd(3), "wide": tiny_sd(4, h=6),
                     "deep": tiny_sd(5, layers=5)}.items():
        save_checkpoint(sd, d / name, progress=False)
    yield d
    print(f"\nanalysis fuzz: {CALLS['n']} calls ({CALLS['results']} returned a result) in {CALLS['t1'] - CALLS['t0']:.1f} s")

BAD = st.sampled_from([None, "x", -1, 0, 2.5, float("nan"), float("inf"), [], {}, (1, 2), "layer", "tensor", True])

def model_refs(zoo, names):
    out = []
    for n in names:
        if n == "sd": out.append(tiny_sd(7))
        elif n == "empty": out.append({})
        elif n == "int": out.append(3)
        elif n == "none": out.append(None)
        elif n == "tv": out.append(task_vector(zoo / "a", zoo / "base"))
        else: out.append(zoo / n)
    return out

GOOD = ["a", "b", "c", "sd", "tv"]                     # most draws are valid, so the analyses themselves run
REFS = st.lists(st.sampled_from(GOOD * 4 + ["wide", "deep", "nope", "empty", "int", "none"]), max_size=4)

@settings(max_examples=420, **SETTINGS)
@given(data=st.data())
def test_fuzz_weight_space_analyses(zoo, data):
    CALLS["n"] += 1
    models = model_refs(zoo, data.draw(REFS))
    if data.draw(st.booleans()): models = {f"m{i}": m for i, m in enumerate(models)}
    base = data.draw(st.sampled_from([zoo / "base"] * 6 + [tiny_sd(0), zoo / "wide", None, "nope", 0]))
    fn = data.draw(st.sampled_from(["kinship_matrix", "kinship", "delta_statistics", "interference_report", "norm_at_k",
                                    "sign_conflict_rate"]))
    kw = {"threads": data.draw(st.sampled_from([1, 2]) | BAD)} if data.draw(st.integers(0, 4)) == 0 else {"threads": 1}
    if fn == "kinship_matrix":
        kw |= data.draw(st.fixed_dictionaries({}, optional={"metric": st.sampled_from(["pcc", "cosine", "euclidean"]) | BAD,
                                                            "by": st.sampled_from([None, "layer", "tensor"]) | BAD,
                                                            "max_memory": st.sampled_from(["1GB", 4096, "1KB"]) | BAD}))
        r = run(kinship_matrix, models, base, progress=False, **kw)
        if isinstance(r, pd.DataFrame) and kw.get("by") is None and len(r):
            vals = r.values[~pd.isna(r.values)]
            assert ((vals >= -1 - 1e-9) & (vals <= 1 + 1e-9)).all() or kw.get("metric") == "euclidean"
    elif fn == "kinship":
        ms = list(models.values()) if isinstance(models, dict) else models
        r = run(kinship, *(ms + [zoo / "b", zoo / "c"])[:2], base, progress=False,
                    metric=data.draw(st.sampled_from(["pcc", "cosine"]) | BAD), threads=1)
        assert isinstance(r, (float, Exception))
    elif fn == "delta_statistics":
        run(delta_statistics, models, base, progress=False, **kw)
    elif fn == "interference_report":
        kw |= data.draw(st.fixed_dictionaries({}, optional={
            "density": st.floats(-0.5, 1.5) | BAD, "scope": st.sampled_from(["tensor", "model"]) | BAD,
            "by": st.sampled_from([None, "layer", "tensor"]) | BAD, "spectral": st.booleans() | BAD,
            "tall_lambda": st.floats(-1, 3) | BAD}))
        run(interference_report, models, base, progress=False, **kw)
    elif fn == "norm_at_k":
        run(norm_at_k, models, base, ks=data.draw(st.lists(st.floats(-0.5, 1.5), max_size=3) | BAD), threads=1)
    else:
        run(sign_conflict_rate, models, density=data.draw(st.floats(-0.5, 1.5) | BAD), base=base, threads=1)

@settings(max_examples=120, **SETTINGS)
@given(data=st.data())
def test_fuzz_masks_curves_tables(data):
    CALLS["n"] += 1
    fn = data.draw(st.sampled_from(["tall_masks", "barrier", "normalized_accuracy", "summarize"]))
    if fn == "tall_masks":
        n = data.draw(st.integers(0, 3)); shape = data.draw(st.sampled_from([(4,), (2, 3), (0,)]))
        X = torch.randn(n, *shape) if data.draw(st.booleans()) else data.draw(BAD)
        tau = X.sum(0) if isinstance(X, torch.Tensor) and n and data.draw(st.booleans()) else data.draw(BAD | st.just(torch.zeros(4)))
        r = run(tall_masks, X, tau, data.draw(st.floats(-1, 3) | st.lists(st.floats(0, 1), max_size=4) | BAD))
        if isinstance(r, torch.Tensor): assert r.dtype == torch.bool and r.shape == X.shape
    elif fn == "barrier":
        alphas = data.draw(st.lists(st.floats(-0.5, 1.5), max_size=5))
        curve = pd.DataFrame({"alpha": alphas, "loss": [data.draw(st.floats(allow_nan=True)) for _ in alphas]})
        if data.draw(st.booleans()): curve = curve.drop(columns="loss")
        run(barrier, curve if data.draw(st.booleans()) else data.draw(BAD),
                kind=data.draw(st.sampled_from(["midpoint", "linear", "at_half"]) | BAD),
                metric=data.draw(st.sampled_from(["loss", "accuracy"]) | BAD))
    else:
        tasks = ["t0", "t1"]
        t = pd.DataFrame({"accuracy": [data.draw((st.floats(-1, 2) | st.just(float("nan")))) for _ in tasks]}, index=pd.Index(tasks, name="task"))
        ref = t.copy() if data.draw(st.booleans()) else data.draw(BAD)
        if fn == "normalized_accuracy": run(normalized_accuracy, t if data.draw(st.booleans()) else data.draw(BAD), ref)
        else: run(summarize, t if data.draw(st.booleans()) else data.draw(BAD), ref if data.draw(st.booleans()) else None)

@settings(max_examples=100, **SETTINGS)
@given(data=st.data())
def test_fuzz_curves_alignment_embeddings_sweeps(data):
    import numpy as np
    from mergelab.lmc import interpolation_curve, barrier_table, mlp_spec, apply_permutation, weight_matching
    from mergelab.activations import cosine_similarity, silhouette
    from mergelab.evaluate import sweep, merge_gain
    CALLS["n"] += 1
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    a = {k: v.detach().clone() for k, v in m.state_dict().items()}; b = {k: v + 0.1 for k, v in a.items()}
    X, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    ev = lambda mod: {"loss": float(torch.nn.functional.cross_entropy(mod(X), y))}
    pick = lambda *xs: data.draw(st.sampled_from(xs))
    fn = pick("curve", "barrier_table", "match", "apply", "cosine", "silhouette", "sweep", "gain")
    if fn == "curve":
        run(interpolation_curve, pick(a, a, "nope", None), pick(b, b, 3), pick(ev, ev, lambda m: None, lambda m: "x", 3),
            alphas=pick(3, [0, 0.5, 1], [], -1, "x", [float("nan")]), model=pick(m, m, None, 3), progress=False)
    elif fn == "barrier_table":
        c = pd.DataFrame({"alpha": [0, .5, 1], "loss": [1, 2, 1]})
        run(barrier_table, pick(c, c, c.drop(columns="alpha"), None, "x"), metrics=pick(None, ["loss"], ["nope"], "loss", 3))
    elif fn == "match":
        run(weight_matching, pick(mlp_spec(a), None, "x"), pick(a, {}, None), pick(b, {}, 3), max_iter=pick(5, 0, "x"), progress=False)
    elif fn == "apply":
        run(apply_permutation, mlp_spec(a), pick({"P_0": torch.randperm(8)}, {"P_0": torch.arange(7)}, {}, None, "x"), pick(b, {}, None))
    elif fn == "cosine":
        run(cosine_similarity, pick(np.ones((4, 3)), np.zeros((3, 3)), [], None, "x", np.ones(3)))
    elif fn == "silhouette":
        run(silhouette, pick(np.random.default_rng(0).normal(size=(6, 3)), None, [], np.ones((2, 3))),
            pick([0, 0, 0, 1, 1, 1], [0] * 6, [0, 1], None, "abcdef"), metric=pick("cosine", "euclidean", "x", None))
    elif fn == "sweep":
        run(sweep, pick(lambda **k: {"a": 1.0}, lambda **k: None, None, 3), pick({"x": [1, 2]}, {}, {"x": []}, [{"x": 1}], None, "x", {"x": 3}),
            progress=False)
    else:
        t = pd.DataFrame({"accuracy": [.5, .6]}, index=pd.Index(["a", "b"], name="task"))
        run(merge_gain, pick(t, None, "x", {}), pick([t], [], None, [None], "x"))

@pytest.fixture(scope="module")
def tiny_gpt2():
    "A tiny GPT-2 with a word-level tokenizer (both in memory): the transformer the alignment and activation calls get."
    import transformers as T
    from tokenizers import Tokenizer, models, pre_tokenizers
    T.logging.set_verbosity_error()
    torch.manual_seed(0)
    m = T.GPT2LMHeadModel(T.GPT2Config(vocab_size=16, n_embd=8, n_layer=1, n_head=2, n_positions=16, bos_token_id=0, eos_token_id=0)).eval()
    vocab = {w: i for i, w in enumerate("<pad> a b c d e f g h".split())}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<pad>")); tk.pre_tokenizer = pre_tokenizers.Whitespace()
    return m, T.PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>")

@settings(max_examples=120, **SETTINGS)
@given(data=st.data())
def test_fuzz_transformers_search_explorers(zoo, tiny_gpt2, data):
    from mergelab.lmc import model_spec, transformer_spec, activation_matching, lmc_probe
    from mergelab.activations import delta_activations
    from mergelab.search import evolve
    from mergelab.widgets import LMCExplorer, MergeExplorer, KinshipExplorer
    CALLS["n"] += 1
    gpt, tok = tiny_gpt2
    pick = lambda *xs: data.draw(st.sampled_from(xs))
    ids = torch.randint(1, 9, (2, 5), generator=torch.Generator().manual_seed(0))
    ev = lambda m: float(m(ids).logits.float().pow(2).mean())
    fn = pick("spec", "tspec", "amatch", "probe", "delta", "evolve", "lmcx", "mergex", "kinx")
    if fn == "spec": run(model_spec, pick(gpt, gpt, tiny_sd(0), None, "nope", 3, torch.nn.Identity(), {}))
    elif fn == "tspec": run(transformer_spec, pick(gpt, None, torch.nn.Linear(2, 2), "x"), residual=pick(True, False))
    elif fn == "amatch":
        run(activation_matching, transformer_spec(gpt), gpt, pick(gpt, None, "x"), pick(ids, [], None, torch.zeros(0, 5, dtype=torch.long)),
            measure=pick("correlation", "cross_moment", "x"))
    elif fn == "probe":
        run(lmc_probe, gpt, gpt, pick(ev, lambda m: None, None), matching=pick("none", "weight", "activation", "x"),
            correction=pick("none", "repair", "bn_reset", "x"), data=pick(ids, None), alphas=pick(3, [], "x"), progress=False)
    elif fn == "delta":
        run(delta_activations, pick([gpt], {"g": gpt}, [], None, [3]), pick(gpt, None, "nope"), pick(["a b c", "d e"], [], None, [""]),
            tokenizer=pick(tok, tok, None, 3), layer=pick(-1, "pre_norm", 99, "x"), pooling=pick("last", "mean", "x"),
            token=pick(-1, 0, 50), batch_size=pick(2, 0, -1))
    elif fn == "evolve":
        run(evolve, pick([zoo / "a", zoo / "b"], [], None, [zoo / "a", "nope"]), pick(zoo / "base", None, "nope"),
            pick(lambda sd: 1.0, lambda sd: None, None, 3), method=pick("task_arithmetic", "ties", "nope"),
            budget=pick(4, 0, -1, "x"), space=pick(None, {"weight": (0, 1)}, {"nope": (0, 1)}, {"weight": (1, 0)}, 3), progress=False)
    elif fn == "lmcx":
        run(LMCExplorer, pick({"A": gpt, "B": gpt}, {"A": gpt}, None, "nope", []), evaluate=pick(ev, None, lambda m: "x"),
            data=pick(ids, None), matching=pick("none", "weight", "x"), alphas=pick(3, "x"))
    elif fn == "mergex":
        run(MergeExplorer, pick({"a": zoo / "a", "b": zoo / "b"}, {}, None, "nope", 3), pick(zoo / "base", None, "nope"),
            evaluate=pick(lambda m: 1.0, None, 3))
    else: run(KinshipExplorer, pick({"a": zoo / "a", "b": zoo / "b"}, {}, None, "nope", 3), pick(zoo / "base", None, "nope"),
              metric=pick("pcc", "cosine", "x", None))

def test_fuzz_analysis_count():
    "At least 500 generated calls, in under a minute of wall time (only meaningful when the whole module ran)."
    if CALLS["n"] < 500: pytest.skip(f"only {CALLS['n']} calls ran")
    assert CALLS["results"] >= 50, f"only {CALLS['results']} of {CALLS['n']} calls got past the argument checks"
    assert CALLS["t1"] - CALLS["t0"] < 60, f"{CALLS['n']} calls took {CALLS['t1'] - CALLS['t0']:.0f} s"
