"""Peak RSS and wall time of an SVD-based merge of 4 tasks on one 4096 x 4096 matrix (issue: SVD methods hold one
matrix's decomposition at a time). Generates a base and 4 fine-tunes (fp32, plus a 1-D tensor), runs
`mergelab merge` in a fresh process and prints its wall time and peak RSS. Not a test; tests/test_spectral_memory.py
asserts the bound for iso_c.

    python benchmarks/spectral_memory.py [--method tsv] [--size 4096] [--tasks 4]
"""
from __future__ import annotations
import argparse, importlib.util, shutil, sys, tempfile
from pathlib import Path
import torch

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("merge_bench", HERE / "merge_bench.py")
merge_bench = importlib.util.module_from_spec(_spec); _spec.loader.exec_module(merge_bench)

def make(d: Path, size: int, tasks: int) -> list[Path]:
    "A base and `tasks` fine-tunes with one size x size matrix and one vector, written tensor by tensor."
    from mergelab.io import ShardedWriter
    g = torch.Generator().manual_seed(0)
    base = {"layer.0.weight": torch.randn(size, size, generator=g) * 0.02, "layer.0.bias": torch.zeros(size)}
    paths = [d / "base"] + [d / f"task{i}" for i in range(tasks)]
    for j, p in enumerate(paths):
        with ShardedWriter(p, "1GB") as w:
            for k, v in base.items():
                w.add(k, v if j == 0 else v + 0.001 * torch.randn(v.shape, generator=torch.Generator().manual_seed(j)))
    return paths

def run(method: str, size: int = 4096, tasks: int = 4, workdir: Path | None = None) -> dict:
    d = Path(workdir or tempfile.mkdtemp(prefix="spectral-"))
    paths = make(d, size, tasks)
    models = "".join(f"  - model: {p}\n" for p in paths[1:])
    (d / "c.yml").write_text(f"merge_method: {method}\nbase_model: {paths[0]}\nmodels:\n{models}")
    exe = shutil.which("mergelab") or str(Path(sys.executable).parent / "mergelab")
    m = merge_bench.measured([exe, "merge", str(d / "c.yml"), str(d / "out"), "--no-progress", "--overwrite"])
    return {"method": method, "size": size, "tasks": tasks, "wall_s": m["wall"], "peak_rss_gib": m["rss"] / 2**30}

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", default="tsv"); ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--tasks", type=int, default=4)
    a = ap.parse_args()
    print(run(a.method, a.size, a.tasks))
