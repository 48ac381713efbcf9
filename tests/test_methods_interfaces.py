"""Every registered method works from Python, YAML and the CLI under the same name, the three give identical tensors,
and the output loads with transformers' `from_pretrained`. Identical means bit for bit, except for the methods built on
an SVD: LAPACK (MKL on the CPU) does not promise bit-reproducible decompositions across calls (thread layout, memory
alignment), so those agree to float32 rounding."""
import contextlib, io
from pathlib import Path
import pytest, torch, yaml
from conftest import tree_checksums, make_llama_family

TWO = {"weight": [0.6, 0.4]}
RECIPES = {   # method: (uses base, models ("a", "b" or "base"), global params, per-model params)
    "linear": (False, "ab", {}, TWO),
    "task_arithmetic": (True, "ab", {"lambda": 0.8}, TWO),
    "ties": (True, "ab", {}, {**TWO, "density": [0.5, 0.5]}),
    "dare_ties": (True, "ab", {}, {**TWO, "density": [0.5, 0.7]}),
    "dare_linear": (True, "ab", {}, {**TWO, "density": [0.5, 0.5]}),
    "breadcrumbs": (True, "ab", {}, {**TWO, "density": [0.9, 0.9], "gamma": [0.01, 0.02]}),
    "breadcrumbs_ties": (True, "ab", {}, {**TWO, "density": [0.9, 0.9], "gamma": [0.01, 0.01]}),
    "della": (True, "ab", {}, {**TWO, "density": [0.5, 0.5], "epsilon": [0.1, 0.1]}),
    "della_linear": (True, "ab", {}, {**TWO, "density": [0.5, 0.5], "epsilon": [0.1, 0.1]}),
    "slerp": (True, "a", {"t": [0.0, 0.5, 1.0]}, {}),
    "nuslerp": (False, "ab", {}, {"weight": [0.3, 0.7]}),
    "multislerp": (True, "ab", {}, TWO),
    "karcher": (False, "ab", {}, {}),
    "model_stock": (True, "ab", {}, {}),
    "sce": (True, "ab", {"select_topk": 0.5}, {}),
    "nearswap": (True, "a", {"t": 0.001}, {}),
    "ram": (True, "ab", {}, {}),
    "passthrough": (False, "a", {}, {"scale": [1.0]}),
    "consensus": (True, "ab", {"k": 2, "lambda": 0.5}, {"tall_lambda": [0.4, 0.5]}),
    "tall_masks": (True, "ab", {"task": 1}, {}),
    "pcb": (True, "ab", {"pcb_ratio": 0.2}, {}),
    "star": (True, "ab", {"eta": 40.0}, {}),
    "tsv": (True, "ab", {}, {"weight": [0.7, 1.2]}),
    "iso_c": (True, "ab", {"lambda": 0.5}, {}),
    "iso_cts": (True, "ab", {"common_space_fraction": 0.8}, {}),
    "lines": (True, "a", {"alpha": 0.5, "beta": 0.5}, {}),
    "magmax": (True, "ab", {"lambda": 0.5}, {}),
    "wudi": (True, "ab", {"iter_num": 5, "lr": 1e-4}, {}),
    "emr": (True, "ab", {"task": 1}, {}),
    "layer_swap": (False, "ab", {"bottom": 1, "top": 1}, {}),
    "arcee_fusion": (True, "a", {}, {}),
    # post-processors run after a method: (method, post-processor)
    "consensus_mask": (True, "ab", {"k": 1}, {**TWO, "tall_lambda": [0.4, 0.4]}, ("task_arithmetic", "consensus_mask")),
    "svc": (True, "ab", {"svc_alpha": 0.1, "lambda": 0.3}, TWO, ("task_arithmetic", "svc")),
}

SVD_METHODS = {"star", "tsv", "iso_c", "iso_cts", "svc"}

@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    return make_llama_family(tmp_path_factory.mktemp("zoo"), vocab=96, layers=3, noise=0.02)

def test_registry_is_covered():
    from mergelab.registry import METHODS
    from mergelab.data_aware import DATA_METHODS   # need data and a model builder: Python, YAML and CLI in nbs/10_data_aware
    assert set(DATA_METHODS) <= set(METHODS)
    assert sorted(n for n in METHODS if not n.startswith("_") and n not in DATA_METHODS) == sorted(RECIPES)

@pytest.mark.parametrize("method", sorted(RECIPES))
def test_method_python_yaml_cli(method, zoo, tmp_path):
    from mergelab import merge, merge_config, Checkpoint
    from mergelab.cli import main
    from transformers import LlamaForCausalLM
    before = tree_checksums(zoo)
    uses_base, names, glob, per, *chain = RECIPES[method]
    method, post = chain[0] if chain else (method, None)
    models = [zoo / n for n in names]
    base = zoo / "base" if uses_base else None
    cfg = {"merge_method": method, "models": [{"model": str(m), "parameters": {k: v[i] for k, v in per.items()}}
                                              for i, m in enumerate(models)],
           "parameters": glob, "dtype": "float32"}
    if base: cfg["base_model"] = str(base)
    if post: cfg["postprocess"] = [post]
    (tmp_path / "c.yml").write_text(yaml.safe_dump(cfg))
    py = merge(models, method, base=base, seed=0, progress=False, postprocess=[post] if post else (), **glob, **per)
    out = merge_config(tmp_path / "c.yml", tmp_path / "yaml_out", seed=0, progress=False, max_shard_size=40_000)
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["merge", str(tmp_path / "c.yml"), str(tmp_path / "cli_out"), "--seed", "0", "--no-progress"]) == 0
    y, c = Checkpoint.open(out), Checkpoint.open(tmp_path / "cli_out")
    assert set(py) == set(y.keys()) == set(c.keys())
    for k in py:
        for other in (y.get(k), c.get(k)):
            if method in SVD_METHODS: torch.testing.assert_close(other, py[k], rtol=1e-5, atol=1e-7, msg=f"{method} {k}")
            else: assert torch.equal(py[k], other), (method, k)
        assert torch.isfinite(py[k]).all(), (method, k)
    model = LlamaForCausalLM.from_pretrained(out)
    with torch.no_grad(): assert torch.isfinite(model(torch.arange(8)[None]).logits).all()
    assert tree_checksums(zoo) == before
