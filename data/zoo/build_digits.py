"""Rebuild the `digits`, `digits-gentle`, `digits-lmc` and `digits-lmc-deep` zoos deterministically: `python data/zoo/build_digits.py [OUT]`.

Without OUT it rebuilds data/zoo/digits in place (the old directory is replaced only after the new one is complete).
Same code and seed -> same files (bit for bit on one machine; in the last float bits only on other CPUs)."""
from __future__ import annotations
import argparse, json, shutil, time, sys
from pathlib import Path
import torch
import torch.nn.functional as F
from torch import nn
from mergelab.io import save_checkpoint
from mergelab.zoo import (MLP, ZooError, mlp_arch, digits_data, DIGITS_DOMAINS, DIGITS_SPLITS, DIGITS_GENTLE,
                          DIGITS_LMC_DEEP)
sys.path.insert(0, str(Path(__file__).resolve().parent))     # the helpers next to this script, however it is loaded
from zoo_build import build_in_place

def _train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int, lr: float, seed: int, bs: int = 64,
           sgd: bool = False, head_lr: float | None = None) -> nn.Module:
    "Adam at `lr`; or (`sgd`) SGD with momentum 0.9 at `lr` for the backbone and `head_lr` for the head."
    g = torch.Generator().manual_seed(seed)
    if not sgd: opt = torch.optim.Adam(model.parameters(), lr=lr)
    else:
        body = [p for n, p in model.named_parameters() if not n.startswith("head.")]
        opt = torch.optim.SGD([{"params": body}, {"params": list(model.head.parameters()), "lr": head_lr or lr}], lr=lr, momentum=0.9)
    model.train()
    for _ in range(epochs):
        idx = torch.randperm(len(y), generator=g)
        for i in range(0, len(y), bs):
            b = idx[i:i + bs]
            loss = F.cross_entropy(model(x[b]), y[b])
            opt.zero_grad(); loss.backward(); opt.step()
    return model.eval()

def _acc(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.inference_mode(): return round(100 * (model(x).argmax(1) == y).float().mean().item(), 2)

def _save(sd: dict, out: Path, meta: dict, head: dict | None = None):
    from safetensors.torch import save_file
    save_checkpoint({k: v.contiguous() for k, v in sd.items()}, out,
                    config={"architecture": "mergelab.zoo.MLP", **mlp_arch(sd), "mergelab_zoo": meta})
    if head is not None: save_file({k: v.contiguous() for k, v in head.items()}, str(out / "head.safetensors"))


def _expert_metrics(base_sd: dict, experts: dict[str, nn.Module], test: dict) -> tuple[dict, dict]:
    "Expert x task accuracy (each task with its own head) and the base backbone with each task's head."
    head = lambda e: {k: v for k, v in e.state_dict().items() if k.startswith("head.")}
    matrix = {}
    for a, ea in experts.items():
        matrix[a] = {}
        for t, et in experts.items():
            m = MLP(64, (128, 128), n_out=10); m.load_state_dict({**ea.state_dict(), **head(et)})
            matrix[a][t] = _acc(m, *test[t])
    base_own = {}
    for t, et in experts.items():
        m = MLP(64, (128, 128), n_out=10); m.load_state_dict({**base_sd, **head(et)})
        base_own[t] = _acc(m, *test[t])
    return matrix, base_own

def _build_lmc(out: Path, hidden: tuple[int, ...], x, y, xt, yt, bar) -> dict[str, float]:
    "4 seeds × {plain, bn} of an MLP 64-`hidden`-10 trained from scratch on (x, y), saved under `out`; test accuracy by name."
    acc, hd = {}, "-".join(map(str, hidden))
    for variant, norm in (("plain", None), ("bn", "batchnorm")):
        for s in range(4):
            torch.manual_seed(100 + s)
            mdl = MLP(64, hidden, n_out=10, norm=norm)
            _train(mdl, x, y, epochs=30, lr=1e-3, seed=100 + s)
            name = f"{variant}-s{s}"
            _save(mdl.state_dict(), out / name,
                  dict(role="lmc", task="plain", variant=variant, seed=100 + s, split="pretrain+finetune",
                       architecture=f"MLP 64-{hd}-10{' with BatchNorm' if norm else ''} (ReLU)"))
            acc[name] = _acc(mdl, xt, yt)
            bar.update()
    return acc

def build_digits_zoo(out: str | Path, *, seed: int = 0, progress: bool = True) -> dict:
    """Train the `digits`, `digits-gentle`, `digits-lmc` and `digits-lmc-deep` zoos into `out` (a new directory);
    return the manifest it writes. Each part draws its own seeds, so adding a part leaves the others' files unchanged."""
    from tqdm.auto import tqdm
    out, t0 = Path(out), time.time()
    if out.exists() and any(out.iterdir()): raise ZooError(f"{out} exists and is not empty; give a new directory")
    threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1); torch.use_deterministic_algorithms(True)
    try:
        tmp = out.parent / f".{out.name}.building"
        shutil.rmtree(tmp, ignore_errors=True); tmp.mkdir(parents=True)
        doms = list(DIGITS_DOMAINS)
        bar = tqdm(total=2 + 2 * len(doms) + 16, desc="digits zoo", disable=not progress)
        # pre-trained backbone + 10-way head on plain digits
        torch.manual_seed(seed)
        net = MLP(64, (128, 128), n_out=10)
        xp, yp = digits_data(None, "pretrain")
        _train(net, xp, yp, epochs=30, lr=1e-3, seed=seed)
        sd = net.state_dict()
        body = {k: v for k, v in sd.items() if not k.startswith("head.")}
        head0 = {k.removeprefix("head."): v for k, v in sd.items() if k.startswith("head.")}
        arch = "MLP 64-128-128 (ReLU) backbone + Linear(128, 10) head per task"
        _save(body, tmp / "base", dict(role="base", task="plain", seed=seed, split="pretrain", architecture=arch), head0)
        bar.update()
        test = {d: digits_data(d, "test") for d in doms}
        experts = {}
        for i, d in enumerate(doms):
            e = MLP(64, (128, 128), n_out=10); e.load_state_dict(sd)
            xf, yf = digits_data(d, "finetune")
            _train(e, xf, yf, epochs=40, lr=1e-3, seed=seed + 1 + i)
            esd = e.state_dict()
            experts[d] = e
            _save({k: v for k, v in esd.items() if not k.startswith("head.")}, tmp / "experts" / d,
                  dict(role="expert", task=d, domain=DIGITS_DOMAINS[d][1], seed=seed + 1 + i, split="finetune",
                       init="base", architecture=arch),
                  {k.removeprefix("head."): v for k, v in esd.items() if k.startswith("head.")})
            bar.update()
        # metrics: expert x task (each task with its own head), base with each task's head and with the pre-train head
        matrix, base_own = _expert_metrics(sd, experts, test)
        base_zero = {t: _acc(net, *test[t]) for t in doms}
        bar.update()
        # digits-lmc: 4 seeds x {plain, bn} on plain digits (pre-train + fine-tune splits)
        xl = torch.cat([xp, digits_data(None, "finetune")[0]]); yl = torch.cat([yp, digits_data(None, "finetune")[1]])
        xt, yt = digits_data(None, "test")
        lmc = _build_lmc(tmp / "lmc", (128, 128, 128), xl, yl, xt, yt, bar)
        # digits-gentle: the same 8 domains fine-tuned gently from the same base (SGD, small backbone steps)
        gentle = {}
        for i, d in enumerate(doms):
            e = MLP(64, (128, 128), n_out=10); e.load_state_dict(sd)
            xf, yf = digits_data(d, "finetune")
            _train(e, xf, yf, epochs=DIGITS_GENTLE["epochs"], lr=DIGITS_GENTLE["lr"], seed=seed + 1 + i, sgd=True,
                   head_lr=DIGITS_GENTLE["head_lr"])
            esd = e.state_dict()
            gentle[d] = e
            _save({k: v for k, v in esd.items() if not k.startswith("head.")}, tmp / "experts-gentle" / d,
                  dict(role="expert", task=d, domain=DIGITS_DOMAINS[d][1], seed=seed + 1 + i, split="finetune",
                       init="base", architecture=arch, finetune=DIGITS_GENTLE),
                  {k.removeprefix("head."): v for k, v in esd.items() if k.startswith("head.")})
            bar.update()
        gmatrix, gbase_own = _expert_metrics(sd, gentle, test)
        # digits-lmc-deep: 4 seeds x {plain, bn} of a deeper, narrower MLP (where BN variance collapse shows)
        deep = _build_lmc(tmp / "lmc-deep", DIGITS_LMC_DEEP, xl, yl, xt, yt, bar)
        bar.close()
        manifest = dict(
            zoo="digits", version=1, built_by="data/zoo/build_digits.py", seed=seed,
            data="sklearn.datasets.load_digits (UCI Optical Recognition of Handwritten Digits, test part), scaled /16",
            splits={k: dict(start=a, stop=b) for k, (a, b) in DIGITS_SPLITS.items()},
            split_rule="torch.randperm(1797, generator=torch.Generator().manual_seed(0))[start:stop]",
            domains={d: DIGITS_DOMAINS[d][1] for d in doms},
            metrics=dict(expert_task_accuracy=matrix, base_own_head_accuracy=base_own,
                         base_pretrain_head_accuracy=base_zero, base_plain_accuracy=_acc(net, xt, yt),
                         lmc_test_accuracy=lmc, gentle_expert_task_accuracy=gmatrix,
                         gentle_base_own_head_accuracy=gbase_own, lmc_deep_test_accuracy=deep),
            gentle_finetune=DIGITS_GENTLE,
            build_seconds=round(time.time() - t0, 1))
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
        if out.exists(): out.rmdir()
        tmp.rename(out)
    finally:
        torch.set_num_threads(threads); torch.use_deterministic_algorithms(det)
    return manifest

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", nargs="?", default=str(Path(__file__).resolve().parent / "digits"))
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    out = Path(a.out)
    man = build_in_place(out, lambda tmp: build_digits_zoo(tmp, seed=a.seed))
    m = man["metrics"]
    print(f"wrote {out} in {man['build_seconds']} s")
    for t, row in m["expert_task_accuracy"].items():
        print(f"  {t:8s} expert {row[t]:5.1f}  base (own head) {m['base_own_head_accuracy'][t]:5.1f}")
    print("  lmc:", m["lmc_test_accuracy"])
    for t, row in m["gentle_expert_task_accuracy"].items():
        print(f"  {t:8s} gentle expert {row[t]:5.1f}  base (own head) {m['gentle_base_own_head_accuracy'][t]:5.1f}")
    print("  lmc-deep:", m["lmc_deep_test_accuracy"])
