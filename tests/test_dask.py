"""Scale-out: on a 2-worker `LocalCluster` (processes), every zoo-wide statistic, the merge and `sweep`
give the local results — kinship to 1e-6, merged shards bit-identical — with checkpoints travelling by path."""
import hashlib, json
from pathlib import Path
import pandas as pd, pytest, torch
distributed = pytest.importorskip("distributed")
from conftest import make_llama_family, tree_checksums
from mergelab.registry import ConfigError
from mergelab.scheduler import dumps_by_path, MissingDependency
from mergelab.io import Checkpoint
from mergelab.config import merge, merge_config
from mergelab.kinship import kinship_matrix, open_deltas, delta_statistics
from mergelab.interference import interference_report, norm_at_k
from mergelab.evaluate import sweep

NAMES = ("a", "b", "c")

@pytest.fixture(scope="module")
def family(tmp_path_factory):
    d = make_llama_family(tmp_path_factory.mktemp("dask"), NAMES, vocab=256, layers=3)
    sums = tree_checksums(d)
    yield d
    assert tree_checksums(d) == sums, "an input was modified"

@pytest.fixture(scope="module")
def client():
    old = torch.get_num_threads()
    torch.set_num_threads(1)            # both sides at one intra-op thread (tasks run at the caller's count): no oversubscription
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  silence_logs=40) as cluster, distributed.Client(cluster) as c:
        yield c
    torch.set_num_threads(old)

def files(d: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir()) if p.suffix in (".safetensors", ".json")}

def test_kinship_equal(family, client):
    models = [family / n for n in NAMES]
    local = delta_statistics(models, family / "base")
    remote = delta_statistics(models, family / "base", client=client)      # one pass on the workers
    assert list(local.tensors) == list(remote.tensors)
    for metric in ("pcc", "cosine", "euclidean"):
        diff = (kinship_matrix(local, metric=metric) - kinship_matrix(remote, metric=metric)).abs().max().max()
        assert diff <= 1e-6, (metric, diff)
    by_l, by_r = kinship_matrix(local, by="layer"), kinship_matrix(remote, by="layer")
    assert (by_l["value"] - by_r["value"]).abs().max() <= 1e-6
    K = kinship_matrix(models, family / "base", client=client)              # the public call, end to end
    assert (K - kinship_matrix(local)).abs().max().max() <= 1e-6

def test_interference_equal(family, client):
    models = [family / n for n in NAMES]
    for scope in ("model",):                 # the model scope adds the two radix passes of the threshold: all run remotely
        local = interference_report(models, family / "base", scope=scope, density=0.3)
        remote = interference_report(models, family / "base", scope=scope, density=0.3, client=client)
        pd.testing.assert_frame_equal(local, remote, check_exact=False, rtol=0, atol=1e-9)
    pd.testing.assert_frame_equal(norm_at_k(models, family / "base"), norm_at_k(models, family / "base", client=client),
                                  check_exact=False, rtol=0, atol=1e-9)

@pytest.mark.parametrize("method,params", [("ties", dict(weight=0.5, density=0.5)), ("ties", dict(weight=0.5, density=0.5, topk_scope="model")),
                                           ("dare_ties", dict(weight=0.5, density=0.5, seed=3)), ("linear", dict(weight=0.5))])
def test_merge_bit_identical(family, client, tmp_path, method, params):
    base = family / "base" if method != "linear" else None
    models = [family / n for n in NAMES]
    local = merge(models, method, base=base, out=tmp_path / "local", progress=False, max_shard_size="40KB", **params)
    remote = merge(models, method, base=base, out=tmp_path / "remote", progress=False, max_shard_size="40KB",
                   client=client, **params)
    assert len(list(remote.glob("*.safetensors"))) > 1                   # several shards, written in order
    assert files(local) == files(remote)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "a temporary was left behind"

def test_merge_config_yaml_and_state_dict(family, client, tmp_path):
    cfg = {"merge_method": "task_arithmetic", "base_model": str(family / "base"),
           "models": [{"model": str(family / n), "parameters": {"weight": 0.3}} for n in NAMES]}
    a = merge_config(cfg, progress=False)
    b = merge_config(cfg, progress=False, client=client)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

def test_sweep_equal(family, client):
    base = Checkpoint.open(family / "base")                           # captured by the closure: travels by path
    def point(weight, density):
        sd = merge([family / "a", family / "b"], "ties", base=base, weight=weight, density=density, progress=False)
        return {"norm": float(sum(t.float().norm() ** 2 for t in sd.values()) ** 0.5)}
    grid = {"weight": [0.2, 0.6], "density": [0.3, 0.9]}
    local, remote = sweep(point, grid, progress=False), sweep(point, grid, progress=False, client=client)
    assert local.equals(remote), (local, remote)

def test_only_paths_travel(family):
    "Checkpoints (and DeltaSets holding them) pickle as paths: a few hundred bytes, whatever the model size."
    ds = open_deltas([family / n for n in NAMES], family / "base")
    blob = dumps_by_path(ds)
    size = sum(Checkpoint.open(family / n).total_bytes for n in NAMES + ("base",))
    assert len(blob) < 0.05 * size, (len(blob), size)
    with pytest.raises(ConfigError, match="in memory"): dumps_by_path(Checkpoint.open({"w": torch.zeros(4)}))

def test_in_memory_models_refused(family, client):
    sd = Checkpoint.open(family / "a").state_dict()
    with pytest.raises(ConfigError, match="save it first"):
        merge([sd, family / "b"], "linear", weight=0.5, progress=False, client=client)

def test_worker_errors_keep_their_class(family, client, tmp_path):
    "A NaN found on a worker raises the same NonFiniteTensor here, naming tensor and model; no output is left."
    from mergelab.scheduler import NonFiniteTensor
    from mergelab.io import save_checkpoint
    sd = Checkpoint.open(family / "a").state_dict()
    k = next(k for k in sd if k.endswith("mlp.up_proj.weight")); sd[k] = sd[k].clone(); sd[k][0, 0] = float("nan")
    save_checkpoint(sd, tmp_path / "nan")
    with pytest.raises(NonFiniteTensor, match="NaN/inf") as e:
        merge([tmp_path / "nan", family / "b"], "linear", weight=0.5, out=tmp_path / "out", progress=False, client=client)
    assert k in str(e.value) and str(tmp_path / "nan") in str(e.value)
    assert not (tmp_path / "out").exists()

@pytest.mark.parametrize("method", ["fisher", "regmean", "regmean_pp"])
def test_data_aware_equal(client, tmp_path, method):
    "The statistics pass runs on the workers (per-model jobs by path, results through the cache); the merge equals the local one."
    from mergelab.zoo import load_zoo
    zoo = load_zoo("digits")
    names = list(zoo.experts)[:3]
    models = {n: zoo.experts[n].path for n in names}
    data = {"zoo": "digits", "split": "finetune", "n": 64, "tasks": names}
    kw = dict(base=zoo.base.path, data=data, progress=False)
    local = merge(models, method, cache_dir=tmp_path / "local", **kw)
    remote = merge(models, method, cache_dir=tmp_path / "remote", client=client, **kw)
    assert list(tmp_path.joinpath("remote").glob("*.safetensors"))           # computed there, not read from the local cache
    assert local.keys() == remote.keys()
    assert max(float((local[k] - remote[k]).abs().max()) for k in local) <= 1e-6
