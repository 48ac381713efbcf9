"""The documentation site in a browser: headless Chromium opens the index page and the kinship pillar's page, follows the
sidebar from one to the other, checks that every sidebar link resolves to a page of the site, and that an exported
function appears as its `show_doc` signature and docstring, never as its source. After the notebook tests in the same
process (which build every page, see tests/docs_site.py) it checks that site; run alone or in another pytest-xdist
worker, it builds the two pages itself first."""
import sys
from pathlib import Path
import pytest
from test_browser import CHROMIUM, FLAGS, pw
import docs_site as D

PILLAR = "04_kinship.ipynb"

pytestmark = [pytest.mark.skipif(CHROMIUM is None or pw is None, reason="needs Chromium and playwright (see tests/test_browser.py)")]

@pytest.fixture
def site(tmp_path):
    "The site the notebook tests built in this session when they built it whole; else index and the pillar page, built here."
    from test_notebooks import SITE, NBS, run_notebook
    pages = D.sidebar()
    if {p for p, _ in pages} <= D.RENDERED: return SITE, pages, True
    for nb in (D.NBS / "index.ipynb", D.NBS / PILLAR):
        ok, _, executed, tb, _ = run_notebook(nb, ["slow"], docs=True)
        assert ok, tb
        D.render_page(D.docs_notebook(executed), tmp_path, pages)
    return tmp_path, pages, False

def test_docs_site_in_chromium(site):
    root, pages, whole = site
    import mergelab.kinship as K, inspect
    assert [p for p, _ in pages][:2] == ["index.html", "tour.html"] and len(pages) == len(list(D.NBS.glob("[!_.]*.ipynb")))
    pillar = D.page_name(D.NBS / PILLAR)
    with pw.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True, timeout=60_000)
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 1400})
            page.goto((root / "index.html").as_uri(), wait_until="load")
            side = page.eval_on_selector_all("nav.ml-sidebar li a", "as => as.map(a => [a.getAttribute('href'), a.textContent])")
            assert side == [list(x) for x in pages], side                      # the sidebar nbdev generates, in its order
            targets = {h for h, _ in side} | set(page.eval_on_selector_all(     # and the index's links to the notebooks
                "main a[href$='.html'], .jp-Notebook a[href$='.html']", "as => as.map(a => a.getAttribute('href'))"))
            targets = {t.split("#")[0] for t in targets if "://" not in t}
            assert targets >= {p for p, _ in pages}, targets
            resolvable = targets if whole else {"index.html", pillar}
            missing = sorted(t for t in resolvable if not (root / t).is_file())
            assert not missing, f"links that resolve to no page: {missing}"
            assert not page.locator(".jp-InputPrompt, .jp-OutputPrompt").count(), "prompts are shown"
            page.locator("nav.ml-sidebar a", has_text=D.title_of(D.NBS / PILLAR)).click()
            page.wait_for_url(f"**/{pillar}")
            assert page.locator("nav.ml-sidebar a.active").inner_text() == D.title_of(D.NBS / PILLAR)
            heads = set(page.eval_on_selector_all("h2, h3, h4", "hs => hs.map(h => h.textContent.replace('¶', '').trim())"))
            code = "\n".join(page.eval_on_selector_all(".jp-InputArea", "cs => cs.map(c => c.textContent)"))
            defined = [n for n in K.__all__ if (inspect.isfunction(getattr(K, n)) or inspect.isclass(getattr(K, n)))
                       and getattr(K, n).__module__ == K.__name__]
            assert len(defined) >= 5, defined
            for n in defined:
                assert n in heads, f"{n}: no show_doc entry on {pillar}"
                assert f"def {n}(" not in code and f"class {n}" not in code, f"{n}'s source is shown on {pillar}"
            doc = K.kinship_matrix.__doc__.split(".")[0].split("\n")[0]
            assert doc in page.inner_text("body"), "kinship_matrix's docstring is not on its page"
            page.screenshot(path=str(Path(__file__).parent / "artifacts" / "browser" / "docs_kinship.png"))
        finally:
            browser.close()
