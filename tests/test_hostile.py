"""Hostile inputs a new user (or a downloaded folder) can hand to mergelab: every input stays untouched, nothing outside
a model folder is read or copied, a 1 KB config cannot hang a merge, and a typo or an impossible value is a
`MergelabError` raised before any heavy work, never a silently different result."""
import json, os, signal, subprocess, sys, time
from pathlib import Path
import pytest, torch
from safetensors.torch import save_file
from mergelab.io import MergelabError, UnsafeCheckpoint, UnsafeOutput, check_output_path, open_model
from mergelab.registry import ConfigError
from mergelab.scheduler import NonFiniteTensor
from mergelab.config import merge, merge_config

def model(p: Path, seed: int, extra: dict | None = None, vocab: int = 16) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    sd = {"model.embed_tokens.weight": torch.randn(vocab, 4, generator=g),
          "model.layers.0.mlp.up_proj.weight": torch.randn(8, 4, generator=g), "lm_head.weight": torch.randn(vocab, 4, generator=g)}
    save_file(sd | (extra or {}), str(p / "model.safetensors"))
    (p / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": vocab}))
    return p

def adapter(p: Path) -> Path:
    p.mkdir(parents=True)
    (p / "adapter_config.json").write_text(json.dumps({"r": 2, "lora_alpha": 2, "peft_type": "LORA"}))
    save_file({"base_model.model.model.layers.0.mlp.up_proj.lora_A.weight": torch.randn(2, 4),
               "base_model.model.model.layers.0.mlp.up_proj.lora_B.weight": torch.randn(8, 2)}, str(p / "adapter_model.safetensors"))
    return p

def files(p: Path) -> dict[str, bytes]:
    return {str(f.relative_to(p)): f.read_bytes() for f in sorted(p.rglob("*")) if f.is_file()}

@pytest.fixture
def zoo(tmp_path):
    return {n: model(tmp_path / n, i) for i, n in enumerate(["base", "a", "b"])} | {"adapter": adapter(tmp_path / "adapter")}

def test_output_in_the_adapter_of_base_plus_adapter_is_refused(zoo):
    before = files(zoo["adapter"])
    with pytest.raises(ConfigError, match="overlaps input"):
        merge([f"{zoo['base']}+{zoo['adapter']}", zoo["a"]], "linear", weight=[0.5, 0.5], out=zoo["adapter"],
              overwrite=True, progress=False)
    assert files(zoo["adapter"]) == before

def test_empty_or_root_like_output_is_refused(zoo, tmp_path, monkeypatch):
    work = tmp_path / "work"; work.mkdir(); (work / "keep.txt").write_text("mine")
    monkeypatch.chdir(work)
    for out in ("", "  ", ".", str(work.parent), "/", "/tmp", str(Path.home())):
        with pytest.raises(ConfigError, match="empty|top-level"):
            merge([zoo["a"], zoo["b"]], "linear", weight=[0.5, 0.5], out=out, overwrite=True, progress=False)
    assert files(work) == {"keep.txt": b"mine"}
    with pytest.raises(UnsafeOutput): check_output_path("", [])

def test_cli_with_an_unset_shell_variable_as_output_leaves_the_folder(zoo, tmp_path):
    work = tmp_path / "cwd"; work.mkdir(); (work / "keep.txt").write_text("mine")
    cfg = work / "c.yml"
    cfg.write_text(f"merge_method: linear\nmodels:\n  - model: {zoo['a']}\n    parameters: {{weight: 0.5}}\n"
                   f"  - model: {zoo['b']}\n    parameters: {{weight: 0.5}}\n")
    r = subprocess.run([str(Path(sys.executable).parent / "mergelab"), "merge", str(cfg), "", "--overwrite"], cwd=work,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "empty" in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert sorted(p.name for p in work.iterdir()) == ["c.yml", "keep.txt"]

def test_index_and_links_never_read_outside_the_model(zoo, tmp_path):
    evil = tmp_path / "evil"; evil.mkdir()
    for target in ("../a/model.safetensors", str(zoo["a"] / "model.safetensors"), "/etc/passwd"):
        (evil / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"lm_head.weight": target}}))
        with pytest.raises(UnsafeCheckpoint, match="outside the model folder"): open_model(evil)
    linked = tmp_path / "linked"; linked.mkdir()
    (linked / "model.safetensors").symlink_to(zoo["a"] / "model.safetensors")
    with pytest.raises(UnsafeCheckpoint, match="link out of the model folder"): open_model(linked)
    # a Hugging Face cache snapshot links into its blobs: that keeps working, and an output there is refused
    repo = tmp_path / "hub" / "models--org--m"; blobs, snap = repo / "blobs", repo / "snapshots" / "abc123"
    blobs.mkdir(parents=True); snap.mkdir(parents=True)
    for f in ("model.safetensors", "config.json"):
        (blobs / f"sha-{f}").write_bytes((zoo["a"] / f).read_bytes()); (snap / f).symlink_to(Path("../../blobs") / f"sha-{f}")
    torch.testing.assert_close(open_model(snap).get("lm_head.weight"), open_model(zoo["a"]).get("lm_head.weight"))
    with pytest.raises(ConfigError, match="overlaps input"):
        merge([snap, zoo["b"]], "linear", weight=[0.5, 0.5], out=blobs / "out", progress=False)

def test_special_files_are_refused_before_opening(tmp_path):
    fifo = tmp_path / "fifo"; os.mkfifo(fifo)
    for p in (fifo, Path("/dev/zero")):
        t0 = time.time()
        with pytest.raises(UnsafeCheckpoint, match="not a regular file"): open_model(p)
        assert time.time() - t0 < 5

def test_a_tokenizer_linked_out_of_the_donor_is_not_copied(zoo, tmp_path):
    (tmp_path / "elsewhere").mkdir()
    secret = tmp_path / "elsewhere" / "secret.json"; secret.write_text('{"secret": 1}')
    (zoo["base"] / "tokenizer.json").symlink_to(secret)
    (zoo["base"] / "tokenizer_config.json").write_text('{"model_max_length": 8}')
    out = merge([zoo["a"], zoo["b"]], "task_arithmetic", base=zoo["base"], weight=[1.0, 1.0], out=tmp_path / "out", progress=False)
    assert not (out / "tokenizer.json").exists() and (out / "tokenizer_config.json").read_text() == '{"model_max_length": 8}'

def test_alias_bomb_is_refused_quickly_with_a_short_message(zoo):
    levels = "[&a [1,1,1,1,1,1,1,1,1], " + ", ".join(f"&{c} [{', '.join(['*' + p] * 9)}]" for p, c in zip("abcdefg", "bcdefgh")) + "]"
    for cfg in (f"merge_method: linear\nmodels:\n  - model: {zoo['a']}\n    parameters:\n      weight: {levels}\n",
                f"merge_method: {levels}\nmodels:\n  - model: {zoo['a']}\n"):
        t0 = time.time()
        with pytest.raises(ConfigError, match="alias bomb") as e: merge_config(cfg, progress=False)
        assert time.time() - t0 < 5 and len(str(e.value)) < 400

def test_error_messages_quote_values_briefly(zoo):
    with pytest.raises(ConfigError) as e:
        merge_config({"merge_method": list(range(10**5)), "models": [str(zoo["a"])]}, progress=False)
    assert len(str(e.value)) < 400
    with pytest.raises(ConfigError) as e:
        merge([zoo["a"], zoo["b"]], "linear", weight="x" * 10**5, progress=False)
    assert len(str(e.value)) < 600

def test_a_typo_in_on_nonfinite_is_an_error_not_warn(zoo):
    with pytest.raises(ConfigError, match="did you mean 'error'"):
        merge([zoo["a"], zoo["b"]], "linear", weight=[0.5, 0.5], on_nonfinite="eror", progress=False)

def test_the_finite_check_sees_the_written_dtype(tmp_path):
    big = [model(tmp_path / f"m{i}", i, {"model.norm.weight": torch.full((4,), 5e5)}) for i in range(2)]
    with pytest.raises(NonFiniteTensor, match="model.norm.weight"):      # 5e5 is inf in float16
        merge(big, "linear", weight=[0.5, 0.5], out_dtype="float16", progress=False)

def test_vocabulary_options_never_cut_other_tensors(tmp_path):
    a = model(tmp_path / "a", 1, {"model.layers.0.mlp.down_proj.weight": torch.randn(20, 4)}, vocab=18)
    b = model(tmp_path / "b", 2, {"model.layers.0.mlp.down_proj.weight": torch.randn(18, 4)}, vocab=16)
    with pytest.raises(MergelabError, match="down_proj"):
        merge([a, b], "linear", weight=[0.5, 0.5], truncate_vocab=True, progress=False)
    c = model(tmp_path / "c", 3, {"model.layers.0.mlp.down_proj.weight": torch.randn(18, 4)}, vocab=18)
    out = merge([c, b], "linear", weight=[0.5, 0.5], truncate_vocab=True, progress=False)   # embeddings only: fine
    assert out["lm_head.weight"].shape == (16, 4) and out["model.layers.0.mlp.down_proj.weight"].shape == (18, 4)

def test_interference_report_checks_by_before_reading(zoo):
    from mergelab.interference import interference_report
    t0 = time.time()
    with pytest.raises(MergelabError, match="by must be"): interference_report([zoo["a"], zoo["b"]], zoo["base"], by="x")
    assert time.time() - t0 < 5

def test_mergekit_configs_with_a_parameter_the_method_ignores_run(zoo):
    cfg = {"merge_method": "model_stock", "base_model": str(zoo["base"]),
           "models": [{"model": str(zoo[m]), "parameters": {"weight": 1.0}} for m in ("a", "b")]}
    with pytest.warns(UserWarning, match="does not use parameter 'weight'"): out = merge_config(cfg, progress=False)
    assert set(out) == set(open_model(zoo["a"]).keys())
    cfg["models"][0]["parameters"]["wieght"] = 1.0                      # a name no method knows is still refused
    with pytest.raises(ConfigError, match="unknown parameter 'wieght'"): merge_config(cfg, progress=False)

def test_misuse_raises_mergelab_errors(zoo, tmp_path, monkeypatch):
    from mergelab.io import InvalidValue
    a, b = zoo["a"], zoo["b"]
    cases = [lambda: merge([a, b], ["ties"]), lambda: merge([a, b], "linear", weight=0.5, threads="2", progress=False),
             lambda: merge([a, b], "linear", weight=0.5, threads=0, progress=False),
             lambda: merge([a, b], "linear", weight=0.5, out=tmp_path / "o", max_shard_size="lots", progress=False),
             lambda: merge([{"w": torch.zeros(2, device="meta")}, {"w": torch.zeros(2)}], "linear", weight=0.5, progress=False),
             lambda: merge([{"w": torch.zeros(2, 2).to_sparse()}, {"w": torch.zeros(2, 2)}], "linear", weight=0.5, progress=False)]
    for f in cases:
        with pytest.raises(MergelabError): f()
    monkeypatch.setenv("MERGELAB_AVAILABLE_MEMORY", "lots")
    with pytest.raises(InvalidValue, match="MERGELAB_AVAILABLE_MEMORY"): merge([a, b], "linear", weight=0.5, progress=False)

def test_float8_checkpoints_merge(tmp_path):
    f8 = [model(tmp_path / f"f{i}", i) for i in range(2)]
    for p in f8:
        sd = open_model(p).state_dict(); save_file({k: v.to(torch.float8_e4m3fn) for k, v in sd.items()}, str(p / "model.safetensors"))
    out = merge(f8, "linear", weight=[0.5, 0.5], progress=False)
    assert out["lm_head.weight"].dtype == torch.float8_e4m3fn

def test_a_long_output_name_is_written(zoo, tmp_path):
    out = merge([zoo["a"], zoo["b"]], "linear", weight=[0.5, 0.5], out=tmp_path / ("m" * 240), progress=False)
    assert (out / "model.safetensors").is_file()

def test_damaged_json_and_adapter_configs_are_named(zoo, tmp_path):
    from mergelab.io import CorruptCheckpoint
    for i, text in enumerate(["[" * 100000 + "]" * 100000, '{"model_type": "llama", "vocab_size": ' + "9" * 5000 + "}",
                              b"\xff\xfe{".decode("latin-1")]):
        m = model(tmp_path / f"j{i}", i); (m / "config.json").write_text(text, encoding="latin-1")
        with pytest.raises(CorruptCheckpoint, match="config.json"): open_model(m)
    for i, cfg in enumerate(['{"r": 0, "lora_alpha": 2}', "[1, 2]", '{"r": 2, "lora_alpha": "x"}']):
        ad = tmp_path / f"ad{i}"; ad.mkdir()
        (ad / "adapter_config.json").write_text(cfg)
        (ad / "adapter_model.safetensors").write_bytes((zoo["adapter"] / "adapter_model.safetensors").read_bytes())
        with pytest.raises(CorruptCheckpoint, match="positive integer"): open_model(f"{zoo['base']}+{ad}")

def test_an_output_moved_aside_by_a_killed_writer_is_put_back(zoo, tmp_path):
    from mergelab.io import clean_stale_temporaries, temporary_sibling, _TMP_TAG
    out = merge([zoo["a"], zoo["b"]], "linear", weight=[0.5, 0.5], out=tmp_path / "m", progress=False)
    before = files(out)
    dead = subprocess.Popen([sys.executable, "-c", "pass"]); dead.wait()
    aside = tmp_path / f".m{_TMP_TAG}{dead.pid}-oldcafe01"
    out.rename(aside)                                    # the state a kill between two renames would leave
    clean_stale_temporaries(out)
    assert files(out) == before and not aside.exists()
    # where the system swaps atomically, an overwrite never leaves the output missing at all
    merge([zoo["b"], zoo["a"]], "linear", weight=[0.5, 0.5], out=out, overwrite=True, progress=False)
    assert files(out) != before and not [p for p in tmp_path.iterdir() if _TMP_TAG in p.name]

@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_huge_karcher_stops_on_a_signal_and_cleans_up(zoo, tmp_path, sig):
    cfg = tmp_path / "k.yml"
    cfg.write_text(f"merge_method: karcher\nmodels: [{zoo['a']}, {zoo['b']}]\nparameters: {{max_iter: 1000000000000, tol: 0}}\n")
    out = tmp_path / "out"
    # a background job (as CI runs) starts with SIGINT ignored, and children inherit that: give the CLI a terminal's default
    p = subprocess.Popen([str(Path(sys.executable).parent / "mergelab"), "merge", str(cfg), str(out), "--no-progress"],
                         stderr=subprocess.PIPE, text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    t0 = time.time()                                    # signal once the writer exists: the merge is under way
    while not [q for q in tmp_path.iterdir() if q.name.startswith(".out")] and time.time() - t0 < 120 and p.poll() is None:
        time.sleep(0.1)
    time.sleep(1); t0 = time.time(); p.send_signal(sig)
    try: p.wait(timeout=30)
    except subprocess.TimeoutExpired: p.kill(); pytest.fail("the merge did not stop within 30 s of the signal")
    assert p.returncode == 130 and "interrupted" in p.stderr.read(), p.returncode
    assert time.time() - t0 < 30 and not out.exists()
    assert not [q for q in tmp_path.iterdir() if q.name.startswith(".out")]

def test_safetensors_headers_are_validated_as_the_spec_requires(tmp_path):
    import struct
    from mergelab.io import CorruptCheckpoint
    def raw(name, header, data):
        h = (json.dumps(header) if isinstance(header, dict) else header).encode()
        p = tmp_path / f"{name}.safetensors"; p.write_bytes(struct.pack("<Q", len(h)) + h + data); return p
    t = lambda b, e: {"dtype": "F32", "shape": [2], "data_offsets": [b, e]}
    assert open_model(raw("fine", {"a": t(0, 8), "b": t(8, 16)}, bytes(16))).keys() == ["a", "b"]
    for name, header, data, why in [("overlap", {"a": t(0, 8), "b": t(4, 12)}, bytes(12), "overlap"),
                                    ("hole", {"a": t(0, 8), "b": t(12, 20)}, bytes(20), "hole"),
                                    ("trailing", {"a": t(0, 8), "b": t(8, 16)}, bytes(24), "follow the last"),
                                    ("duplicate", '{"a": %s, "a": %s}' % (json.dumps(t(0, 8)), json.dumps(t(0, 8))), bytes(8), "twice")]:
        with pytest.raises(CorruptCheckpoint, match=why): open_model(raw(name, header, data))

def test_a_really_full_disk_is_a_named_error_and_leaves_nothing(zoo, tmp_path):
    tiny = tmp_path / "tiny"; tiny.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(tiny)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root in a container that allows it)")
    try:
        big = [model(tmp_path / f"big{i}", i, {"model.extra.weight": torch.randn(256, 256)}) for i in range(2)]
        with pytest.raises(MergelabError, match="disk is full"):
            merge(big, "linear", weight=[0.5, 0.5], out=tiny / "out", progress=False)
        assert list(tiny.iterdir()) == []
    finally: subprocess.run(["umount", str(tiny)])

def test_device_is_checked_before_any_work_and_cpu_is_the_tested_path(zoo):
    from mergelab.io import InvalidValue
    from mergelab.kinship import kinship_matrix
    ref = merge([zoo["a"], zoo["b"]], "dare_ties", base=zoo["base"], weight=[1.0, 1.0], density=0.5, seed=3, progress=False)
    on = merge([zoo["a"], zoo["b"]], "dare_ties", base=zoo["base"], weight=[1.0, 1.0], density=0.5, seed=3, device="cpu",
               progress=False)
    assert all(torch.equal(ref[k], on[k]) for k in ref)
    from pandas.testing import assert_frame_equal
    assert_frame_equal(kinship_matrix([zoo["a"], zoo["b"]], zoo["base"], device="cpu", progress=False),
                       kinship_matrix([zoo["a"], zoo["b"]], zoo["base"], progress=False))
    for bad in ("gpu", 3, "cuda:99"):
        with pytest.raises(InvalidValue): merge([zoo["a"], zoo["b"]], "linear", weight=0.5, device=bad, progress=False)
        with pytest.raises(InvalidValue): kinship_matrix([zoo["a"], zoo["b"]], zoo["base"], device=bad, progress=False)

def test_analysis_misuse_is_named():
    import numpy as np
    from mergelab.activations import knn_accuracy, ActivationError
    from mergelab.lmc import weight_matching, mlp_spec, SpecError
    E = np.random.default_rng(0).normal(size=(6, 4))
    for kw in (dict(k=0), dict(k=6), dict(labels=[0, 1]), dict(metric="x")):
        with pytest.raises(ActivationError): knn_accuracy(E, kw.pop("labels", [0, 0, 0, 1, 1, 1]), **kw)
    a = {"0.weight": torch.randn(8, 4), "0.bias": torch.randn(8), "2.weight": torch.randn(3, 8), "2.bias": torch.randn(3)}
    b = {"0.weight": torch.randn(6, 4), "0.bias": torch.randn(6), "2.weight": torch.randn(3, 6), "2.bias": torch.randn(3)}
    with pytest.raises(SpecError, match="differ in shape"): weight_matching(mlp_spec(a), a, b, progress=False)

def test_delta_activations_refuse_a_pickled_base_without_running_it(tmp_path):
    "A base folder whose weights are a pickle that runs code: refused as unsafe before anything is unpickled."
    import pickle, shutil
    from mergelab.zoo import load_zoo
    from mergelab.activations import delta_activations
    z = load_zoo("tiny-llama")
    evil, marker = tmp_path / "evil", tmp_path / "ran"
    shutil.copytree(z.base.path, evil)
    for f in evil.glob("*.safetensors"): f.unlink()
    class Payload:
        def __reduce__(self): return (os.system, (f"touch {marker}",))
    (evil / "pytorch_model.bin").write_bytes(pickle.dumps({"model.embed_tokens.weight": Payload()}))
    with pytest.raises(UnsafeCheckpoint, match="unpickling"):
        delta_activations([m.path for m in z.experts.values()], evil, ["a b c"])
    assert not marker.exists()

def test_explorer_evaluator_contract(tmp_path):
    "Any evaluator answer `score_table` reads works in the merge explorer; anything else is shown as an error, not raised."
    import pandas as pd
    from mergelab.zoo import load_zoo
    from mergelab.widgets import MergeExplorer
    z = load_zoo("digits")
    models = {n: z.experts[n].path for n in list(z.experts)[:2]}
    good = {"number": lambda m: 0.5, "mapping": lambda m: {"accuracy": 50.0},
            "frame": lambda m: pd.DataFrame({"accuracy": [50.0, 60.0]}, index=pd.Index(["a", "b"], name="task"))}
    for name, ev in good.items():
        mx = MergeExplorer(models, z.base.path, evaluate=ev); mx.run()
        assert mx.error is None, (name, mx.error)
    for bad in (lambda m: None, lambda m: "good", lambda m: {"accuracy": "high"}):
        mx = MergeExplorer(models, z.base.path, evaluate=bad); mx.run()
        assert isinstance(mx.error, MergelabError) and "evaluator" in str(mx.error)

def test_mismatched_fan_in_fan_out_is_named(tmp_path):
    "An adapter saved out × in but declaring fan_in_fan_out: the transposed delta does not fit its base tensor, named."
    base, ad = model(tmp_path / "base", 0), adapter(tmp_path / "ad")
    cfg = json.loads((ad / "adapter_config.json").read_text()) | {"fan_in_fan_out": True}
    (ad / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(MergelabError, match="up_proj.weight' is \\[4, 8\\] but the base tensor is \\[8, 4\\]"):
        open_model(f"{base}+{ad}").state_dict()
