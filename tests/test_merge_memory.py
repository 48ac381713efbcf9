"""Acceptance (merge engine): merging three ≈170M-parameter bf16 checkpoints (plus the base) keeps peak RSS under
2 GB, for TIES with per-tensor top-k and with the model-wide top-k (`topk_scope: model`, two extra streaming passes).
The checkpoints are generated tensor by tensor with the benchmark's generator; each merge runs through the installed
`mergelab` CLI in a fresh process whose peak RSS (ru_maxrss) is measured."""
import importlib.util, shutil, sys
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
        print(f"\nTIES topk_scope={scope} of 3 x 172M bf16 + base: {m['wall']:.1f} s, peak RSS {m['rss'] / 2**30:.2f} GiB")
        assert m["rss"] < 2 * 10**9
        assert len(Checkpoint.open(tmp_path / scope)) == len(Checkpoint.open(paths[0]))
    # the model-wide statistic is streamed: no flattened model, so memory stays at the per-tensor bound
    assert rss["model"] < 1.25 * rss["tensor"]
