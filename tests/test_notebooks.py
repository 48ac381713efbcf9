"""Every notebook in nbs/ is a test: run it the way `nbdev_test` does (nbdev's processor and execnb shell, skipping the
settings.ini `tst_flags` cells, except the flags named in $MERGELAB_TEST_FLAGS, e.g. `slow`), one pytest test per notebook so the run ends with a real pytest summary. The executed
notebook is then rendered to HTML with nbconvert (the docs check: Quarto cannot be installed offline) into
tests/artifacts/docs/, and must hold no error output. Running and rendering in one pass keeps the suite's time to one
execution per notebook."""
import os, sys, time
from pathlib import Path
import pytest
from nbdev.config import get_config

ROOT = Path(__file__).resolve().parents[1]
CFG = get_config(path=ROOT)
NBS = sorted(p for p in Path(CFG.nbs_path).rglob("*.ipynb")
             if not any(part.startswith(("_", ".")) for part in p.relative_to(CFG.nbs_path).parts))
ARTIFACTS = ROOT / "tests" / "artifacts" / "docs"

def run_notebook(fn: Path, skip_flags=()):
    """Execute `fn` as nbdev 2.4's `nbdev.test.test_nb` does (same processor, same cells skipped, same shell), but keep
    the executed notebook. Returns (ok, seconds, notebook, formatted traceback or None)."""
    from fastcore.xtras import working_directory
    from execnb.shell import CaptureShell
    from nbdev.process import NBProcessor
    from nbdev.frontmatter import FrontmatterProc
    flags = set(skip_flags)
    nb = NBProcessor(fn, procs=FrontmatterProc, process=True).nb
    def no_eval(cell):
        if cell.cell_type != "code": return True
        if "nbdev_export" + "(" in cell.source: return True
        direc = getattr(cell, "directives_", {}) or {}
        if direc.get("eval:", [""])[0].lower() == "false": return True
        return flags & direc.keys()
    if str(ROOT) not in sys.path: sys.path.insert(0, str(ROOT))
    t0, shell = time.time(), CaptureShell(fn)
    try:
        with working_directory(fn.parent): shell.run_all(nb, exc_stop=True, preproc=no_eval)
        return True, time.time() - t0, nb, None
    except Exception:
        return False, time.time() - t0, nb, shell.prettytb(fname=fn)

def error_outputs(nb) -> list[str]:
    "Error outputs, and stderr streams that carry a traceback, as `cell i: text` lines."
    bad = []
    for i, c in enumerate(nb.cells):
        for o in c.get("outputs", []) or []:
            if o.get("output_type") == "error": bad.append(f"cell {i}: {o.get('ename')}: {o.get('evalue')}")
            elif o.get("output_type") == "stream" and o.get("name") == "stderr" and "Traceback (most recent call last)" in "".join(o.get("text", "")):
                bad.append(f"cell {i}: traceback on stderr")
    return bad

def render_html(nb, out: Path) -> Path:
    "Render an executed notebook to standalone HTML with nbconvert's lab template."
    import nbformat, yaml
    from nbconvert import HTMLExporter
    node = nbformat.from_dict(nb)
    join = lambda v: "".join(v) if isinstance(v, list) else v
    node.cells = [c for c in node.cells if "hide" not in (c.get("directives_") or {})]   # as nbdev's docs drop them
    for c in node.cells:
        c.pop("directives_", None)
        c.source = join(c.source)
        if c.cell_type == "raw" and c.source.startswith("---"):      # nbdev's front matter: back to a title and summary
            fm = yaml.safe_load(c.source.strip().strip("-")) or {}
            c.cell_type, c.source = "markdown", f"# {fm.get('title', '')}\n\n> {fm.get('description', '')}"
        if c.cell_type == "code":
            c.setdefault("execution_count", None); c.setdefault("outputs", [])
            for o in c.outputs:                                         # execnb keeps multi-line values as lists
                if "text" in o: o["text"] = join(o["text"])
                for k, v in (o.get("data") or {}).items(): o["data"][k] = join(v)
    body, _ = HTMLExporter(template_name="lab").from_notebook_node(node)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(body, encoding="utf-8")
    return out

def test_notebooks_found():
    assert len(NBS) >= 2, NBS

@pytest.mark.parametrize("nb", NBS, ids=[p.name for p in NBS])
def test_notebook(nb):
    os.environ["IN_TEST"] = "1"
    run = set(os.environ.get("MERGELAB_TEST_FLAGS", "").replace(",", " ").split())   # e.g. "slow": run those cells too
    ok, secs, executed, tb = run_notebook(nb, [f for f in CFG.tst_flags.split() if f not in run])
    assert ok, f"{nb.name} failed:\n{tb}"
    bad = error_outputs(executed)
    assert not bad, f"{nb.name}: error outputs {bad}"
    html = render_html(executed, ARTIFACTS / nb.with_suffix(".html").name).read_text()
    title = next((c.source.splitlines()[0].lstrip("# ").strip() for c in executed.cells
                  if c.cell_type == "markdown" and c.source.startswith("# ")), None)
    assert title is None or title.split(":")[0] in html, f"{nb.name}: rendered HTML lacks its title {title!r}"
