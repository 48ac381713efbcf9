"""The installed `mergelab` console script, run as a user runs it: in a subprocess."""
import json, os, shutil, subprocess, sys
from pathlib import Path
import pytest
from conftest import tree_checksums, make_llama_family

ROOT = Path(__file__).resolve().parents[1]
EXE = shutil.which("mergelab") or str(Path(sys.executable).parent / "mergelab")

def run(*args, cwd=None, timeout=300):
    return subprocess.run([EXE, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=timeout,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})

@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    d = make_llama_family(tmp_path_factory.mktemp("zoo"))
    (d / "ties.yml").write_text("merge_method: ties\nbase_model: ./base\nmodels:\n"
                                "  - model: ./a\n    parameters: {weight: 0.5, density: 0.5}\n"
                                "  - model: ./b\n    parameters: {weight: 0.5, density: 0.5}\n")
    return d

def test_help():
    r = run("--help")
    assert r.returncode == 0 and "merge" in r.stdout and "demo" in r.stdout

def test_merge_yaml_loads(zoo, tmp_path):
    before = tree_checksums(zoo)
    r = run("merge", zoo / "ties.yml", tmp_path / "out", "--max-shard-size", "30KB", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "merged into" in r.stdout
    from transformers import AutoModelForCausalLM
    m = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) >= 3
    assert (tmp_path / "out" / "mergelab_config.yml").exists()
    assert tree_checksums(zoo) == before

def test_merge_refuses_existing_and_bad_config(zoo, tmp_path):
    (tmp_path / "taken").mkdir(); (tmp_path / "taken" / "x").write_text("keep me")
    r = run("merge", zoo / "ties.yml", tmp_path / "taken", "--no-progress")
    assert r.returncode == 2 and "not empty" in r.stderr and "Traceback" not in r.stderr
    assert (tmp_path / "taken" / "x").read_text() == "keep me"
    bad = tmp_path / "bad.yml"
    bad.write_text((zoo / "ties.yml").read_text().replace("ties", "tie").replace("./", f"{zoo}/"))
    r = run("merge", bad, tmp_path / "o2", "--no-progress")
    assert r.returncode == 2 and "did you mean 'ties'" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "o2").exists()

def test_validate_and_methods(zoo):
    r = run("validate", zoo / "ties.yml")
    assert r.returncode == 0 and "ok: ties" in r.stdout
    odd = zoo / "odd.yml"                          # a parameter TIES does not use: mergekit ignores it, so do we, saying so
    odd.write_text((zoo / "ties.yml").read_text().replace("density: 0.5}", "density: 0.5, epsilon: 0.1}"))
    r = run("validate", odd)
    assert r.returncode == 0 and "warning: ties does not use parameter 'epsilon'" in r.stderr
    assert "UserWarning" not in r.stderr and ".py:" not in r.stderr          # the CLI's own line, not Python's
    r = run("methods")
    assert r.returncode == 0 and all(m in r.stdout for m in ("linear", "ties", "dare_ties", "slerp", "model_stock"))

def test_extract_lora_cli(tmp_path):
    "`mergelab extract-lora` writes a PEFT adapter that mergelab applies back to its base (full rank: the fine-tune)."
    import contextlib, io, torch
    from conftest import make_llama_family
    from mergelab.cli import main
    from mergelab.io import Checkpoint
    d = make_llama_family(tmp_path / "fam", ("a",), vocab=64, layers=1)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["extract-lora", str(d / "a"), str(d / "base"), str(tmp_path / "lora"), "--rank", "64", "--no-progress"]) == 0
    assert "7 linear layers" in buf.getvalue() and "model.embed_tokens.weight" in buf.getvalue()
    assert sorted(p.name for p in (tmp_path / "lora").iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    back, ft = Checkpoint.open(f"{d / 'base'}+{tmp_path / 'lora'}"), Checkpoint.open(d / "a")
    k = "model.layers.0.mlp.down_proj.weight"
    assert torch.allclose(back.get(k), ft.get(k), atol=1e-5)
    with contextlib.redirect_stderr(io.StringIO()) as err:
        assert main(["extract-lora", str(d / "a"), str(d / "base"), str(tmp_path / "lora"), "--rank", "0"]) == 2
    assert "rank must be a positive integer" in err.getvalue()

def test_diagnose_cli_writes_a_config_merge_runs(tmp_path):
    "`mergelab diagnose` on Hugging Face folders prints its findings and writes a YAML that `mergelab merge` runs as written."
    zoo = ROOT / "data" / "zoo" / "tiny-llama"
    cfg = tmp_path / "in.yml"
    cfg.write_text(f"merge_method: linear\nbase_model: {zoo / 'base'}\nmodels:\n"
                   + "".join(f"  - model: {zoo / 'experts' / e}\n    parameters: {{weight: 1.0}}\n" for e in ("count", "echo")))
    r = run("diagnose", cfg, "--out", tmp_path / "rec.yml", "--no-predictor", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "sign-conflict rate" in r.stdout and "recommended" in r.stdout and "wrote the recommendation" in r.stdout
    rec = (tmp_path / "rec.yml").read_text()
    assert "merge_method: task_arithmetic" in rec and str(zoo / "base") in rec
    m = run("merge", tmp_path / "rec.yml", tmp_path / "merged", "--no-progress")
    assert m.returncode == 0, m.stderr
    assert (tmp_path / "merged" / "model.safetensors").is_file() or any((tmp_path / "merged").glob("*.safetensors"))
    bad = run("diagnose", tmp_path / "missing.yml")
    assert bad.returncode == 2 and "mergelab: error" in bad.stderr

def test_moe_cli(tmp_path):
    "`mergelab moe` turns tiny Llama fine-tunes into a Mixtral that transformers loads with no missing key, and generates."
    import torch, tokenizers
    from transformers import MixtralForCausalLM, PreTrainedTokenizerFast
    from mergelab.io import Checkpoint
    d = make_llama_family(tmp_path / "fam", ("film", "code"), vocab=64)
    words = "the a of and to is film good bad plot story def return class import python code".split()
    wl = tokenizers.Tokenizer(tokenizers.models.WordLevel({t: i for i, t in enumerate(["<unk>", "<s>", "</s>", *words])}, unk_token="<unk>"))
    wl.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=wl, bos_token="<s>", eos_token="</s>", unk_token="<unk>").save_pretrained(d / "base")
    (d / "moe.yml").write_text("base_model: ./base\ngate_mode: hidden\nexperts_per_token: 1\nexperts:\n"
                               "  - source_model: ./film\n    positive_prompts: [\"the film is good\", \"a bad plot\"]\n"
                               "  - source_model: ./code\n    positive_prompts: [\"def return class\", \"import python code\"]\n")
    r = run("moe", d / "moe.yml", tmp_path / "moe", "--seed", "1", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "a Mixtral of 2 experts (film, code), 2 layers" in r.stdout and "router condition number" in r.stdout
    m, info = MixtralForCausalLM.from_pretrained(tmp_path / "moe", output_loading_info=True)
    assert not any(info.values()), info
    assert (m.config.num_local_experts, m.config.num_experts_per_tok) == (2, 1)
    out, code = Checkpoint.open(tmp_path / "moe"), Checkpoint.open(d / "code")
    assert torch.equal(out.get("model.layers.1.mlp.experts.down_proj")[1], code.get("model.layers.1.mlp.down_proj.weight"))
    assert m.generate(torch.tensor([[1, 3, 9]]), max_new_tokens=4, do_sample=False).shape == (1, 7)
    assert (tmp_path / "moe" / "tokenizer.json").is_file() and "source_model" in (tmp_path / "moe" / "mergelab_moe.yml").read_text()
    again = run("moe", d / "moe.yml", tmp_path / "moe", "--no-progress")
    assert again.returncode == 2 and "not empty" in again.stderr and "Traceback" not in again.stderr
    assert run("moe", d / "moe.yml", tmp_path / "moe", "--overwrite", "--no-progress").returncode == 0
    (d / "bad.yml").write_text((d / "moe.yml").read_text().replace("experts_per_token: 1", "experts_per_token: 3"))
    bad = run("moe", d / "bad.yml", tmp_path / "moe2", "--no-progress")
    assert bad.returncode == 2 and "only 2 experts" in bad.stderr and not (tmp_path / "moe2").exists()
