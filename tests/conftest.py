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
