"""WUDI's closed-form gradient against autograd on its loss (the previous implementation, FusionBench's way), on the
`minilm-8` zoo's weight matrices (8 task vectors; one attention and one MLP matrix), same Adam steps. Prints the time
of each and the ratio, and the largest difference of the results. Run: python benchmarks/wudi_gradient.py [STEPS]"""
import sys, time, torch
from mergelab.io import open_model
from mergelab.registry import METHODS
from mergelab.zoo import load_zoo

def autograd_wudi(ts, base, iters, lr):
    "Adam on Σₜ ⟨AᵀA, τₜᵀτₜ⟩/‖τₜ‖² (A = X − τₜ) through autograd: the loss FusionBench differentiates, in its tall form."
    T = [t - base for t in ts]
    X = torch.stack(T).sum(0).clone().requires_grad_(True)
    opt = torch.optim.Adam([X], lr=lr)
    for _ in range(iters):
        opt.zero_grad()
        loss = 0
        for t in T:
            A = X - t
            loss = loss + (((A.T @ A) * (t.T @ t)).sum() if A.shape[0] > A.shape[1] else (A @ t.T).square().sum()) / t.square().sum()
        loss.backward(); opt.step()
    return base + X.detach()

if __name__ == "__main__":
    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    torch.set_num_threads(2)
    z = load_zoo("minilm-8")
    base, experts = open_model(z.base), [open_model(m) for m in z.experts.values()]
    for key in ["encoder.layer.0.attention.self.query.weight", "encoder.layer.0.intermediate.dense.weight",
                "encoder.layer.0.output.dense.weight"]:
        k = next(n for n in base.keys() if n.endswith(key))
        b, ts = base.get(k).float(), [e.get(k).float() for e in experts]
        t0 = time.perf_counter(); ref = autograd_wudi(ts, b, steps, 1e-5); t_ref = time.perf_counter() - t0
        t0 = time.perf_counter(); new = METHODS["wudi"](ts, b, iter_num=steps, lr=1e-5); t_new = time.perf_counter() - t0
        print(f"{k} {tuple(b.shape)}, {steps} steps: autograd {t_ref:.2f} s, closed form {t_new:.2f} s, "
              f"speed-up {t_ref / t_new:.1f}x, max |difference| {float((ref - new).abs().max()):.2e}")
