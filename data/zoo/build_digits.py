"""Rebuild the `digits`, `digits-gentle`, `digits-lmc` and `digits-lmc-deep` zoos deterministically: `python data/zoo/build_digits.py [OUT]`.

Without OUT it rebuilds data/zoo/digits in place (the old directory is replaced only after the new one is complete).
Same code and seed -> same files (bit for bit on one machine; in the last float bits only on other CPUs)."""
import argparse, shutil, sys
from pathlib import Path
from mergelab.zoo import build_digits_zoo

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", nargs="?", default=str(Path(__file__).resolve().parent / "digits"))
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    out = Path(a.out)
    tmp = out.parent / f".{out.name}.new"
    shutil.rmtree(tmp, ignore_errors=True)
    try: man = build_digits_zoo(tmp, seed=a.seed)
    except BaseException:   # leave no half-built directories behind
        for d in (tmp, out.parent / f".{tmp.name}.building"): shutil.rmtree(d, ignore_errors=True)
        raise
    if out.exists(): shutil.rmtree(out)
    tmp.rename(out)
    m = man["metrics"]
    print(f"wrote {out} in {man['build_seconds']} s")
    for t, row in m["expert_task_accuracy"].items():
        print(f"  {t:8s} expert {row[t]:5.1f}  base (own head) {m['base_own_head_accuracy'][t]:5.1f}")
    print("  lmc:", m["lmc_test_accuracy"])
    for t, row in m["gentle_expert_task_accuracy"].items():
        print(f"  {t:8s} gentle expert {row[t]:5.1f}  base (own head) {m['gentle_base_own_head_accuracy'][t]:5.1f}")
    print("  lmc-deep:", m["lmc_deep_test_accuracy"])
