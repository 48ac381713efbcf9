"""Acceptance (merge engine): merging three ≈170M-parameter bf16 checkpoints (plus the base) keeps peak RSS under
2 GB. The checkpoints are generated tensor by tensor with the benchmark's generator; the merge runs through the
installed `mergelab` CLI in a fresh process whose peak RSS (ru_maxrss) is measured."""
import importlib.util, json, shutil, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("merge_bench", ROOT / "benchmarks" / "merge_bench.py")
bench = importlib.util.module_from_spec(spec); spec.loader.exec_module(bench)

def test_three_170m_bf16_under_2gb(tmp_path):
    paths = bench.make_models(tmp_path, layers=16, hidden=768, inter=2304, vocab=32000, n_ft=3, noise=0.002)
    models = "".join(f"  - model: {p}\n    parameters: {{weight: 0.33, density: 0.5}}\n" for p in paths[1:])
    (tmp_path / "c.yml").write_text(f"merge_method: ties\nbase_model: {paths[0]}\nmodels:\n{models}dtype: bfloat16\n")
    exe = shutil.which("mergelab") or str(Path(sys.executable).parent / "mergelab")
    m = bench.measured([exe, "merge", str(tmp_path / "c.yml"), str(tmp_path / "out"), "--no-progress",
                        "--max-shard-size", "500MB"])
    print(f"\nTIES of 3 x 172M bf16 + base: {m['wall']:.1f} s, peak RSS {m['rss'] / 2**30:.2f} GiB")
    assert m["rss"] < 2 * 10**9
    from mergelab.io import Checkpoint
    out = Checkpoint.open(tmp_path / "out")
    assert len(out) == len(Checkpoint.open(paths[0]))
