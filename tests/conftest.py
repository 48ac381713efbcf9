"Shared pytest fixtures: the project root, a checksum guard for input files."
import hashlib, os
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

def tree_checksums(d: Path) -> dict[str, str]:
    "sha256 of every file under `d` (or of `d` itself)."
    d = Path(d)
    files = [d] if d.is_file() else sorted(p for p in d.rglob("*") if p.is_file())
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}

@pytest.fixture
def root() -> Path: return ROOT

def make_llama_family(d: Path, names=("a", "b"), *, vocab: int = 128, layers: int = 2, noise: float = 0.01) -> Path:
    "A tiny Llama `base` and fine-tunes `names` (base + noise·N(0, 1), seeds 0, 1, ...) saved the HF way under `d`."
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=48, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    torch.manual_seed(0); base = LlamaForCausalLM(cfg); base.save_pretrained(d / "base")
    for i, n in enumerate(names):
        m = LlamaForCausalLM(cfg); m.load_state_dict(base.state_dict())
        with torch.no_grad():
            for p in m.parameters(): p.add_(noise * torch.randn(p.shape, generator=torch.Generator().manual_seed(i)))
        m.save_pretrained(d / n)
    return d
