"""Acceptance: reading a >= 1 GB checkpoint tensor by tensor grows RSS by < 2x its largest tensor.
Measured in a fresh subprocess, so the figure is that of a real user process."""
import json, subprocess, sys, textwrap
import pytest
from conftest import tree_checksums

READ = textwrap.dedent("""
    import json, sys, torch
    from mergelab.io import Checkpoint, current_rss
    ck = Checkpoint.open(sys.argv[1]); keys = ck.keys(); get = ck.get
    largest = max(ck.nbytes(k) for k in keys); total = ck.total_bytes
    start, peak, s = current_rss(), 0, 0.0
    for k in keys:
        t = get(k); s += float(t[::4096].sum()); peak = max(peak, current_rss() - start); del t
    print(json.dumps(dict(peak=peak, largest=largest, total=total)))
""")

def measure(path):
    r = subprocess.run([sys.executable, "-c", READ, str(path)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])

@pytest.fixture(scope="module")
def gigabyte(tmp_path_factory):
    import torch
    from safetensors.torch import save_file
    p = tmp_path_factory.mktemp("big") / "model.safetensors"
    g = torch.Generator().manual_seed(0)
    save_file({f"layer.{i}.weight": torch.randn(4096, 4096, generator=g) for i in range(16)}, str(p))  # 16 x 64 MiB
    return p

def test_read_1gb_rss_bounded(gigabyte):
    before = tree_checksums(gigabyte)
    m = measure(gigabyte)
    ratio = m["peak"] / m["largest"]
    print(f"\nmergelab: read {m['total'] / 2**30:.2f} GiB, RSS grew {m['peak'] / 2**20:.0f} MiB = {ratio:.2f}x largest tensor")
    assert m["total"] >= 2**30
    assert ratio < 2.0
    assert tree_checksums(gigabyte) == before
