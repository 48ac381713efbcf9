"""Presets come before defaults on every path: a method's resolved parameters under `preset: NAME` equal the preset's
documented row (its registration) for every parameter the user did not give, whether the merge is written in Python
(`merge` → `build_plan`), in YAML (the CLI's input), or as a search candidate (`evolve`'s `SearchSpace.config`); a
value the user gives wins over the preset."""
import pytest, torch, yaml
from mergelab.config import build_plan, merge
from mergelab.registry import load_methods
from mergelab.search import SearchSpace

METHODS = load_methods()
CASES = [(m, p) for m in sorted(METHODS) for p in sorted(METHODS[m].presets)]

def _models(n: int):
    g = torch.Generator().manual_seed(0)
    base = {"layers.0.weight": torch.randn(6, 4, generator=g), "layers.0.bias": torch.randn(6, generator=g)}
    return base, [{k: v + 0.1 * torch.randn(v.shape, generator=g) for k, v in base.items()} for _ in range(n)]

def _config(method: str, parameters: dict) -> dict:
    "A config of `method` on small random models; required numbers the preset does not give (`weight`, `t`) are set."
    m = METHODS[method]
    row = m.presets.get(parameters.get("preset"), {})
    for k, v in (("weight", 1.0), ("t", 0.5)):
        if k in m.params and m.params[k].required and k not in row: parameters.setdefault(k, v)
    n = max(2, m.min_models) if m.max_models is None else min(max(2, m.min_models), m.max_models)
    base, models = _models(n)
    d = {"merge_method": method, "models": [{"model": x} for x in models], "parameters": parameters}
    if m.base != "none": d["base_model"] = base
    if "data" in m.params: parameters.setdefault("data", {"zoo": "digits", "split": "train"})
    return d

def _resolved(cfg) -> dict:
    return build_plan(cfg, prepare=False).groups[0].params

def _expected(method: str, preset: str, n: int) -> dict:
    m = METHODS[method]
    return {k: [v] * n if m.params[k].per_model else v for k, v in m.presets[preset].items()}

def test_cases_exist():
    "The parametrisation below covers the registered presets (a registry without presets would test nothing)."
    assert len(CASES) >= 20 and {"fusionbench", "paper", "mergekit"} <= {p for _, p in CASES}

@pytest.mark.parametrize("method,preset", CASES)
def test_preset_row_python_and_yaml(method, preset):
    cfg = _config(method, {"preset": preset})
    n = len(cfg["models"])
    got = _resolved(cfg)
    want = _expected(method, preset, n)
    assert {k: got[k] for k in want} == want
    text = yaml.safe_dump({**cfg, "models": [{"model": f"m{i}"} for i in range(n)], "base_model": None})
    assert yaml.safe_load(text)["parameters"]["preset"] == preset     # the YAML form names the preset as the CLI reads it

@pytest.mark.parametrize("method,preset", [c for c in CASES if c[1] != "mergekit"])
def test_preset_row_search_candidate(method, preset):
    "evolve's candidates: the searched value is explicit, every other parameter comes from the fixed preset."
    m = METHODS[method]
    nums = [k for k, p in m.params.items() if p.type is float and p.choices is None]
    if not nums: pytest.skip(f"{method} has no numeric parameter to search")
    gene = next((k for k in nums if k not in m.presets[preset]), nums[0])
    cfg0 = _config(method, {})
    space = SearchSpace.build(method, {gene: (0.1, 0.9)}, [f"m{i}" for i in range(len(cfg0["models"]))],
                              fixed={"preset": preset})
    cand = space.config([0.5] * space.dim, [x["model"] for x in cfg0["models"]], cfg0.get("base_model"))
    cand["parameters"].update({k: v for k, v in cfg0["parameters"].items() if k == "data"})
    got = _resolved(cand)
    want = {k: v for k, v in _expected(method, preset, len(cfg0["models"])).items() if k != gene}
    assert {k: got[k] for k in want} == want
    assert got[gene] in (0.5, [0.5] * len(cfg0["models"]))

def test_user_value_wins_over_preset():
    got = _resolved(_config("ties", {"preset": "fusionbench", "density": 0.5, "lambda": 0.7}))
    assert got["density"] == [0.5, 0.5] and got["lambda"] == 0.7 and got["topk_scope"] == "model"
    got = _resolved(_config("dare_ties", {"preset": "fusionbench", "trim_density": 1.0}))
    assert got["trim_density"] == 1.0 and got["density"] == [0.5, 0.5]

def test_python_merge_applies_the_preset():
    "The public `merge()`: TIES with the fusionbench preset trims (density 0.2), unlike the bare default (no trim)."
    base, models = _models(3)
    a = merge(models, "ties", base=base, preset="fusionbench", progress=False)
    b = merge(models, "ties", base=base, preset="fusionbench", density=0.2, progress=False)
    c = merge(models, "ties", base=base, weight=1.0, progress=False)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)
