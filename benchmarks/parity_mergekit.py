"""Oracle check: mergelab's merge methods against mergekit 0.1.5's in-memory `merge_tensors`.

Needs a separate environment with mergekit (never a test dependency):

    python3.11 -m venv /work/venvs/mergekit
    /work/venvs/mergekit/bin/pip install torch==2.13.0 mergekit==0.1.5
    PYTHONPATH=/work/main /work/venvs/mergekit/bin/python benchmarks/parity_mergekit.py

For every method, a few parameter settings, three shapes and fp32/bf16 inputs, it merges the same random tensors with
both libraries, each with its defaults, and prints the largest absolute difference (0 = bit-exact). mergelab's side follows `scheduler.merge_group`:
inputs are cast to the method's compute dtype, the result back to the input dtype. DARE/DELLA runs seed mergekit's
global RNG and mergelab's generator with the same seed, so the Bernoulli masks are the same draws.
"""
from __future__ import annotations
import sys
import torch
from mergekit.merge_methods.api import merge_tensors
from mergelab.registry import METHODS
import mergelab.methods  # noqa: F401  (registers the methods)

SHAPES = [(64, 48), (257,), (3, 5, 7)]
W3 = [0.5, 0.3, 0.2]

# (method, mergelab params, mergekit params, layout, n models, random?)
# layout: "base" = base first + models (base_index 0); "nobase" = models only; "base_opt" = both variants
CASES = [
    ("linear", dict(weight=W3), dict(weight=W3), "nobase", 3, False),
    ("linear", dict(weight=W3, normalize=False), dict(weight=W3, normalize=False), "nobase", 3, False),
    ("task_arithmetic", dict(weight=W3, **{"lambda": 0.7}), dict(weight=W3, **{"lambda": 0.7}), "base", 3, False),
    ("task_arithmetic", dict(weight=W3, normalize=True), dict(weight=W3, normalize=True), "base", 3, False),
    ("ties", dict(weight=W3, density=0.5), dict(weight=W3, density=0.5), "base", 3, False),
    ("ties", dict(weight=1.0), dict(weight=1.0), "base", 3, False),
    ("ties", dict(weight=W3, density=[0.3, 0.5, 0.7], rescale=True, **{"lambda": 0.8}),
     dict(weight=W3, density=[0.3, 0.5, 0.7], rescale=True, **{"lambda": 0.8}), "base", 3, False),
    ("ties", dict(weight=W3, density=0.4, normalize=False, **{"lambda": 0.8}),
     dict(weight=W3, density=0.4, normalize=False, **{"lambda": 0.8}), "base", 3, False),
    ("dare_ties", dict(weight=W3, density=0.5), dict(weight=W3, density=0.5), "base", 3, True),
    ("dare_ties", dict(weight=W3, density=0.3, normalize=True), dict(weight=W3, density=0.3, normalize=True), "base", 3, True),
    ("dare_linear", dict(weight=W3, density=0.6), dict(weight=W3, density=0.6), "base", 3, True),
    ("dare_linear", dict(weight=W3, density=0.6, rescale=False), dict(weight=W3, density=0.6, rescale=False), "base", 3, True),
    ("breadcrumbs", dict(weight=W3, density=0.8, gamma=0.05), dict(weight=W3, density=0.8, gamma=0.05), "base", 3, False),
    ("breadcrumbs_ties", dict(weight=W3, density=0.8, gamma=0.05), dict(weight=W3, density=0.8, gamma=0.05), "base", 3, False),
    ("della", dict(weight=W3, density=0.5, epsilon=0.1), dict(weight=W3, density=0.5, epsilon=0.1), "base", 3, True),
    ("della", dict(weight=W3), dict(weight=W3), "base", 3, True),
    ("della_linear", dict(weight=W3, density=0.6, epsilon=0.2), dict(weight=W3, density=0.6, epsilon=0.2), "base", 3, True),
    ("slerp", dict(t=0.3), dict(t=0.3), "base", 1, False),
    ("slerp", dict(t=0.8), dict(t=0.8), "base", 1, False),
    ("nuslerp", dict(weight=[0.3, 0.7]), dict(weight=[0.3, 0.7]), "base_opt", 2, False),
    ("nuslerp", dict(weight=[0.4, 0.6], nuslerp_flatten=False), dict(weight=[0.4, 0.6], nuslerp_flatten=False), "base_opt", 2, False),
    ("nuslerp", dict(weight=[0.4, 0.6], nuslerp_flatten=False, nuslerp_row_wise=True),
     dict(weight=[0.4, 0.6], nuslerp_flatten=False, nuslerp_row_wise=True), "base_opt", 2, False),
    ("multislerp", dict(weight=W3), dict(weight=W3), "base_opt", 3, False),
    ("karcher", dict(), dict(), "nobase", 3, False),
    ("model_stock", dict(), dict(), "base", 3, False),
    ("model_stock", dict(filter_wise=True), dict(filter_wise=True), "base", 3, False),
    ("sce", dict(), dict(), "base", 3, False),
    ("sce", dict(select_topk=0.5), dict(select_topk=0.5), "base", 3, False),
    ("nearswap", dict(t=0.05), dict(t=0.05), "base", 1, False),
    ("ram", dict(), dict(), "base", 3, False),
    ("arcee_fusion", dict(), dict(), "base", 1, False),
    ("passthrough", dict(scale=0.5), dict(scale=0.5), "nobase", 1, False),
]

def ours(method, params, tensors, base, seed):
    m = METHODS[method]
    first = base if base is not None else tensors[0]
    cd = torch.float32 if m.compute == "fp32" and first.dtype != torch.float64 else first.dtype
    kw = m._extras(m.resolve(params, len(tensors)), "t", 0)
    if "generator" in kw: kw["generator"] = torch.Generator().manual_seed(seed)
    out = m.fn([t.to(cd) for t in tensors], None if base is None else base.to(cd), **kw)
    return out.to(first.dtype)

# mergekit's Arcee Fusion multiplies by a float32 mask, so it returns float32 for bf16 inputs, and its writer keeps that
# dtype unless `out_dtype` is set; mergelab writes the declared dtype. Compared after rounding to the input dtype.
ROUNDED = {"arcee_fusion"}
# methods that sample above 10^6 entries (Arcee Fusion's quantiles): one case above that size, with aligned RNG
SAMPLED = {"arcee_fusion"}

def theirs(method, params, tensors, base, seed):
    torch.manual_seed(seed)
    if base is None: out = merge_tensors(tensors, method, parameters=params)
    else: out = merge_tensors([base, *tensors], method, parameters=params, base_index=0)
    return out.to(tensors[0].dtype) if method in ROUNDED else out

def inputs(shape, n, dtype, gen, method):
    base = torch.randn(shape, generator=gen)
    ms = [base + 0.1 * torch.randn(shape, generator=gen) for _ in range(n)]
    if method == "ram":   # sparse deltas: some entries changed by one model, some by several, some by none
        ms = [torch.where(torch.rand(shape, generator=gen) < 0.5, m, base) for m in ms]
    return base.to(dtype), [m.to(dtype) for m in ms]

def negative_control(gen) -> float:
    "A DARE merge with a different seed on our side must differ: the bit-exact DARE rows compare the same draws."
    base, ts = inputs((64, 48), 3, torch.float32, gen, "dare_ties")
    p = dict(weight=W3, density=0.5)
    return (ours("dare_ties", p, ts, base, 1) - theirs("dare_ties", p, ts, base, 2)).abs().max().item()

def main():
    gen = torch.Generator().manual_seed(0)
    worst, rows, big_done = {}, [], {}
    for ci, (method, p_ours, p_mk, layout, n, rnd) in enumerate(CASES):
        variants = {"base": [True], "nobase": [False], "base_opt": [True, False]}[layout]
        for dtype in (torch.float32, torch.bfloat16):
            diff, exact = 0.0, True
            for with_base in variants:
                for si, shape in enumerate(SHAPES):
                    base, ts = inputs(shape, n, dtype, gen, method)
                    seed = 1000 * ci + si
                    a = ours(method, p_ours, ts, base if with_base else None, seed)
                    b = theirs(method, p_mk, ts, base if with_base else None, seed)
                    assert a.dtype == b.dtype and a.shape == b.shape, (method, a.dtype, b.dtype, a.shape, b.shape)
                    d = (a.double() - b.double()).abs().max().item()
                    diff = max(diff, d)
                    exact &= torch.equal(a, b)
            if method in SAMPLED:                               # 1030 × 1024 > 10^6: the sampled quantiles
                base, ts = inputs((1030, 1024), n, dtype, gen, method)
                a, b = ours(method, p_ours, ts, base, 7), theirs(method, p_mk, ts, base, 7)
                diff = max(diff, (a.double() - b.double()).abs().max().item()); exact &= torch.equal(a, b)
            if method == "slerp" and not big_done.get(dtype):   # > 2^20 elements: the chunked norm/dot path
                big_done[dtype] = True
                base, ts = inputs((1030, 1024), 1, dtype, gen, method)
                a, b = ours(method, p_ours, ts, base, 0), theirs(method, p_mk, ts, base, 0)
                diff = max(diff, (a.double() - b.double()).abs().max().item()); exact &= torch.equal(a, b)
            key = (method, str(dtype).replace("torch.", ""))
            worst[key] = max(worst.get(key, 0.0), diff)
            rows.append((method, ", ".join(f"{k}={v}" for k, v in p_ours.items()) or "defaults",
                         str(dtype).replace("torch.", ""), diff, exact))
    print(f"{'method':17} {'params':58} {'dtype':9} {'max |diff|':>11}  bit-exact")
    for method, ps, dt, d, ex in rows: print(f"{method:17} {ps[:58]:58} {dt:9} {d:11.3g}  {'yes' if ex else 'no'}")
    print("\nper method (max over settings, shapes; with and without base where optional):")
    for method in dict.fromkeys(c[0] for c in CASES):
        print(f"  {method:17} fp32 {worst[(method, 'float32')]:.3g}   bf16 {worst[(method, 'bfloat16')]:.3g}")
    nc = negative_control(gen)
    print(f"\nnegative control (dare_ties, different seeds): max |diff| = {nc:.3g} (must be > 0)")
    return 0 if all(v == 0 for v in worst.values()) and nc > 0 else 1

if __name__ == "__main__":
    sys.exit(main())
