"""Fuzzing: bad configs, damaged checkpoints and bad API inputs end in a `MergelabError` or a correct result.

Never another exception, never a hang (each case runs under a timer), never a modified input (checksums)."""
import copy, json, math, os, random, shutil, signal, struct, tempfile, time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
import pytest, torch, yaml
from hypothesis import HealthCheck, given, settings, strategies as st
from conftest import tree_checksums
from mergelab.io import MergelabError, Checkpoint, save_checkpoint
from mergelab.config import merge, merge_config

CASES: Counter = Counter()          # generated cases per family, over the module
LIMIT_S = 20                        # per-case wall-clock limit
SETTINGS = dict(deadline=10_000, derandomize=False, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large])

@contextmanager
def time_limit(s: float = LIMIT_S):
    "Fail a case that runs past `s` seconds (a hang) instead of blocking the suite."
    def alarm(*_): raise TimeoutError(f"case ran past {s} s")
    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, s)
    try: yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)

def outcome(fn, *args, **kw):
    "Run one case: return the result, or the `MergelabError` it raised; anything else fails the test."
    with time_limit():
        try: return fn(*args, **kw)
        except MergelabError as e:
            assert str(e).strip(), f"{type(e).__name__} with an empty message"
            return e

# ---------------------------------------------------------------- tiny checkpoints, built once per module
H, L, V = 4, 3, 10

def tiny_sd(seed: int, h: int = H, layers: int = L, vocab: int = V) -> dict[str, torch.Tensor]:
    "The Llama-shaped toy state dict the failure catalogue (mergelab.failures) damages too."
    from mergelab.failures import _tiny
    return _tiny(seed, h, layers, vocab)

def write_adapter(d: Path, target: str, shape: tuple[int, int], base_name: str):
    from safetensors.torch import save_file
    d.mkdir(parents=True)
    r = 2
    save_file({f"base_model.model.{target}.lora_A.weight": torch.randn(r, shape[1]),
               f"base_model.model.{target}.lora_B.weight": torch.randn(shape[0], r)}, str(d / "adapter_model.safetensors"))
    (d / "adapter_config.json").write_text(json.dumps({"r": r, "lora_alpha": 4, "base_model_name_or_path": base_name}))

@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzzzoo")
    for name, sd in {"base": tiny_sd(0), "a": tiny_sd(1), "b": tiny_sd(2), "wide": tiny_sd(3, h=6),
                     "deep": tiny_sd(4, layers=5), "vocab": tiny_sd(5, vocab=12)}.items():
        save_checkpoint(sd, d / name)
    save_checkpoint(tiny_sd(6), d / "sharded", max_shard_size=200)       # several shards and an index
    write_adapter(d / "lora", "model.layers.0.mlp", (H, H), "base")
    write_adapter(d / "lora_other", "model.layers.0.mlp", (6, 6), "wide")
    write_adapter(d / "lora_absent", "model.layers.7.attn", (H, H), "elsewhere")
    sums = tree_checksums(d)
    yield d
    assert tree_checksums(d) == sums, "an input checkpoint was modified"
    print(f"\nfuzz cases generated: {dict(CASES)}, total {sum(CASES.values())}")

def check_result(sd, ref_keys=None):
    "A merge that succeeded must give finite tensors with the reference's names and shapes."
    assert isinstance(sd, dict) and sd
    for k, t in sd.items():
        assert isinstance(t, torch.Tensor), k
        if t.is_floating_point(): assert torch.isfinite(t).all(), f"non-finite {k} passed silently"
    if ref_keys is not None: assert ref_keys == {k: tuple(v.shape) for k, v in sd.items()}

# ---------------------------------------------------------------- (a) mutated merge configs
def valid_configs(z: Path) -> list[dict]:
    m = lambda n, **p: {"model": str(z / n), "parameters": p}
    return [
        {"merge_method": "linear", "models": [m("a", weight=0.5), m("b", weight=0.5)]},
        {"merge_method": "ties", "base_model": str(z / "base"), "models": [m("a", weight=0.5, density=0.5), m("b", weight=[0.2, 0.8], density=0.7)]},
        {"merge_method": "task_arithmetic", "base_model": str(z / "base"), "models": [m("a", weight=1.0), m("b", weight=0.3)], "parameters": {"lambda": 0.8}},
        {"merge_method": "dare_ties", "base_model": str(z / "base"), "models": [m("a", weight=0.5, density=0.4), m("b", weight=0.5, density=0.6)], "parameters": {"seed": 1}},
        {"merge_method": "slerp", "base_model": str(z / "base"), "models": [m("a")], "parameters": {"t": [0, 0.5, 1]}},
        {"merge_method": "passthrough", "slices": [{"sources": [{"model": str(z / "a"), "layer_range": [0, 2]}]},
                                                   {"sources": [{"model": str(z / "b"), "layer_range": [1, 3]}]}]},
        {"merge_method": "linear", "slices": [{"sources": [{"model": str(z / "a"), "layer_range": [0, 3], "parameters": {"weight": 0.5}},
                                                           {"model": str(z / "b"), "layer_range": [0, 3], "parameters": {"weight": 0.5}}]}]},
    ]

BAD = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True),
                st.text(max_size=12), st.lists(st.one_of(st.integers(-5, 9), st.floats(-2, 2), st.text(max_size=3)), max_size=6),
                st.dictionaries(st.text(max_size=6), st.integers(-3, 3), max_size=3),
                st.sampled_from(["-1", "nan", "./nope", "/", "base+lora", "tie", "linear ", "ties\n", "∞"]))
KEYS = ["merge_method", "models", "base_model", "slices", "parameters", "dtype", "out_dtype", "weight", "density", "t",
        "lambda", "layer_range", "sources", "model", "normalize", "seed", "tokenizer_source", "postprocess", "epsilon",
        "gamma", "filter", "value", "zzz", "truncate_vocab", "tokenizer"]

def paths(obj, prefix=()):
    "Every (path, container) to a value inside nested dicts/lists."
    if isinstance(obj, dict):
        for k, v in obj.items(): yield prefix + (k,); yield from paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj): yield prefix + (i,); yield from paths(v, prefix + (i,))

def get_parent(obj, path):
    for p in path[:-1]: obj = obj[p]
    return obj

@st.composite
def mutated(draw, z: Path):
    cfg = copy.deepcopy(draw(st.sampled_from(valid_configs(z))))
    for _ in range(draw(st.integers(1, 3))):
        ps = list(paths(cfg))
        kind = draw(st.sampled_from(["delete", "replace", "add", "density", "range", "gradient", "method", "dup_model"]))
        if kind in ("delete", "replace") and ps:
            p = draw(st.sampled_from(ps)); parent = get_parent(cfg, p)
            if kind == "delete": del parent[p[-1]]
            else: parent[p[-1]] = draw(BAD)
        elif kind == "add":
            ds = [p for p in ps if isinstance(get_parent(cfg, p + (0,)), dict)] if ps else []
            target = get_parent(cfg, draw(st.sampled_from(ds)) + (0,)) if ds and draw(st.booleans()) else cfg
            target[draw(st.sampled_from(KEYS))] = draw(BAD)
        elif kind == "density":
            for m in cfg["models"] if isinstance(cfg.get("models"), list) else []:
                if isinstance(m, dict) and isinstance(m.get("parameters"), dict):
                    m["parameters"]["density"] = draw(st.floats(-3, 3) | st.sampled_from([0.0, 1.0, 1.0001, -0.0]))
        elif kind == "range":
            sls = cfg["slices"] if isinstance(cfg.get("slices"), list) else []
            for s in (sl for x in sls if isinstance(x, dict) and isinstance(x.get("sources"), list) for sl in x["sources"] if isinstance(sl, dict)):
                s["layer_range"] = draw(st.lists(st.integers(-2, 7), min_size=0, max_size=3) | BAD)
        elif kind == "gradient":
            g = draw(st.lists(st.floats(-1, 2), min_size=0, max_size=7))
            key = draw(st.sampled_from(["weight", "t", "density", "lambda"]))
            where = cfg.setdefault("parameters", {}) if isinstance(cfg.get("parameters", {}), dict) else {}
            where[key] = g
        elif kind == "method":
            cfg["merge_method"] = draw(st.sampled_from(["lineer", "TIES", "", "slerp", "model_stock", "karcher", "nuslerp",
                                                        "breadcrumbs", "della", "layer_swap", "passthrough", "pcb"]) | st.text(max_size=8))
        elif kind == "dup_model" and isinstance(cfg.get("models"), list):
            cfg["models"].append(draw(st.sampled_from([{"model": str(z / n)} for n in ("a", "base", "wide", "deep", "vocab", "nope")] +
                                                      [{"model": f"{z / 'base'}+{z / x}"} for x in ("lora", "lora_other", "lora_absent")])))
    as_yaml = draw(st.booleans())
    if not as_yaml: return cfg
    text = yaml.safe_dump(cfg, sort_keys=False)
    if draw(st.booleans()):                   # damage the text too
        i = draw(st.integers(0, len(text)))
        text = text[:i] + draw(st.sampled_from(["", ":", "\t", "- ", "{", "]", "\n  x", "'", "&a *a"])) + text[i + draw(st.integers(0, 3)):]
    return text

@settings(max_examples=220, **SETTINGS)
@given(data=st.data())
def test_fuzz_configs(zoo, data):
    cfg = data.draw(mutated(zoo))
    CASES["configs"] += 1
    r = outcome(merge_config, cfg, progress=False, threads=1)
    if not isinstance(r, MergelabError): check_result(r)

# ---------------------------------------------------------------- (b) damaged checkpoint files
def rewrite_header(f: Path, edit):
    "Apply `edit(header_dict)` to a safetensors header, keeping the data bytes."
    raw = f.read_bytes(); (n,) = struct.unpack("<Q", raw[:8])
    h = json.loads(raw[8:8 + n]); edit(h)
    hb = json.dumps(h).encode(); hb += b" " * (-len(hb) % 8)
    f.write_bytes(struct.pack("<Q", len(hb)) + hb + raw[8 + n:])

def shards(d: Path) -> list[Path]: return sorted(d.glob("*.safetensors"))

DAMAGES = ["truncate", "flip_header", "nan", "inf", "missing_shard", "index_absent_key", "duplicate_key", "dtype",
           "shape", "garbage", "empty_file", "bad_index_json", "offsets"]

@settings(max_examples=200, **SETTINGS)
@given(damage=st.sampled_from(DAMAGES), which=st.sampled_from(["a", "sharded"]), data=st.data())
def test_fuzz_damaged_checkpoints(zoo, damage, which, data):
    CASES["checkpoints"] += 1
    with tempfile.TemporaryDirectory() as t:
        d = Path(t) / which; shutil.copytree(zoo / which, d)
        fs = shards(d); f = data.draw(st.sampled_from(fs))
        raw = f.read_bytes(); (n,) = struct.unpack("<Q", raw[:8])
        if damage == "truncate": f.write_bytes(raw[:data.draw(st.integers(0, len(raw) - 1))])
        elif damage == "flip_header":
            i = data.draw(st.integers(0, 8 + n - 1)); b = bytearray(raw); b[i] ^= 1 << data.draw(st.integers(0, 7))
            f.write_bytes(bytes(b))
        elif damage in ("nan", "inf"):
            from safetensors.torch import load_file, save_file
            sd = load_file(str(f)); k = data.draw(st.sampled_from(sorted(sd)))
            sd[k].view(-1)[data.draw(st.integers(0, sd[k].numel() - 1))] = float(damage) * data.draw(st.sampled_from([1, -1]))
            save_file(sd, str(f))
        elif damage == "missing_shard": f.unlink()
        elif damage == "index_absent_key" and (d / "model.safetensors.index.json").exists():
            ix = json.loads((d / "model.safetensors.index.json").read_text())
            ix["weight_map"][data.draw(st.sampled_from(["ghost.weight", "model.layers.9.mlp.weight"]))] = f.name
            (d / "model.safetensors.index.json").write_text(json.dumps(ix))
        elif damage == "duplicate_key" and len(fs) > 1:
            from safetensors.torch import load_file, save_file
            a, b = load_file(str(fs[0])), load_file(str(fs[1]))
            b[next(iter(a))] = a[next(iter(a))]; save_file(b, str(fs[1]))
        elif damage == "dtype":
            bad = data.draw(st.sampled_from(["F31", "f32", "", "BF16", "F16", "I64", "BOOL", "U8", None, 7, ["F32"]]))
            rewrite_header(f, lambda h: h[next(k for k in h if k != "__metadata__")].__setitem__("dtype", bad))
        elif damage == "shape":
            bad = data.draw(st.sampled_from([[], [-1], [4, -4], [1e3], ["4"], None, [2**62, 2**62], [0]]))
            rewrite_header(f, lambda h: h[next(k for k in h if k != "__metadata__")].__setitem__("shape", bad))
        elif damage == "offsets":
            bad = data.draw(st.sampled_from([[0], [-8, 56], [0, 2**70], "0-64", None, [1.5, 65.5], [64, 0]]))
            rewrite_header(f, lambda h: h[next(k for k in h if k != "__metadata__")].__setitem__("data_offsets", bad))
        elif damage == "garbage": f.write_bytes(data.draw(st.binary(min_size=0, max_size=64)))
        elif damage == "empty_file": f.write_bytes(b"")
        elif damage == "bad_index_json" and (d / "model.safetensors.index.json").exists():
            (d / "model.safetensors.index.json").write_text(data.draw(st.sampled_from(["{", "[]", '{"weight_map": 3}', "null", '{"weight_map": {"x": 5}}'])))
        before = tree_checksums(d)
        r = outcome(merge, [d, zoo / "b"], "linear", weight=0.5, progress=False, threads=1)
        if not isinstance(r, MergelabError):
            ref = merge([zoo / which, zoo / "b"], "linear", weight=0.5, progress=False, threads=1)
            check_result(r, {k: tuple(v.shape) for k, v in ref.items()})
            # a harmless edit (metadata, whitespace, a dtype we can read) is fine; a silently different result is not
            if damage not in ("dtype",): assert all(torch.equal(r[k], ref[k]) for k in ref), f"{damage}: silently different output"
        elif damage in ("nan", "inf"):
            assert "NaN/inf" in str(r) and str(d) in str(r), str(r)
        assert tree_checksums(d) == before, f"{damage}: the damaged input was modified"

# ---------------------------------------------------------------- (c) API inputs
@settings(max_examples=150, **SETTINGS)
@given(data=st.data())
def test_fuzz_api(zoo, data):
    CASES["api"] += 1
    refs = st.sampled_from(["a", "b", "base", "wide", "deep", "vocab", "nope", "lora", "base+lora", "base+lora_other",
                            "base+lora_absent", "wide+lora", "sd", "empty_sd", "int", "none", "module"])
    def ref(name):
        if name == "sd": return tiny_sd(9)
        if name == "empty_sd": return {}
        if name == "int": return 3
        if name == "none": return None
        if name == "module": return torch.nn.Linear(H, H)
        return str(zoo / name.split("+")[0]) + ("+" + str(zoo / name.split("+")[1]) if "+" in name else "")
    models = [ref(x) for x in data.draw(st.lists(refs, min_size=0, max_size=3))]
    method = data.draw(st.sampled_from(["linear", "ties", "task_arithmetic", "slerp", "model_stock", "nuslerp",
                                        "karcher", "layer_swap", "passthrough", "multislerp", "breadcrumbs", "nope"]))
    base = ref(data.draw(refs)) if data.draw(st.booleans()) else None
    params = data.draw(st.dictionaries(st.sampled_from(["weight", "density", "t", "lambda", "normalize"]),
                                       st.floats(-1, 2) | st.lists(st.floats(0, 1), max_size=4) | BAD, max_size=3))
    r = outcome(merge, models, method, base=base, progress=False, threads=1, **params)
    if not isinstance(r, MergelabError): check_result(r)

# ---------------------------------------------------------------- (d) CLI arguments, in-process
@settings(max_examples=40, **SETTINGS)
@given(size=st.sampled_from(["5GB", "1KB", "0", "-1", "abc", "1e3", "2GiB", "", "1.5.5MB", "∞"]) | st.text(max_size=6),
       text=st.sampled_from(["merge_method: linear\nmodels: [{model: A, parameters: {weight: 1}}]\n", "", "- 1\n", ":\n",
                             "merge_method: ties\nmodels: []\n"]), data=st.data())
def test_fuzz_cli(zoo, size, text, data):
    from mergelab.cli import main
    CASES["cli"] += 1
    with tempfile.TemporaryDirectory() as t:
        cfg = Path(t) / "c.yml"; cfg.write_text(text.replace("A", str(zoo / "a")))
        with time_limit():
            try: rc = main(["merge", str(cfg), str(Path(t) / "out"), "--max-shard-size", size, "--no-progress"])
            except SystemExit as e: rc = e.code          # argparse refusing an argument
        assert rc in (0, 2), rc
        if rc == 0: assert Checkpoint.open(Path(t) / "out").keys()

# ---------------------------------------------------------------- (e) the documented failure modes (nbs/90_failure_modes)
from mergelab.failures import FAILURE_CASES, make_fixtures, run_case, error_classes

@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    d = make_fixtures(tmp_path_factory.mktemp("failures"))
    sums = tree_checksums(d)
    yield d
    after = {k: v for k, v in tree_checksums(d).items() if k in sums}
    assert after == sums, "a failure case modified its inputs"

@pytest.mark.parametrize("case", FAILURE_CASES, ids=lambda c: c.name)
def test_failure_catalogue(fixtures, case):
    "Each case on the Failure modes page raises exactly its class, with the documented phrase, under the time limit."
    CASES["catalogue"] += 1
    with time_limit(): run_case(case, fixtures)

def test_catalogue_covers_every_error_class():
    "Every MergelabError subclass of the modules the page imports has at least one documented case."
    documented = {c.error for c in FAILURE_CASES}
    missing = [f"{c.__module__}.{c.__name__}" for c in error_classes() if c not in documented]
    assert not missing, f"add a FailureCase (nbs/90_failure_modes.ipynb) for {missing}"

def test_fuzz_count():
    "At least 500 generated bad inputs per run (only meaningful when the whole module ran)."
    if len(CASES) < 4: pytest.skip(f"only {dict(CASES)} ran")
    total = sum(CASES.values())
    print(f"\n{total} generated cases: {dict(CASES)}")
    assert total >= 500, CASES
