"""Merging three ≈170M-parameter bf16 checkpoints (plus the base) keeps peak RSS under 2 GB,
for TIES with per-tensor top-k and with the model-wide top-k (`topk_scope: model`, two extra streaming passes).
The checkpoints are generated tensor by tensor with the benchmark's generator; each merge runs through the installed
`mergelab` CLI in a fresh process whose peak RSS (ru_maxrss) is measured."""
import importlib.util, shutil, subprocess, sys
import pytest
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("merge_bench", ROOT / "benchmarks" / "merge_bench.py")
bench = importlib.util.module_from_spec(spec); spec.loader.exec_module(bench)

def test_three_170m_bf16_under_2gb(tmp_path):
    from mergelab.io import Checkpoint
    paths = bench.make_models(tmp_path, layers=16, hidden=768, inter=2304, vocab=32000, n_ft=3, noise=0.002)
    exe = shutil.which("mergelab") or str(Path(sys.executable).parent / "mergelab")
    models = "".join(f"  - model: {p}\n    parameters: {{weight: 0.33, density: 0.5}}\n" for p in paths[1:])
    rss = {}
    for scope in ("tensor", "model"):
        (tmp_path / f"{scope}.yml").write_text(f"merge_method: ties\nbase_model: {paths[0]}\nmodels:\n{models}"
                                               f"parameters: {{topk_scope: {scope}}}\ndtype: bfloat16\n")
        m = bench.measured([exe, "merge", str(tmp_path / f"{scope}.yml"), str(tmp_path / scope), "--no-progress",
                            "--max-shard-size", "500MB"])
        rss[scope] = m["rss"]
        from mergelab.config import estimate_peak_memory
        est = estimate_peak_memory(tmp_path / f"{scope}.yml")
        grew = m["rss"] - _baseline_rss(exe, tmp_path / f"{scope}.yml")
        print(f"\nTIES topk_scope={scope} of 3 x 172M bf16 + base: {m['wall']:.1f} s, peak RSS {m['rss'] / 2**30:.2f} GiB; "
              f"memory guard estimate {est} vs measured growth {grew / 2**20:.0f} MiB ({est.peak / grew:.2f}x)")
        # two threads: the guard sizes each thread's heap for the largest tensor's work (an upper bound by design);
        # measured here 2.74x (per tensor) and 3.75x (model-wide: its threshold pass streams each tensor in chunks and
        # gives its heap back, so the merge sets the peak); the bound leaves room for run-to-run noise
        assert 0.9 * grew <= est.peak <= 4.2 * grew
        assert m["rss"] < 2 * 10**9
        assert len(Checkpoint.open(tmp_path / scope)) == len(Checkpoint.open(paths[0]))
    # the model-wide statistic is streamed: no flattened model, so memory stays at the per-tensor bound
    assert rss["model"] < 1.25 * rss["tensor"]

# ---------------------------------------------------------------- the memory guard
def _baseline_rss(exe: str, cfg: Path) -> int:
    "Peak RSS of `mergelab validate` on the same config: the interpreter, torch and mergelab, headers opened, no merge."
    return bench.measured([exe, "validate", str(cfg)])["rss"]

@pytest.fixture(scope="module")
def family46(tmp_path_factory):
    "A base and three fine-tunes of a 46M-parameter Llama in bf16, generated once for the estimate checks."
    d = tmp_path_factory.mktemp("est")
    return bench.make_models(d, layers=4, hidden=512, inter=1536, vocab=32000, n_ft=3, noise=0.002)

@pytest.mark.parametrize("method,scope,threads", [("ties", "tensor", 2), ("linear", "tensor", 1)])   # model scope: the 172M test
def test_estimate_tracks_measured_peak(family46, tmp_path, method, scope, threads):
    "The guard's estimate is within a sane factor of the measured peak-RSS growth of a real merge (never below it)."
    from mergelab.config import estimate_peak_memory
    paths = family46
    exe = shutil.which("mergelab") or str(Path(sys.executable).parent / "mergelab")
    dens = ", density: 0.5" if method == "ties" else ""
    models = "".join(f"  - model: {p}\n    parameters: {{weight: 0.33{dens}}}\n" for p in paths[1:])
    head = f"base_model: {paths[0]}\nparameters: {{topk_scope: {scope}}}\n" if method == "ties" else ""
    cfg = tmp_path / "c.yml"
    cfg.write_text(f"merge_method: {method}\n{head}models:\n{models}dtype: bfloat16\n")
    est = estimate_peak_memory(cfg, threads=threads)
    m = bench.measured([exe, "merge", str(cfg), str(tmp_path / "out"), "--no-progress", "--threads", str(threads),
                        "--max-shard-size", "100MB"])
    base_rss = _baseline_rss(exe, cfg)
    grew = m["rss"] - base_rss
    print(f"\n{method}/{scope}/{threads}t: estimate {est}; measured peak {m['rss'] / 2**20:.0f} MiB, "
          f"interpreter {base_rss / 2**20:.0f} MiB: growth {grew / 2**20:.0f} MiB vs estimated {est.peak / 2**20:.0f} MiB "
          f"({est.peak / grew:.2f}x); peak RSS predicted/measured {(base_rss + est.peak) / m['rss']:.2f}")
    assert est.peak >= 0.9 * grew, "the estimate must not undershoot the real growth"
    assert est.peak <= 3.0 * grew, "nor be so pessimistic that it refuses merges that fit"

def test_regmean_estimates_track_measured_peaks(family46, tmp_path):
    """RegMean on the 46M Llama family, in fresh processes: the data pass (`build_plan` runs it) and then the merge
    (Grams cached, one thread) each grow the peak RSS by at least 0.9× and at most 3× what their estimates say."""
    import torch, yaml
    from safetensors.torch import save_file
    from mergelab.config import estimate_peak_memory
    from mergelab.data_aware import data_source, data_pass_memory
    from mergelab.io import open_model
    paths = family46
    g = torch.Generator().manual_seed(0)
    save_file({p.name: torch.randint(0, 32000, (4, 64), generator=g) for p in paths[1:]}, str(tmp_path / "ids.safetensors"))
    cfg = tmp_path / "c.yml"
    cfg.write_text(yaml.safe_dump({"merge_method": "regmean", "base_model": str(paths[0]), "dtype": "bfloat16",
                                   "models": [{"model": str(p)} for p in paths[1:]],
                                   "parameters": {"data": {"path": str(tmp_path / "ids.safetensors")}, "batch_size": 4,
                                                  "num_batches": 1, "cache_dir": str(tmp_path / "cache")}}))
    cks = [open_model(p) for p in paths[1:]]
    est = {"data pass": data_pass_memory("regmean", cks, data_source(str(tmp_path / "ids.safetensors")).pair(cks),
                                                batch_size=4).peak,
           "merge": estimate_peak_memory(cfg, threads=1).peak}
    run = lambda code: bench.measured([sys.executable, "-c", "from transformers import LlamaForCausalLM\n"
                                       "from mergelab.config import build_plan, merge_config\nimport mergelab.data_aware\n" + code])["rss"]
    base_rss = run(f"build_plan({str(cfg)!r}, prepare=False)")                 # imports and headers only
    grew = {"data pass": run(f"build_plan({str(cfg)!r}, progress=False)") - base_rss}     # nothing merged
    assert len(list((tmp_path / "cache").rglob("gram-*.safetensors"))) == 3
    grew["merge"] = run(f"merge_config({str(cfg)!r}, {str(tmp_path / 'out')!r}, threads=1, max_shard_size='100MB', "
                        "progress=False)") - base_rss
    print("\nRegMean, 46M Llama family: " + "; ".join(f"{k} {grew[k] / 2**20:.0f} MiB measured, {est[k] / 2**20:.0f} MiB "
                                                    f"estimated ({est[k] / grew[k]:.2f}x)" for k in grew))
    for k in grew: assert 0.9 * grew[k] <= est[k] <= 3.0 * grew[k], (k, grew[k], est[k])
    assert len(open_model(tmp_path / "out").keys()) == len(cks[0].keys())

def test_guard_refuses_before_any_read(tmp_path, monkeypatch):
    "With too little memory available the merge is refused with the estimate and the knobs, before a tensor is read."
    from mergelab.config import merge_config, estimate_peak_memory
    from mergelab.memory import InsufficientMemory
    from mergelab.io import SafetensorsCheckpoint
    from conftest import make_llama_family, tree_checksums
    make_llama_family(tmp_path, ("a", "b"))
    cfg = {"merge_method": "ties", "base_model": str(tmp_path / "base"), "parameters": {"topk_scope": "model"},
           "models": [{"model": str(tmp_path / n), "parameters": {"weight": 0.5, "density": 0.5}} for n in "ab"]}
    sums = tree_checksums(tmp_path)
    est = estimate_peak_memory(cfg)
    monkeypatch.setenv("MERGELAB_AVAILABLE_MEMORY", str(est.peak // 2))
    def no_read(self, k): raise AssertionError(f"tensor {k} was read before the memory guard refused")
    monkeypatch.setattr(SafetensorsCheckpoint, "_read", no_read)
    with pytest.raises(InsufficientMemory) as e: merge_config(cfg, tmp_path / "out", progress=False)
    msg = str(e.value)
    for part in ("needs about", "is available (MERGELAB_AVAILABLE_MEMORY)", "threads=1", "topk_scope='tensor'",
                 "force=True"): assert part in msg, (part, msg)
    assert not (tmp_path / "out").exists()
    monkeypatch.undo()
    monkeypatch.setenv("MERGELAB_AVAILABLE_MEMORY", str(est.peak // 2))
    # the CLI refuses the same way (exit 2), and --force runs it to a complete output
    exe = shutil.which("mergelab") or str(Path(sys.executable).parent / "mergelab")
    yml = tmp_path / "c.yml"
    import yaml; yml.write_text(yaml.safe_dump(cfg))
    r = subprocess.run([exe, "merge", str(yml), str(tmp_path / "out"), "--no-progress"], capture_output=True, text=True)
    assert r.returncode == 2 and "force" in r.stderr and not (tmp_path / "out").exists(), r.stderr
    r = subprocess.run([exe, "merge", str(yml), str(tmp_path / "out"), "--no-progress", "--force"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert len(Checkpoint_open(tmp_path / "out")) == len(Checkpoint_open(tmp_path / "base"))
    r = subprocess.run([exe, "validate", str(yml)], capture_output=True, text=True)
    assert r.returncode == 0 and "estimated peak memory" in r.stdout and "warning" in r.stdout, r.stdout
    assert tree_checksums(tmp_path / "base") == {k: v for k, v in sums.items() if "/base/" in k}

def Checkpoint_open(p):
    from mergelab.io import Checkpoint
    return Checkpoint.open(p)

# ---------------------------------------------------------------- row blocks
def test_ties_row_blocks_bound_a_large_embedding(tmp_path):
    """A 64000 × 512 bf16 embedding (3 fine-tunes + base): TIES's whole-tensor working set is above 2 GB; with
    `--max-memory 256MB` the embedding merges in row blocks, and the peak RSS stays near the budget: above the process's
    baseline by less than the budget plus the assembled tensor and the compiled kernels' runtime, and within the
    guard's estimate for the row-blocked plan (its prepare pass, which finds the per-tensor thresholds, included)."""
    from mergelab.io import Checkpoint
    from mergelab.config import build_plan
    from mergelab.memory import COMPILED_KERNELS
    paths = bench.make_models(tmp_path, layers=1, hidden=512, inter=512, vocab=64_000, n_ft=3, noise=0.002)
    exe = shutil.which("mergelab") or str(Path(sys.executable).parent / "mergelab")
    models = "".join(f"  - model: {p}\n    parameters: {{weight: 0.33, density: 0.5}}\n" for p in paths[1:])
    cfg = tmp_path / "c.yml"
    cfg.write_text(f"merge_method: ties\nbase_model: {paths[0]}\nmodels:\n{models}dtype: bfloat16\n")
    whole = build_plan(cfg, prepare=False).memory
    plan = build_plan(cfg, prepare=False, max_memory="256MB")
    assert whole.parts["working set"] > 2 * 10**9 and sum(g.rows is not None for g in plan.groups) >= 8
    m = bench.measured([exe, "merge", str(cfg), str(tmp_path / "out"), "--no-progress", "--max-memory", "256MB",
                        "--max-shard-size", "100MB"])
    grew = m["rss"] - _baseline_rss(exe, cfg)
    print(f"\nTIES, 64000 x 512 bf16 embedding in row blocks: {m['wall']:.1f} s, RSS grew {grew / 2**20:.0f} MiB "
          f"(whole-tensor estimate {whole.peak / 2**30:.2f} GiB, row-block estimate {plan.memory.peak / 2**20:.0f} MiB)")
    assert grew < 256 * 10**6 + 64_000 * 512 * 2 + COMPILED_KERNELS
    assert 0.9 * grew <= plan.memory.peak <= 3.0 * grew, (grew, plan.memory.parts)
    out = Checkpoint.open(tmp_path / "out")
    assert out.shape("model.embed_tokens.weight") == (64_000, 512) and len(out) == len(Checkpoint.open(paths[0]))

# ---------------------------------------------------------------- compiled kernels
_KERNEL_CHECK = r'''
import inspect, sys, torch
from mergelab.registry import load_methods
gen = torch.Generator().manual_seed(0)
b0 = torch.randn(96, 64, generator=gen); ts = [b0 + 0.01 * torch.randn(96, 64, generator=gen) for _ in range(3)]
def run(m, dt):
    k, sig = min(3, m.max_models or 3), inspect.signature(m.fn).parameters
    kw = {p.name: ([0.5] * k if p.per_model else 0.5) for p in m.params.values() if p.required or p.name == "density"}
    kw |= {"task": 0} if "task" in kw else {}
    r = m.resolve(kw, k) | ({"_layer": 1, "_num_layers": 4} if "_layer" in sig else {})
    r |= {"_inputs": [t.to(dt) for t in ts]} if "_inputs" in sig else {}
    ins = [t.to(dt) for t in (ts[:1] if "_inputs" in sig else ts[:k])]
    m.fn(ins, b0.to(dt) if m.base != "none" else None, **m._extras(r, "x.weight", 0))
methods = {n: m for n, m in load_methods().items() if not n.startswith("_") and m.data is None}
for name, m in sorted(methods.items()):
    if m.compiled: continue
    for dt in (torch.bfloat16, torch.float16, torch.float32):
        run(m, dt)
        assert "numba" not in sys.modules, f"{name} ({dt}) compiles kernels but is not registered compiled=True"
run(methods["ties"], torch.bfloat16)
assert "numba" in sys.modules
print(sum(not m.compiled for m in methods.values()), "methods without kernels,", sum(m.compiled for m in methods.values()), "with")
'''

def test_compiled_registrations_are_the_methods_that_load_kernels():
    """The memory guard counts the runtime of compiled kernels (`COMPILED_KERNELS`) for the methods registered
    `compiled=True`. In a fresh process, every other data-free method merges bf16, fp16 and fp32 tensors without
    importing numba, and TIES (registered compiled) does import it."""
    r = subprocess.run([sys.executable, "-c", _KERNEL_CHECK], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    print("\n" + r.stdout.strip())
