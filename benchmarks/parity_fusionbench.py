"""Oracle check: mergelab's public `merge()` with `preset="fusionbench"` against FusionBench 0.2.33's own algorithms.

Needs a separate environment with FusionBench (never a test dependency):

    python3.11 -m venv /tmp/fbvenv
    /tmp/fbvenv/bin/pip install torch==2.13.0 fusion-bench "fastcore<1.13"
    PYTHONPATH=$PWD /tmp/fbvenv/bin/python benchmarks/parity_fusionbench.py

Both libraries merge the same small MLPs (a base and three fine-tunes, fp32; a 64 × 40 layer gives Iso-CTS a rank
where rounding and flooring the per-task rank differ). FusionBench runs its algorithm classes on `nn.Module` pools;
mergelab runs `merge(models, method, base=..., preset="fusionbench")`. Deterministic methods report the largest
relative error ‖a − b‖ / ‖b‖ over tensors; DARE (random masks from different streams) is checked statistically: the
keep rate of the merged task vector and, entry by entry, whether the two libraries' merges over 40 seeds come from
one distribution (the mean squared t-statistic of their means is ≈ 1); DARE-TIES's deterministic part (drop probability 0) is
checked exactly. RegMean compares the closed-form merge on identical Gram matrices (FusionBench inverts in float32,
mergelab solves in float64), against a float64 reference; RegMean++ runs end to end on 3-block models with two linears
per block (FusionBench's per-block loop completed for them as its CLIP subclass does); Fisher compares the combine
step on identical diagonal Fishers. Exit code 0 when every row is within its tolerance.
"""
from __future__ import annotations
import contextlib, copy, io, logging, sys, warnings
import torch
from torch import nn

warnings.filterwarnings("ignore")
logging.disable(logging.WARNING)
with contextlib.redirect_stdout(io.StringIO()):
    import fusion_bench.method as fb
    from fusion_bench import BaseModelPool
    from fusion_bench.method.regmean_plusplus.regmean_plusplus import regmean_params_merge
from mergelab.config import merge

TOL = 1e-5          # relative, deterministic float32 methods
SEEDS = 40          # DARE: merges averaged per library


def mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(40, 64), nn.ReLU(), nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 10))

def zoo(n: int = 3, scale: float = 0.05) -> tuple[nn.Module, list[nn.Module]]:
    "A base and `n` fine-tunes (base + structured noise: a low-rank part and a dense part)."
    base = mlp(0)
    g = torch.Generator().manual_seed(1)
    fts = []
    for _ in range(n):
        m = copy.deepcopy(base)
        with torch.no_grad():
            for p in m.parameters():
                d = scale * torch.randn(p.shape, generator=g)
                if p.dim() == 2: d += scale * torch.randn(p.shape[0], 2, generator=g) @ torch.randn(2, p.shape[1], generator=g)
                p.add_(d)
        fts.append(m)
    return base, fts

def sd(m: nn.Module) -> dict[str, torch.Tensor]: return {k: v.detach().clone() for k, v in m.state_dict().items()}

def pool(base, fts, with_base: bool = True) -> dict[str, nn.Module]:
    d = {f"m{i}": copy.deepcopy(m) for i, m in enumerate(fts)}
    return ({"_pretrained_": copy.deepcopy(base)} if with_base else {}) | d

def theirs(alg, base, fts, with_base: bool = True) -> dict[str, torch.Tensor]:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return sd(alg.run(BaseModelPool(pool(base, fts, with_base))))

def ours(method: str, base, fts, **kw) -> dict[str, torch.Tensor]:
    return merge({f"m{i}": sd(m) for i, m in enumerate(fts)}, method, base=None if base is None else sd(base),
                 progress=False, **kw)

def rel(a: dict, b: dict) -> float:
    return max(float((a[k].double() - b[k].double()).norm() / b[k].double().norm().clamp_min(1e-30)) for k in b)

def dare_rows(base, fts) -> list[tuple]:
    "DARE: keep rates and the mean merge over seeds, per library (their masks come from different random streams)."
    rows = []
    b = sd(base)
    for name, alg, method, kw in [
            ("dare_linear", lambda: fb.DareTaskArithmetic(scaling_factor=0.3, sparsity_ratio=0.5, only_on_linear_weights=False,
                                                          rescale=True), "dare_linear", {}),
            ("dare_ties", lambda: fb.DareTiesMerging(sparsity_ratio=0.5, only_on_linear_weights=False, rescale=True,
                                                     scaling_factor=0.5, threshold=20, remove_keys=[], merge_func="sum"),
             "dare_ties", {})]:
        flat = lambda m: torch.cat([(m[k].double() - b[k].double()).reshape(-1) for k in sorted(b)])
        T, O = [], []
        for s in range(SEEDS):
            torch.manual_seed(10_000 + s)
            T.append(flat(theirs(alg(), base, fts)))
            O.append(flat(ours(method, base, fts, preset="fusionbench", seed=s, **kw)))
        T, O = torch.stack(T), torch.stack(O)
        # per entry, the two libraries' means over SEEDS merges differ by t = Δ / √(s²_o/S + s²_t/S); for merges drawn
        # from one distribution, E[t²] = (S − 1)/(S − 3) ≈ 1.05 over the thousands of entries that vary
        se2 = O.var(0) / SEEDS + T.var(0) / SEEDS
        live = se2 > 0
        t2 = float(((O.mean(0) - T.mean(0))[live] ** 2 / se2[live]).mean())
        rows.append((name, f"mean t² of the per-entry means, {SEEDS} seeds each", abs(t2 - 1), 0.15,
                     f"t² = {t2:.3f} over {int(live.sum())} entries (same distribution: ≈ 1.05)"))
        ko, kt = float((O != 0).double().mean()), float((T != 0).double().mean())
        rows.append((name, "keep rate of the merged task vector", abs(ko - kt), 0.01, f"{ko:.3f} vs {kt:.3f}"))
    # the deterministic part of FusionBench's DARE-TIES: drop probability 0, then its 20 % TIES trim and sum
    t = theirs(fb.DareTiesMerging(sparsity_ratio=0.0, only_on_linear_weights=False, rescale=True, scaling_factor=0.5,
                                  threshold=20, remove_keys=[], merge_func="sum"), base, fts)
    o = ours("dare_ties", base, fts, preset="fusionbench", density=1.0)
    rows.append(("dare_ties", "no drop: the second trim (threshold 20), exact", rel(o, t), TOL))
    # negative control: without FusionBench's second trim the merge is visibly another method
    o = ours("dare_ties", base, fts, preset="fusionbench", density=1.0, trim_density=1.0)
    rows.append(("dare_ties", "negative control: no second trim (must exceed)", rel(o, t), 0.01))
    return rows

def regmean_rows() -> list[tuple]:
    "RegMean's closed form on identical Grams: FusionBench (float32 inverse) and mergelab vs a float64 solve."
    from mergelab.data_aware import regmean_solve
    g = torch.Generator().manual_seed(2)
    Ws = [torch.randn(48, 64, generator=g) for _ in range(3)]
    Xs = [torch.randn(256, 64, generator=g) @ torch.randn(64, 64, generator=g) for _ in range(3)]
    Gs = [x.T @ x / len(x) for x in Xs]
    a = 0.95
    shrink = lambda G: a * G + (1 - a) * torch.diag(torch.diagonal(G))
    ref = torch.linalg.solve(sum(shrink(G.double()) for G in Gs),
                             sum(shrink(G.double()) @ W.double().T for G, W in zip(Gs, Ws))).T
    t = regmean_params_merge(Ws, Gs, reduce_non_diagonal_ratio=a, weight_transpose=True)
    o = regmean_solve(Ws, Gs, alpha=a)
    e = lambda x: float((x.double() - ref).norm() / ref.norm())
    return [("regmean", "FusionBench vs float64 reference", e(t), 1e-3, "its float32 inverse"),
            ("regmean", "mergelab vs float64 reference", e(o), 1e-6),
            ("regmean", "mergelab vs FusionBench", float((o.double() - t.double()).norm() / t.double().norm()),
             2 * e(t) + 1e-6, "within FusionBench's own float32 error")]

class _Layer(nn.Module):
    "One block with two linears (an MLP block), so that block-wise and linear-wise RegMean++ differ."
    def __init__(self, d: int = 24): super().__init__(); self.fc1, self.fc2 = nn.Linear(d, 2 * d), nn.Linear(2 * d, d)
    def forward(self, x): return self.fc2(torch.relu(self.fc1(x)))

class Body(nn.Module):
    def __init__(self): super().__init__(); self.layers = nn.ModuleList([_Layer() for _ in range(3)])
    def forward(self, x):
        for layer in self.layers: x = x + layer(x)
        return x

def _fb_regmean_pp():
    "FusionBench's `RegMeanAlgorithmPlusPlus` completed for `Body` the way its CLIP subclass does it (hooks, XᵀX/N)."
    from fusion_bench.method.regmean_plusplus.regmean_plusplus import RegMeanAlgorithmPlusPlus
    class RegMeanPPForBody(RegMeanAlgorithmPlusPlus):
        def merge_embedding_layer(self, models_to_merge_dict): return {}
        def get_input_for_first_layer(self, model, train_dataset): return list(train_dataset.split(32))
        def get_layers(self, model): return model.layers
        def update_merged_params_dict(self, merged_params_dict, new_merged_params, layer_idx):
            return merged_params_dict | {f"layers.{layer_idx}.{k}": v for k, v in new_merged_params.items()}
        def layer_batches_forward(self, layer, batches): return [b + layer(b) for b in batches]
        def get_regmean_weights(self, model_name, layer, batches_input, linear_modules_to_merge):
            sums, rows = {}, {}
            def hook(name):
                def f(mod, args, out):
                    x = args[0].detach().reshape(-1, args[0].shape[-1])
                    sums[name] = sums.get(name, 0) + x.T @ x; rows[name] = rows.get(name, 0) + x.shape[0]
                return f
            hs = [m.register_forward_hook(hook(n)) for n, m in linear_modules_to_merge.items()]
            self.layer_batches_forward(layer, batches_input)
            for h in hs: h.remove()
            return {n: sums[n] / rows[n] for n in sums}
    return RegMeanPPForBody(num_regmean_examples=256, exclude_param_names_regex=[], reduce_non_diagonal_ratio=0.95,
                            weight_transpose=True)

def fisher_rows(base, fts) -> list[tuple]:
    """Fisher merging's combine step on identical diagonal Fishers: FusionBench's `merging_with_fisher_weights`
    (F + ε, model coefficients ∝ 1/(‖Fᵢ‖ + ε)) vs `fisher_average` with the preset's floor and the coefficients
    mergelab's `fisher` method derives (∝ wᵢ/‖Fᵢ‖). The estimators that produce F are compared in the data-aware notebook."""
    from fusion_bench.method.fisher_merging.fisher_merging import merging_with_fisher_weights
    from mergelab.data_aware import fisher_average
    g = torch.Generator().manual_seed(4)
    sds = [sd(m) for m in fts]
    Fs = [{k: torch.rand(v.shape, generator=g) ** 4 * (i + 1) for k, v in s.items()} for i, s in enumerate(sds)]
    t = merging_with_fisher_weights({k: [s[k] for s in sds] for k in sds[0]}, Fs, torch.ones(len(sds)),
                                    normalize_fisher_weight=True, minimal_fisher_weight=1e-6)
    norms = [float(sum((f ** 2).sum() for f in F.values()) ** 0.5) for F in Fs]
    c = [1 / n for n in norms]; c = [x / sum(c) for x in c]
    o = {k: fisher_average([s[k] for s in sds], [F[k] for F in Fs], c, 1e-6, "add") for k in sds[0]}
    return [("fisher", "merging_with_fisher_weights (combine step)", rel(o, t), TOL)]

def regmean_pp_rows() -> list[tuple]:
    "RegMean++ end to end: FusionBench's per-block loop vs `merge(..., \"regmean_pp\")` on the same models and data."
    from mergelab.data_aware import DataSource, TaskData
    g = torch.Generator().manual_seed(3)
    models = []
    for i in range(3):
        torch.manual_seed(100 + i); models.append(Body())
    data = {f"t{i}": torch.randn(256, 24, generator=g) for i in range(3)}
    src = DataSource({k: TaskData(k, x) for k, x in data.items()}, build=lambda sd: Body())
    class Pool(BaseModelPool):                 # in-memory tensors as the train datasets (FusionBench instantiates configs)
        def load_train_dataset(self, name, *a, **kw): return data[name]
    pool = Pool({"_pretrained_": copy.deepcopy(models[0])} | {k: copy.deepcopy(m) for k, m in zip(data, models)})
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        t = sd(_fb_regmean_pp().run(pool))
    rows = []
    for gran, tol, what, note in (("block", 1e-4, "", "float32 Grams and inverse"), ("linear", 0.01, " (must exceed)", "")):
        o = merge({k: sd(m) for k, m in zip(data, models)}, "regmean_pp", data=src, alpha=0.95, granularity=gran,
                  batch_size=32, num_batches=8, progress=False)
        rows.append(("regmean_pp", f"RegMeanAlgorithmPlusPlus vs granularity={gran!r}{what}", rel(o, t), tol, note))
    return rows

def main() -> int:
    base, fts = zoo()
    W = [0.5, 0.3, 0.2]
    rows = [
        ("linear", "SimpleAverageAlgorithm", rel(ours("linear", None, fts, weight=1.0), theirs(fb.SimpleAverageAlgorithm(), base, fts, False)), TOL),
        ("linear", "WeightedAverageAlgorithm (normalize)",
         rel(ours("linear", None, fts, weight=W), theirs(fb.WeightedAverageAlgorithm(normalize=True, weights=W), base, fts, False)), TOL),
        ("task_arithmetic", "TaskArithmeticAlgorithm (λ 0.3)",
         rel(ours("task_arithmetic", base, fts, preset="fusionbench"), theirs(fb.TaskArithmeticAlgorithm(scaling_factor=0.3), base, fts)), TOL),
        ("ties", "TiesMergingAlgorithm (20 %, sum, λ 0.3)",
         rel(ours("ties", base, fts, preset="fusionbench"),
             theirs(fb.TiesMergingAlgorithm(scaling_factor=0.3, threshold=20, remove_keys=[], merge_func="sum"), base, fts)), TOL),
        ("ties", "TiesMergingAlgorithm (20 %, mean, λ 1) = paper preset",
         rel(ours("ties", base, fts, preset="paper"),
             theirs(fb.TiesMergingAlgorithm(scaling_factor=1.0, threshold=20, remove_keys=[], merge_func="mean"), base, fts)), TOL),
        ("iso_c", "ISO_C_Merge (α 1)", rel(ours("iso_c", base, fts), theirs(fb.ISO_C_Merge(scaling_factor=1.0), base, fts)), 1e-4,
         "float32 SVDs"),
        ("iso_cts", "ISO_CTS_Merge (f 0.8, α 1)",
         rel(ours("iso_cts", base, fts), theirs(fb.ISO_CTS_Merge(scaling_factor=1.0, common_space_fraction=0.8), base, fts)), 1e-4,
         "float32 SVDs"),
        ("tsv", "TaskSingularVectorMerging (α 1)",
         rel(ours("tsv", base, fts), theirs(fb.TaskSingularVectorMerging(alpha=1.0), base, fts)), 1e-4, "float32 SVDs"),
        ("model_stock", "ModelStock", rel(ours("model_stock", base, fts, preset="fusionbench"), theirs(fb.ModelStock(), base, fts)),
         1e-4, "FusionBench adds an EPS"),
        ("slerp", "SlerpMergeAlgorithm (t 0.3)",
         rel(ours("slerp", base, fts[:1], t=0.3),
             theirs(fb.SlerpMergeAlgorithm(t=0.3, DOT_THRESHOLD=0.9995, epsilon=1e-8), None, [base, fts[0]], False)), 1e-4,
         "its first model is our base"),
        *dare_rows(base, fts), *regmean_rows(), *regmean_pp_rows(), *fisher_rows(base, fts),
    ]
    ok = True
    print(f"{'method':16} {'FusionBench side':52} {'measured':>10} {'tolerance':>10}  ok  note")
    for method, what, value, tol, *note in rows:
        good = value > tol if "must exceed" in what else value <= tol
        ok &= good
        print(f"{method:16} {what:52} {value:10.2e} {tol:10.2g}  {'yes' if good else 'NO '} {note[0] if note else ''}")
    return 0 if ok else 1

if __name__ == "__main__":
    sys.exit(main())
