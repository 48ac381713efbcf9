"""The method registry is the only home of facts about a merge method: no module (the registering ones included) keeps
its own table or list of method names (as the memory guard's work factors, the widgets' slider ranges or the data-aware
methods' needs once were), and every registered method declares its facts where it is registered."""
import ast, json, subprocess, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "mergelab"

def _is_fact(v: ast.expr) -> bool:
    "A literal value a fact table would hold: a number, string, bool or None, or a tuple/list of them."
    if isinstance(v, ast.Constant): return True
    if isinstance(v, ast.UnaryOp) and isinstance(v.operand, ast.Constant): return True
    return isinstance(v, (ast.Tuple, ast.List)) and all(_is_fact(e) for e in v.elts)

def method_lists(source: str, names: set[str], min_names: int = 3) -> list[str]:
    """Literals in `source` that list registered methods by name: a tuple, list or set with ≥ `min_names` method names,
    or a dict from ≥ `min_names` method names to literal values (a per-method fact table). `__all__` is exempt (it
    names functions), and so is a dict whose values are calls or dicts (a recipe: how one calls each method)."""
    tree, found = ast.parse(source), []
    exempt = {id(n.value) for n in ast.walk(tree) if isinstance(n, (ast.Assign, ast.AugAssign, ast.AnnAssign))
              for t in (n.targets if isinstance(n, ast.Assign) else [n.target]) if getattr(t, "id", None) == "__all__"}
    for node in ast.walk(tree):
        if id(node) in exempt: continue
        if isinstance(node, ast.Dict):
            hits = [k.value for k, v in zip(node.keys, node.values)
                    if isinstance(k, ast.Constant) and k.value in names and _is_fact(v)]
        elif isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            hits = [e.value for e in node.elts if isinstance(e, ast.Constant) and e.value in names]
        else: continue
        if len(hits) >= min_names: found.append(f"line {node.lineno}: {sorted(hits)}")
    return found

@pytest.fixture(scope="module")
def registry():
    from mergelab.registry import load_methods
    return {n: m for n, m in load_methods().items() if not n.startswith("_")}

def test_detector_can_fail(registry):
    names = set(registry)
    bad = ('WORK_FACTOR = {"linear": 0.5, "ties": 3.5, "slerp": 2.0}\n'
           'DATA = {"fisher": ("GRAD", "train"), "regmean": ("ACT", "train"), "adamerging": ("TTA", "test")}\n'
           'SLOW = ("ties", "dare_ties", "pcb")\nNEEDS_BASE = {"ties", "della", "sce"}\n')
    assert len(method_lists(bad, names)) == 4
    fine = ('__all__ = ["ties", "slerp", "linear"]\nrecipes = {"ties": dict(density=0.5), "slerp": dict(t=0.5), "linear": {}}\n'
            'path = ("linear", "slerp")\n')
    assert method_lists(fine, names) == []

def test_no_method_name_lists_outside_registrations(registry):
    from mergelab.registry import METHOD_MODULES
    # in a fresh interpreter: notebook tests run in this process and re-register methods from `__main__`
    code = "from mergelab.registry import load_methods; print(sorted({m.fn.__module__ for m in load_methods().values()}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    registering = set(ast.literal_eval(out.strip().splitlines()[-1]))
    assert registering == set(METHOD_MODULES), "METHOD_MODULES must list exactly the modules that register methods"
    # the registering modules too: a registration is a call (`@merge_method(...)`, a `GTAMember(...)` row), never a
    # name-keyed literal, so a table such as a data-needs dict beside the registrations is caught as well
    files = sorted(p for p in PKG.glob("*.py") if p.name != "_modidx.py")
    assert len(files) >= 15 and {f"mergelab.{p.stem}" for p in files} >= registering, files
    problems = {p.name: hits for p in files if (hits := method_lists(p.read_text(encoding="utf-8"), set(registry)))}
    assert not problems, f"method names listed outside their registrations: {problems}"

def test_every_method_declares_its_facts(registry):
    from mergelab.data_aware import DATA_METHODS
    for name, m in registry.items():
        assert isinstance(m.work_factor, (int, float)) and m.work_factor > 0, name
        assert (m.data is None) == (m.data_split is None), name
        for p in m.params.values():
            assert p.doc and "\n" not in p.doc, f"{name}: parameter {p.name!r} needs a one-line doc"
            if not p.required and p.default is not None: p.check(p.default, method=name)
            if p.start is not None: p.check(p.start, method=name)
    assert dict(DATA_METHODS) == {n: m.data for n, m in registry.items() if m.data}
    assert set(DATA_METHODS) == {"fisher", "regmean", "regmean_pp", "adamerging"}

def test_import_mergelab_completes_the_registry():
    code = ("import json, sys, mergelab, mergelab.registry as e; before = sorted(e.METHODS); "
            "print(json.dumps([before, sorted(e.load_methods())]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    before, after = json.loads(out.stdout.strip().splitlines()[-1])
    assert before == after and len(after) >= 32

def test_memory_factors_come_from_registrations(registry):
    from mergelab.registry import work_factor, chain
    import mergelab.registry as registry_module, mergelab.memory as memory
    assert not any(hasattr(m, a) for m in (registry_module, memory) for a in ("WORK_FACTOR", "DEFAULT_WORK_FACTOR"))
    assert work_factor("ties") == registry["ties"].work_factor
    c = chain("task_arithmetic", "consensus_mask")
    assert work_factor(c) == max(registry["task_arithmetic"].work_factor, registry["consensus_mask"].work_factor) + 0.5

def test_widget_ranges_come_from_registrations(registry):
    pytest.importorskip("ipywidgets")
    import mergelab.widgets as w
    assert not hasattr(w, "RANGES")
    s = w.method_specs("ties")["density"]
    p = registry["ties"].params["density"]
    assert (s.min, s.max, s.step) == (*p.slider, p.step)
    s = w.method_specs("regmean")["alpha"]
    assert (s.min, s.max) == registry["regmean"].params["alpha"].range
