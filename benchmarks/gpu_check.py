"""GPU check: every device-aware entry point run on a GPU against the same call on the CPU, in one short script.

    python benchmarks/gpu_check.py [--device cuda] [--layers 4] [--hidden 1024]

Generates a Llama-shaped bf16 family (a base and 3 fine-tunes, `merge_bench.make_models`), then for each check prints
the CPU and device wall times, their ratio, and the largest difference of the results against its tolerance: merges
(linear, task_arithmetic, ties, dare_ties with a seed: the drop masks are drawn on the CPU, so they are the same, slerp;
the SVD methods TSV-M, Iso-C, Iso-CTS and STAR, exact and in the Gram fast mode, on a smaller family), the exact kinship
matrix (float64 on the device), the interference statistics (signs, masks and spectra of every tensor; the smaller
family), the evaluation of a merge (perplexity on random token windows), an LMC interpolation curve, the data-aware
statistics (empirical Fisher, RegMean Grams) through `merge`, AdaMerging's learned coefficients, activation and weight
matching's permutations, a REPAIRed midpoint, and Delta Activations (a word-level tokenizer built here). Exit code 1
when a difference exceeds its tolerance. On a machine without the device it says so and runs the same code with
device='cpu' (a dry run of the script). Not a test.
"""
from __future__ import annotations
import argparse, sys, tempfile, time, warnings
from pathlib import Path
import torch
sys.path.insert(0, str(Path(__file__).resolve().parent))
from merge_bench import make_models

def timed(fn):
    if torch.cuda.is_available(): torch.cuda.synchronize()
    t = time.perf_counter(); r = fn()
    if torch.cuda.is_available(): torch.cuda.synchronize()
    return r, time.perf_counter() - t

def main() -> int:
    from mergelab.config import merge
    from mergelab.kinship import kinship_matrix
    from mergelab.interference import interference_statistics
    from mergelab.io import InvalidValue
    from mergelab.scheduler import parse_device
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda"); ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--svd-hidden", type=int, default=512, help="hidden size of the smaller family (1 layer, vocabulary "
                    "4096) on which the SVD methods and the interference statistics run: their CPU side grows as its cube")
    a = ap.parse_args()
    try: parse_device(a.device); device = a.device
    except InvalidValue as e: print(f"{e}: dry run with device='cpu'"); device = "cpu"
    print(f"device {device}" + (f" ({torch.cuda.get_device_name()})" if device.startswith("cuda") else ""))
    d = Path(tempfile.mkdtemp(prefix="gpucheck-"))
    base, *fts = make_models(d, a.layers, a.hidden, 4 * a.hidden, 32000, 3, 0.002)
    sbase, *sfts = make_models(d / "svd", 1, a.svd_hidden, 4 * a.svd_hidden, 4096, 3, 0.002)
    checks = {"linear": ("linear", fts, dict(weight=[1 / 3] * 3)),           # label: (method, models, parameters)
              "task_arithmetic": ("task_arithmetic", fts, dict(base=base, weight=[1.0] * 3, **{"lambda": 0.5})),
              "ties": ("ties", fts, dict(base=base, weight=[1.0] * 3, density=0.5)),
              "dare_ties": ("dare_ties", fts, dict(base=base, weight=[1.0] * 3, density=0.5, seed=7)),
              "slerp": ("slerp", fts[:1], dict(base=base, t=0.4))}
    checks |= {f"{m}{' gram' if svd == 'gram' else ''}": (m, sfts, dict(base=sbase, svd=svd))   # the smaller family
               for m in ("tsv", "iso_c", "iso_cts", "star") for svd in ("exact", "gram")}
    ok = True
    print(f"{'check':26} {'cpu s':>8} {'device s':>9} {'ratio':>7} {'max |diff|':>11} {'tolerance':>10}")
    for label, (method, models, kw) in checks.items():
        cpu, tc = timed(lambda: merge(models, method, progress=False, **kw))
        dev, td = timed(lambda: merge(models, method, progress=False, device=device, **kw))
        diff = max(float((cpu[k].float() - dev[k].float()).abs().max()) for k in cpu)
        tol = 2 ** -7 * max(float(v.float().abs().max()) for v in cpu.values())       # one bf16 rounding step
        ok &= diff <= tol
        print(f"{'merge ' + label:26} {tc:8.2f} {td:9.2f} {td / tc:7.2f} {diff:11.2e} {tol:10.1e}")
    kc, tc = timed(lambda: kinship_matrix(fts, base, progress=False))
    kd, td = timed(lambda: kinship_matrix(fts, base, progress=False, device=device))
    diff = float((kc - kd).abs().max().max())
    ok &= diff <= 1e-10
    print(f"{'kinship (pcc, float64)':26} {tc:8.2f} {td:9.2f} {td / tc:7.2f} {diff:11.2e} {1e-10:10.1e}")
    stats = lambda **kw: interference_statistics(sfts, sbase, progress=False, **kw).table(None).set_index("measure").value
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                                    # a row-blocked embedding has no spectra
        ic, tc = timed(stats)
        idv, td = timed(lambda: stats(device=device))
    diff = float(((idv - ic).abs() / ic.abs().clip(lower=1e-2)).max())     # relative per measure (absolute below 0.01)
    ok &= diff <= 1e-3
    print(f"{'interference statistics':26} {tc:8.2f} {td:9.2f} {td / tc:7.2f} {diff:11.2e} {1e-3:10.1e}")
    ok &= forward_checks(base, fts, device)
    print("all within tolerance" if ok else "SOME CHECKS EXCEED THEIR TOLERANCE")
    return 0 if ok else 1

def forward_checks(base: Path, fts: list[Path], device: str) -> bool:
    """The pillars that run forward (and backward) passes, and weight matching's float64 costs: each on the CPU and on
    `device`, results compared as relative differences (float32 forward passes on different hardware agree to about
    1e-4); a check with a third entry compares with it."""
    import pandas as pd
    from tokenizers import Tokenizer, models as tk_models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from mergelab.config import merge
    from mergelab.evaluate import evaluate, LMTask
    from mergelab.lmc import interpolation_curve, activation_matching, weight_matching, repair, model_spec
    from mergelab.data_aware import adamerging
    from mergelab.activations import delta_activations
    from mergelab.io import open_module, open_model
    vocab = open_model(base).config["vocab_size"]
    g = torch.Generator().manual_seed(0)
    ids = {n: torch.randint(0, vocab, (8, 64), generator=g) for n in ("a", "b", "c")}
    tasks = [LMTask(n, x, batch_size=4) for n, x in ids.items()]
    data = {f.name: ids[n][:4] for f, n in zip(fts, ids)}
    words = [f"w{i}" for i in range(vocab)]
    tk = Tokenizer(tk_models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="w0"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="w0", pad_token="w0")
    probes = [" ".join(words[j] for j in torch.randint(0, vocab, (12,), generator=g).tolist()) for _ in range(5)]
    ppl = lambda m, **kw: evaluate(m, tasks, progress=False, **kw).loss
    A, B = open_module(fts[0], dtype=torch.float32), open_module(fts[1], dtype=torch.float32)
    spec = model_spec(fts[0], template=A)
    rel = lambda a, b: float(((a - b).abs() / b.abs().clamp_min(1e-12)).max())
    wm = lambda **kw: weight_matching(spec, fts[0], fts[1], max_iter=2, progress=False, **kw)
    wm_diff = lambda c, d: (0.0 if all(torch.equal(c[p], d[p]) for p in c)         # same permutations, else the objectives
                            else abs(d.history[-1] - c.history[-1]) / abs(c.history[-1]))
    rp = lambda **kw: {k: v.detach().cpu().double() for k, v in repair(A, B, 0.5, ids["a"][:4], spec=spec, **kw).state_dict().items()}
    state_rel = lambda c, d: max(float((d[k] - c[k]).abs().max() / c[k].abs().max().clamp_min(1e-12)) for k in c)   # per tensor
    checks = {
        "evaluate (LM loss)": (lambda **kw: ppl(fts[1], **kw).values, 1e-3),
        "LMC curve (5 points)": (lambda **kw: interpolation_curve(fts[0], fts[1], lambda m: evaluate(m, tasks[:1], progress=False),
                                                               alphas=5, progress=False, model=A, **kw).loss.values, 1e-3),
        "merge fisher (empirical)": (lambda **kw: torch.cat([v.float().flatten() for v in merge(
            fts, "fisher", base=base, data=data, estimator="empirical", num_batches=1, batch_size=4, progress=False,
            cache_dir=tempfile.mkdtemp(), **kw).values()]), 1e-2),
        "merge regmean": (lambda **kw: torch.cat([v.float().flatten() for v in merge(
            fts, "regmean", base=base, data=data, num_batches=1, batch_size=4, progress=False,
            cache_dir=tempfile.mkdtemp(), **kw).values()]), 1e-2),
        "adamerging (task, 5 steps)": (lambda **kw: torch.tensor(adamerging(fts, base, data, granularity="task", steps=5,
                                                                           batch_size=4, progress=False, **kw).coefficients.values), 1e-3),
        "activation matching": (lambda **kw: torch.cat([p.double() for p in activation_matching(
            model_spec(fts[0], template=A), fts[0], fts[1], ids["a"][:4], model=A, **kw).values()]), 0.05),
        "weight matching": (wm, 1e-9, wm_diff),
        "REPAIR (alpha 0.5)": (rp, 1e-4, state_rel),
        "delta activations": (lambda **kw: torch.tensor(delta_activations(fts, base, probes, tokenizer=tok, progress=False,
                                                                          **kw).values), 1e-2),
    }
    ok = True
    for name, (fn, tol, *compare) in checks.items():
        c, tc = timed(lambda: fn())
        d, td = timed(lambda: fn(device=device))
        if compare: diff = compare[0](c, d)
        else:
            c, d = (x.detach().cpu().double() if isinstance(x, torch.Tensor) else torch.as_tensor(x, dtype=torch.float64) for x in (c, d))
            diff = (float((d - c).norm() / c.norm()) if name == "delta activations" else   # permutations: the share that differ
                    float((d != c).double().mean()) if name == "activation matching" else rel(d, c))
        ok &= diff <= tol
        print(f"{name:26} {tc:8.2f} {td:9.2f} {td / tc:7.2f} {diff:11.2e} {tol:10.1e}")
    return ok

if __name__ == "__main__":
    sys.exit(main())
