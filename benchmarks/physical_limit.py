"""Physical limit: a merge's throughput as a fraction of streaming the same bytes read → write with no math.

On the checkpoints of `merge_bench.py` (a base and fine-tunes of a Llama, bf16, 3 shards each), three jobs run in
the same process, alternating, each writing a fresh output:

- `copy`: for every tensor name, read that tensor from every input (`Checkpoint.get`, positional reads, as the merge
  does) and write one of them through the same `ShardedWriter` — the bytes of a merge, no arithmetic;
- `raw`: the same byte counts with plain `os.read`/`os.write` of the shard files (no mergelab, no tensors);
- `merge`: `mergelab.merge_config` of the same YAML (linear; TIES in its default mode, mergekit's tie order, and with
  `tie_break: index`), same threads and shard size.

Prints wall times (best of `--repeats`), the bytes moved and the ratios merge/copy (the targets: linear's throughput
≥ 50 % of the limit, TIES's ≥ 20 %). Inputs are in the page cache after generation (a warm read), so this measures
memory bandwidth and Python overhead, not the disk. Not a test.

    python benchmarks/physical_limit.py [--layers 8] [--repeats 3] [--threads 2]
"""
from __future__ import annotations
import argparse, importlib.util, os, shutil, sys, tempfile, time
from pathlib import Path
import torch

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("merge_bench", HERE / "merge_bench.py")
merge_bench = importlib.util.module_from_spec(_spec); _spec.loader.exec_module(merge_bench)

def copy_job(paths: list[Path], out: Path, threads: int, shard: str) -> int:
    "Read each name from every input and write one copy (the merge's I/O without its math); returns bytes moved."
    from mergelab.io import Checkpoint, ShardedWriter
    from mergelab.scheduler import TensorGroup, run_groups
    cks = [Checkpoint.open(p) for p in paths]
    groups = [TensorGroup(k, [(c, k) for c in cks[1:]], (cks[0], k)) for k in cks[0].keys()]
    moved = 0
    def read(g):
        ts = [c.get(k) for c, k in g.inputs + [g.base]]
        return ts[0]
    with ShardedWriter(out, shard, overwrite=True, config=cks[0].config) as w:
        for g, t in run_groups(groups, read, threads=threads):
            w.add(g.name, t); moved += g.read_bytes + t.nbytes
        w.commit()
    return moved

def raw_job(paths: list[Path], out: Path, out_bytes: int) -> int:
    "Plain file reads of every input shard and a write of `out_bytes`, 16 MiB at a time."
    buf = bytearray(16 << 20); moved = 0
    for p in paths:
        for f in sorted(p.glob("*.safetensors")):
            fd = os.open(f, os.O_RDONLY)
            while (n := os.readv(fd, [buf])): moved += n
            os.close(fd)
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out / "blob", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    left = out_bytes
    while left > 0:
        n = os.write(fd, memoryview(buf)[: min(left, len(buf))]); left -= n; moved += n
    os.close(fd)
    return moved

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=8); ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--inter", type=int, default=2304); ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--fine-tunes", type=int, default=3); ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2); ap.add_argument("--shard", default="500MB")
    ap.add_argument("--workdir", default=None)
    a = ap.parse_args()
    from mergelab.config import merge_config
    d = Path(a.workdir or tempfile.mkdtemp(prefix="physlimit-")); d.mkdir(parents=True, exist_ok=True)
    paths = [d / "base"] + [d / f"ft_{i}" for i in range(a.fine_tunes)]
    if not all((p / "config.json").exists() for p in paths):
        merge_bench.make_models(d, a.layers, a.hidden, a.inter, a.vocab, a.fine_tunes, 0.002)
    w = 1.0 / a.fine_tunes
    ft = "".join(f"  - model: {p}\n    parameters: {{weight: {w}, density: 0.5}}\n" for p in paths[1:])
    cfgs = {"linear": f"merge_method: linear\nmodels:\n  - model: {paths[0]}\n    parameters: {{weight: {w}}}\n" +
                      "".join(f"  - model: {p}\n    parameters: {{weight: {w}}}\n" for p in paths[1:]) + "dtype: bfloat16\n",
            "ties": f"merge_method: ties\nbase_model: {paths[0]}\nmodels:\n{ft}dtype: bfloat16\n",
            "ties_index": f"merge_method: ties\nbase_model: {paths[0]}\nmodels:\n{ft}parameters: {{tie_break: index}}\n"
                          "dtype: bfloat16\n"}
    from mergelab.io import Checkpoint
    out_bytes = Checkpoint.open(paths[0]).total_bytes
    times: dict[str, list[float]] = {k: [] for k in ("raw", "copy", *cfgs)}
    moved = {}
    for r in range(a.repeats):
        for job in times:
            out = d / f"out_{job}"; shutil.rmtree(out, ignore_errors=True)
            t0 = time.perf_counter()
            if job == "raw": moved[job] = raw_job(paths, out, out_bytes)
            elif job == "copy": moved[job] = copy_job(paths, out, a.threads, a.shard)
            else: merge_config(cfgs[job], out, threads=a.threads, max_shard_size=a.shard, progress=False, overwrite=True)
            times[job].append(time.perf_counter() - t0)
    best = {k: min(v) for k, v in times.items()}
    gb = moved["copy"] / 1e9
    print(f"\n{len(paths)} checkpoints of {merge_bench.total_params(paths[0]) / 1e6:.1f}M params (bf16); "
          f"{gb:.2f} GB moved per job (read {len(paths)} models + write 1); best of {a.repeats}, threads={a.threads}, "
          f"torch threads={torch.get_num_threads()}")
    for k, t in best.items(): print(f"  {k:10s} {t:7.2f} s   {gb / t:6.2f} GB/s")
    for k in cfgs:
        print(f"  {k} merge throughput = {best['copy'] / best[k]:.1%} of the mergelab copy limit, "
              f"{best['raw'] / best[k]:.1%} of raw file I/O (target >= {50 if k == 'linear' else 20} %)")

if __name__ == "__main__":
    main()
