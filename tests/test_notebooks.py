"""Every notebook in nbs/ is a test: run it the way `nbdev_test` does (nbdev's processor and execnb shell, skipping the
settings.ini `tst_flags` cells, except the flags named in $MERGELAB_TEST_FLAGS, e.g. `slow`), one pytest test per notebook
so the run ends with a real pytest summary. The executed notebook must hold no error output; it then becomes its page of
the documentation site (tests/docs_site.py: nbdev's docs processors, nbconvert, the nbdev sidebar) in
$MERGELAB_DOCS_DIR (default tests/artifacts/docs/; `bash .ci/dev docs` writes _docs/). Running and rendering in one pass
keeps the suite's time to one execution per notebook."""
import html as html_lib, os, sys, time
from pathlib import Path
import pytest
from nbdev.config import get_config

ROOT = Path(__file__).resolve().parents[1]
CFG = get_config(path=ROOT)
NBS = sorted(p for p in Path(CFG.nbs_path).rglob("*.ipynb")
             if not any(part.startswith(("_", ".")) for part in p.relative_to(CFG.nbs_path).parts))
SITE = Path(os.environ.get("MERGELAB_DOCS_DIR") or ROOT / "tests" / "artifacts" / "docs")

def run_notebook(fn: Path, skip_flags=(), docs: bool = False):
    """Execute `fn` as nbdev 2.4's `nbdev.test.test_nb` does (same processor, same cells skipped, same shell), but keep
    the executed notebook and its shell. `docs`: nbdev's `add_show_docs` first inserts a `show_doc` cell after every
    exported definition, run in order with the rest (as nbdev's docs pass runs them after the export cells), for the
    documentation page. Returns (ok, seconds, notebook, formatted traceback or None, shell)."""
    from fastcore.xtras import working_directory
    from execnb.shell import CaptureShell
    from nbdev.process import NBProcessor
    from nbdev.frontmatter import FrontmatterProc
    from nbdev.processors import add_show_docs
    flags = set(skip_flags)
    nb = NBProcessor(fn, procs=[FrontmatterProc, add_show_docs] if docs else FrontmatterProc, process=True).nb
    def no_eval(cell):
        if cell.cell_type != "code": return True
        if "nbdev_export" + "(" in cell.source: return True
        direc = getattr(cell, "directives_", {}) or {}
        if direc.get("eval:", [""])[0].lower() == "false": return True
        return flags & direc.keys()
    if str(ROOT) not in sys.path: sys.path.insert(0, str(ROOT))
    t0, shell = time.time(), CaptureShell(fn)
    if docs: shell.run_cell("from nbdev.showdoc import show_doc")
    try:
        with working_directory(fn.parent): shell.run_all(nb, exc_stop=True, preproc=no_eval)
        return True, time.time() - t0, nb, None, shell
    except Exception:
        return False, time.time() - t0, nb, shell.prettytb(fname=fn), shell

def error_outputs(nb) -> list[str]:
    "Error outputs, and stderr streams that carry a traceback, as `cell i: text` lines."
    bad = []
    for i, c in enumerate(nb.cells):
        for o in c.get("outputs", []) or []:
            if o.get("output_type") == "error": bad.append(f"cell {i}: {o.get('ename')}: {o.get('evalue')}")
            elif o.get("output_type") == "stream" and o.get("name") == "stderr" and "Traceback (most recent call last)" in "".join(o.get("text", "")):
                bad.append(f"cell {i}: traceback on stderr")
    return bad

def test_notebooks_found():
    assert len(NBS) >= 2, NBS

@pytest.mark.parametrize("nb", NBS, ids=[p.name for p in NBS])
def test_notebook(nb):
    os.environ["IN_TEST"] = "1"
    run = set(os.environ.get("MERGELAB_TEST_FLAGS", "").replace(",", " ").split())   # e.g. "slow": run those cells too
    ok, secs, executed, tb, shell = run_notebook(nb, [f for f in CFG.tst_flags.split() if f not in run], docs=True)
    assert ok, f"{nb.name} failed:\n{tb}"
    bad = error_outputs(executed)
    assert not bad, f"{nb.name}: error outputs {bad}"
    from docs_site import docs_notebook, render_page, sidebar, title_of
    html = render_page(docs_notebook(executed), SITE, sidebar()).read_text()
    title = html_lib.escape(title_of(nb).split(":")[0], quote=False)
    assert title in html, f"{nb.name}: its page lacks its title {title!r}"
