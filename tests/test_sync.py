"""Notebooks are the source: `nbdev_export` must not change mergelab/, `nbdev_clean` must not change nbs/, and the
docs pre-processing step (`nbdev_proc_nbs` minus the Quarto install) must work with the top-level _quarto.yml.
Each check runs in a scratch copy of the project, so the working tree is never touched."""
import filecmp, os, shutil, subprocess, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]

@pytest.fixture
def scratch(tmp_path):
    for p in ("settings.ini", "_quarto.yml", "setup.py", "README.md"): shutil.copy2(ROOT / p, tmp_path / p)
    for d in ("nbs", "mergelab"):
        shutil.copytree(ROOT / d, tmp_path / d, symlinks=True, ignore=shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints"))
    return tmp_path

def diff_trees(a: Path, b: Path) -> list[str]:
    out, c = [], filecmp.dircmp(a, b, ignore=["__pycache__", ".ipynb_checkpoints"])
    def walk(c, rel=""):
        out.extend(f"{rel}{n} (only in one tree)" for n in c.left_only + c.right_only)
        out.extend(f"{rel}{n} (differs)" for n in c.diff_files)
        for n, sub in c.subdirs.items(): walk(sub, f"{rel}{n}/")
    walk(c)
    return out

def run(cmd, cwd, env=None):
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=900, env=env)
    assert r.returncode == 0, f"{cmd} failed:\n{r.stdout}\n{r.stderr}"
    return r

def test_export_in_sync(scratch):
    run([sys.executable, "-c", "from nbdev.doclinks import nbdev_export; nbdev_export.__wrapped__()"], scratch)
    changed = diff_trees(ROOT / "mergelab", scratch / "mergelab")
    assert not changed, f"nbdev_export changes mergelab/ (edit the notebooks, then run nbdev_export): {changed}"

def test_clean_in_sync(scratch):
    run([sys.executable, "-c", "from nbdev.clean import nbdev_clean; nbdev_clean.__wrapped__()"], scratch)
    changed = diff_trees(ROOT / "nbs", scratch / "nbs")
    assert not changed, f"nbdev_clean changes nbs/ (run nbdev_clean and commit): {changed}"

def test_docs_preprocess(scratch):
    "What `nbdev_proc_nbs`/`nbdev_docs` do before calling Quarto, which cannot be installed offline here."
    code = ("from nbdev.quarto import refresh_quarto_yml, nbdev_sidebar; from nbdev.serve import proc_nbs;"
            "import nbdev.doclinks; refresh_quarto_yml(); nbdev.doclinks._build_modidx(); nbdev_sidebar.__wrapped__();"
            "print(proc_nbs(n_workers=0))")
    # nbdev executes the export cells and every cell holding an import while pre-processing a notebook with exports (for
    # show_doc), in a fresh shell, without the other cells: such a cell may load a zoo (hence the zoo path), and must not use
    # names that only earlier example cells define (move the import into the notebook's import cell instead).
    # The timeout only guards against a hang: the pass took 45 s on the 2-core dev machine once no example cell imported
    # anything (test_imports_live_in_import_cells); before, it also ran those examples (250-350 s in a full run).
    r = subprocess.run([sys.executable, "-c", code], cwd=scratch, capture_output=True, text=True, timeout=900,
                       env=os.environ | {"MERGELAB_ZOO_DIR": str(ROOT / "data" / "zoo")})
    where = [l for l in (r.stdout + r.stderr).splitlines() if "Error in notebook" in l]
    assert r.returncode == 0, (f"docs pre-processing failed: {where or '(see below)'}; nbdev runs each cell that holds an "
                               f"import on its own there, so it must not need earlier example cells\n{r.stderr[-3000:]}")
    assert (scratch / "nbs" / "_quarto.yml").is_symlink(), "nbdev replaced the link to the top-level _quarto.yml"
    proc = scratch / "_proc"
    assert (proc / "_quarto.yml").read_text() == (ROOT / "_quarto.yml").read_text()
    nbs = sorted(p.relative_to(scratch / "nbs").as_posix() for p in (scratch / "nbs").rglob("*.ipynb")
                 if not any(part.startswith(("_", ".")) for part in p.relative_to(scratch / "nbs").parts))
    assert len(nbs) >= 10, nbs
    missing = [n for n in nbs if not (proc / n).exists()]
    assert not missing, f"proc_nbs did not process {missing}"
    import yaml
    side = yaml.safe_load((scratch / "nbs" / "sidebar.yml").read_text())["website"]["sidebar"]["contents"]
    listed = set()
    def walk(items):
        for it in items:
            if isinstance(it, str): listed.add(it)
            elif isinstance(it, dict): walk(it.get("contents", []))
    walk(side)
    assert sorted(listed) == nbs, f"the docs sidebar does not list exactly the notebooks: {sorted(set(nbs) ^ listed)}"
    assert side[0] == "index.ipynb", side[:3]            # the landing page first, then the notebooks in file order

def test_imports_live_in_import_cells():
    """nbdev's docs pass runs every cell that holds an import (in a fresh shell, for show_doc), so an example cell that
    imports would also run its example there (a training loop, a zoo load): imports go in the notebook's import cells."""
    import ast, json
    bad = []
    for nb in sorted((ROOT / "nbs").glob("*.ipynb")):
        cells = [c for c in json.loads(nb.read_text())["cells"] if c["cell_type"] == "code"]
        srcs = ["".join(c["source"]) for c in cells]
        if not any(s.startswith("#| export") for s in srcs): continue      # nbdev executes nothing in notebooks without exports
        for i, s in enumerate(srcs):
            if s.startswith(("#| export", "#| hide", "#| default_exp")): continue
            try: tree = ast.parse("\n".join(l for l in s.splitlines() if not l.startswith(("#|", "%", "!"))))
            except SyntaxError: continue
            if any(isinstance(n, (ast.Import, ast.ImportFrom)) for n in ast.walk(tree)) and \
                    any(not isinstance(n, (ast.Import, ast.ImportFrom)) for n in tree.body):
                bad.append(f"{nb.name} code cell {i}: {s.splitlines()[0][:60]!r}")
    assert not bad, f"cells mixing imports with other code (move the imports to the notebook's import cell): {bad}"
