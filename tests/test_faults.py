"""Fault injection: SIGKILL during a CLI merge, a full disk, a read-only target.

After any fault the target either does not exist or holds a complete, loadable checkpoint; temporaries are cleaned
by the next run; inputs are unchanged."""
import errno, os, random, shutil, signal, subprocess, sys, time
from pathlib import Path
import pytest, torch
from conftest import tree_checksums
from mergelab.io import (Checkpoint, MergelabError, OutputNotWritable, ShardedWriter, clean_stale_temporaries,
                         save_checkpoint, _TMP_TAG)
from mergelab.config import merge

EXE = shutil.which("mergelab") or str(Path(sys.executable).parent / "mergelab")
N_KILLS = 20

def model(seed: int, layers: int = 16, h: int = 448) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd = {"model.embed_tokens.weight": torch.randn(256, h, generator=g)}
    for i in range(layers):
        sd[f"model.layers.{i}.mlp.weight"] = torch.randn(h, h, generator=g)
        sd[f"model.layers.{i}.norm.weight"] = torch.randn(h, generator=g)
    return sd

@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    d = tmp_path_factory.mktemp("faultzoo")
    for i, n in enumerate(["base", "a", "b"]): save_checkpoint(model(i), d / n)
    (d / "ties.yml").write_text(f"merge_method: ties\nbase_model: {d / 'base'}\nmodels:\n"
                                f"  - model: {d / 'a'}\n    parameters: {{weight: 0.5, density: 0.5}}\n"
                                f"  - model: {d / 'b'}\n    parameters: {{weight: 0.5, density: 0.5}}\n")
    sums = tree_checksums(d)
    yield d
    assert tree_checksums(d) == sums, "an input was modified"

def temporaries(out: Path) -> list[Path]: return sorted(out.parent.glob(f".{out.name}{_TMP_TAG}*"))

def assert_absent_or_complete(out: Path, keys: set[str]):
    "The target either does not exist or is a complete checkpoint whose every tensor reads."
    if not out.exists(): return "absent"
    ck = Checkpoint.open(out)
    assert set(ck.keys()) == keys, f"partial output at {out}: {len(ck.keys())} of {len(keys)} tensors"
    for k in ck.keys(): assert torch.isfinite(ck.get(k)).all()
    ck.close()
    return "complete"

def cli(cfg, out) -> list[str]:
    return [EXE, "merge", str(cfg), str(out), "--overwrite", "--no-progress", "--max-shard-size", "1MB"]

def test_sigkill_during_cli_merge(zoo, tmp_path):
    out, keys = tmp_path / "merged", set(model(0))
    t0, t_tmp = time.perf_counter(), None                   # a clean run, timing when the writer starts
    p = subprocess.Popen(cli(zoo / "ties.yml", out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while p.poll() is None:
        if t_tmp is None and temporaries(out): t_tmp = time.perf_counter() - t0
        time.sleep(0.01)
    full = time.perf_counter() - t0
    assert p.returncode == 0, p.stderr.read()
    start = 0.95 * (t_tmp or 0.5 * full)                     # kill mostly while shards are being written
    assert assert_absent_or_complete(out, keys) == "complete"
    shutil.rmtree(out)
    rng, outcomes, seen_tmp = random.Random(13), [], set()
    i = 0
    while sum(rc == -signal.SIGKILL for rc, _ in outcomes) < N_KILLS and i < 2 * N_KILLS:
        existed = out.exists()
        p = subprocess.Popen(cli(zoo / "ties.yml", out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(start, full))
        p.send_signal(signal.SIGKILL); p.wait(timeout=30)
        if p.returncode != -signal.SIGKILL: full = max(start, 0.9 * full)   # finished first: aim earlier
        outcomes.append((p.returncode, assert_absent_or_complete(out, keys)))
        if existed: assert outcomes[-1][1] == "complete", "an --overwrite run killed mid-way left no output"
        seen_tmp |= set(temporaries(out))
        if i % 2 == 0 and out.exists(): shutil.rmtree(out)     # half the runs write a fresh target, half overwrite one
        i += 1
    killed = sum(rc == -signal.SIGKILL for rc, _ in outcomes)
    print(f"\n{len(outcomes)} runs, {killed} SIGKILLed mid-run (a merge takes {full:.1f} s, writing from {start:.1f} s): "
          f"{sum(o == 'complete' for _, o in outcomes)} complete outputs, {sum(o == 'absent' for _, o in outcomes)} absent, "
          f"{len(seen_tmp)} stale temporaries seen, 0 partial outputs")
    assert killed >= N_KILLS, outcomes
    # the next run removes every temporary the killed runs left, and leaves a complete output
    r = subprocess.run(cli(zoo / "ties.yml", out), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert assert_absent_or_complete(out, keys) == "complete"
    assert temporaries(out) == [], temporaries(out)
    assert not any(t.exists() for t in seen_tmp)

def test_clean_stale_temporaries_spares_live_writers(tmp_path):
    out = tmp_path / "m"
    dead = subprocess.Popen([sys.executable, "-c", "pass"]); dead.wait()
    stale = tmp_path / f".m{_TMP_TAG}{dead.pid}-deadbeef"; stale.mkdir()
    live = tmp_path / f".m{_TMP_TAG}{os.getpid()}-cafecafe"; live.mkdir()
    assert clean_stale_temporaries(out) == [stale.resolve()]
    assert live.exists() and not stale.exists()

def test_disk_full(zoo, tmp_path, monkeypatch):
    def full(self): raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(ShardedWriter, "flush", full)
    out = tmp_path / "out"
    with pytest.raises(OutputNotWritable, match="disk is full") as e:
        merge([zoo / "a", zoo / "b"], "linear", out=out, weight=0.5, progress=False)
    assert str(out) in str(e.value)
    assert not out.exists() and temporaries(out) == []

def test_read_only_target(zoo, tmp_path, monkeypatch):
    ro = tmp_path / "ro"; ro.mkdir()
    out = ro / "out"
    if os.geteuid() == 0:                    # root ignores permissions: simulate a read-only file system
        real = Path.mkdir
        def mkdir(self, *a, **kw):
            if ro in Path(self).parents: raise OSError(errno.EROFS, "Read-only file system", str(self))
            return real(self, *a, **kw)
        monkeypatch.setattr(Path, "mkdir", mkdir)
    else: ro.chmod(0o555)
    try:
        with pytest.raises(MergelabError, match="read-only|permission denied") as e:
            merge([zoo / "a", zoo / "b"], "linear", out=out, weight=0.5, progress=False)
        assert str(out) in str(e.value)
        assert not out.exists() and temporaries(out) == []
    finally: ro.chmod(0o755)
