"""Acceptance (research methods): an SVD-based merge of 4 tasks on a 4096 x 4096 matrix stays within 2 GB RSS
(one matrix's decomposition at a time). iso_c: one full SVD of the task sum."""
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("spectral_memory", ROOT / "benchmarks" / "spectral_memory.py")
bench = importlib.util.module_from_spec(spec); spec.loader.exec_module(bench)

def test_iso_c_4096_four_tasks_under_2gb(tmp_path):
    r = bench.run("iso_c", 4096, 4, tmp_path)
    print(f"\n{r}")
    assert r["peak_rss_gib"] * 2**30 < 2 * 10**9
