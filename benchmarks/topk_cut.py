"""TIES trim on a bf16 task vector: the histogram cut (`magnitude_histogram`) against the selection it replaced.

The baseline is the previous trim, kept here: the k-th magnitude by `kthvalue` on a float32 copy, then the entries above
it and, where ties at that magnitude do not all fit, mergekit's `argsort` (default) or index order. The current trim
reads the cut off a 65,536-bin histogram of the bf16 bit patterns. Both run in this process on the same tensor
(a 32000 × 768 bf16 embedding delta by default, one torch thread); outputs must be equal. Not a test.

    python benchmarks/topk_cut.py [--rows 32000] [--cols 768] [--density 0.5]
"""
from __future__ import annotations
import argparse, time
import torch
from mergelab.methods import sparsify_magnitude, rescale_masked

def kthvalue_trim(delta: torch.Tensor, density: float, tie_break: str) -> torch.Tensor:
    "The previous trim: kthvalue cut on float32, argsort only where ties are ambiguous."
    k = max(1, int(density * delta.numel()))
    w = delta.abs().reshape(-1).float()
    nz = w > 0
    if int(nz.sum()) <= k: keep = nz
    else:
        v = w.kthvalue(w.numel() - k + 1).values
        keep = w > v
        need, tied = k - int(keep.sum()), w == v
        if tie_break == "argsort" and int(tied.sum()) != need:
            keep = torch.zeros(w.numel(), dtype=torch.bool); keep[torch.argsort(w, descending=True)[:k]] = True
        elif need > 0: keep[tied.nonzero().squeeze(1)[:need]] = True
    return rescale_masked(delta, keep.to(delta.dtype).reshape_as(delta), "none", density)

def best(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter(); fn(); times.append(time.perf_counter() - t)
    return min(times)

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=32000); ap.add_argument("--cols", type=int, default=768)
    ap.add_argument("--density", type=float, default=0.5)
    a = ap.parse_args()
    torch.set_num_threads(1)
    d = (torch.randn(a.rows, a.cols, generator=torch.Generator().manual_seed(0)) * 0.002).bfloat16()
    print(f"{a.rows} x {a.cols} bf16 delta, density {a.density}, 1 torch thread (best of 3)")
    for tb in ("index", "argsort"):
        assert torch.equal(kthvalue_trim(d, a.density, tb), sparsify_magnitude(d, a.density, tie_break=tb)), tb
        before = best(lambda: kthvalue_trim(d, a.density, tb))
        now = best(lambda: sparsify_magnitude(d, a.density, tie_break=tb))
        print(f"  tie_break={tb:8s} kthvalue {before:6.3f} s   histogram {now:6.3f} s   {before / now:5.2f}x faster, equal outputs")

if __name__ == "__main__":
    main()
