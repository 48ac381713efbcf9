"""The package's layering: every module imports only from modules of its own or a lower layer, and never a private
(underscore) name of another module. Nested (function-level) imports count as imports."""
import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "mergelab"
LAYERS = [["io"], ["vocabulary"], ["registry"], ["scheduler"], ["memory"], ["methods", "masks", "spectral", "layerwise"], ["config", "lora", "moe"],
          ["kinship", "lineage", "activations", "lmc", "interference"], ["evaluate"], ["zoo"], ["data_aware"],
          ["search", "diagnosis"], ["widgets", "cli", "demo", "failures"]]
LEVEL = {m: i for i, names in enumerate(LAYERS) for m in names}

def imports(path: Path):
    "(module imported, names imported, line) of every import of a mergelab module in `path`."
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level == 1: yield mod.split(".")[0], [a.name for a in node.names], node.lineno
            elif mod.startswith("mergelab."): yield mod.split(".")[1], [a.name for a in node.names], node.lineno
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("mergelab."): yield a.name.split(".")[1], [], node.lineno

def test_every_module_has_a_layer():
    mods = {p.stem for p in PKG.glob("*.py")} - {"__init__", "_modidx"}
    assert mods == set(LEVEL), f"modules without a layer: {mods - set(LEVEL)}; layers without a module: {set(LEVEL) - mods}"

def test_no_upward_or_private_imports():
    bad = []
    for p in sorted(PKG.glob("*.py")):
        if p.stem in ("__init__", "_modidx"): continue
        for mod, names, line in imports(p):
            if mod not in LEVEL: continue
            if LEVEL[mod] > LEVEL[p.stem]: bad.append(f"{p.name}:{line} imports upward from {mod}")
            private = [n for n in names if n.startswith("_")]
            if private and mod != p.stem: bad.append(f"{p.name}:{line} imports private {private} from {mod}")
    assert not bad, "\n".join(bad)
