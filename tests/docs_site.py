"""The documentation site without Quarto: each executed notebook goes through nbdev's own docs processors (the ones
`nbdev_proc_nbs` runs before Quarto: export and hidden cells dropped, a `show_doc` cell after every exported definition,
backticked names linked to their pages) and is rendered by nbconvert into the page Quarto would write (nbdev's
`output-file` name, e.g. `04_kinship.ipynb` -> `kinship.html`), with the sidebar nbdev generates for `_quarto.yml`.
`show_doc` cells run with the notebook, each after its definition, so a page costs no second execution."""
import contextlib, html, io, re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT / "nbs"
DIRECTIVE = re.compile(r"^\s*#\|.*$\n?", re.MULTILINE)

RENDERED: set[str] = set()    # pages written by this process (the notebook tests fill it; the site test reads it)

def page_name(nb: Path) -> str:
    "The file nbdev names the notebook's page (Quarto's `output-file`)."
    from nbdev.doclinks import _nbpath2html
    return _nbpath2html(Path(nb.name)).name

def sidebar() -> list[tuple[str, str]]:
    "(page, title) for every entry of the sidebar nbdev generates (`nbdev_sidebar`), in its order."
    import yaml
    from fastcore.xtras import working_directory
    from nbdev.quarto import nbdev_sidebar
    buf = io.StringIO()
    with working_directory(ROOT), contextlib.redirect_stdout(buf): nbdev_sidebar.__wrapped__(path=str(NBS), printit=True, force=True)
    out = []
    def walk(items):
        for it in items:
            if isinstance(it, str): out.append((page_name(NBS / it), title_of(NBS / it)))
            elif isinstance(it, dict): walk(it.get("contents", []))
    walk(yaml.safe_load(buf.getvalue())["website"]["sidebar"]["contents"])
    return out

def title_of(nb: Path) -> str:
    "The notebook's title: its first `# ` heading, as nbdev's front matter takes it."
    import json
    for c in json.loads(nb.read_text())["cells"]:
        s = "".join(c["source"])
        if c["cell_type"] == "markdown" and s.startswith("# "): return s.splitlines()[0][2:].strip()
    return nb.stem

def docs_notebook(nb):
    """Apply nbdev's docs processors to the executed notebook `nb` (run by `run_notebook(..., docs=True)`: its `show_doc`
    cells already ran, in order; its cells carry the `directives_` they were run with)."""
    from nbdev.process import NBProcessor
    from nbdev import processors as P
    procs = [P.strip_ansi, P.hide_line, P.filter_stream_, P.rm_header_dash, P.clean_show_doc,
             P.rm_export, P.clean_magics, P.hide_, P.add_links, P.strip_hidden_metadata]
    directives = [c.directives_ for c in nb.cells]     # extracted (and removed from the source) when the notebook ran
    proc = NBProcessor(nb=nb, procs=procs)
    for c, d in zip(nb.cells, directives): c.directives_ = d
    proc.process()
    return nb

SITE_CSS = """
body{margin:0 0 0 270px!important;padding:1em 2em!important;max-width:1100px}
nav.ml-sidebar{position:fixed;top:0;left:0;bottom:0;width:250px;overflow-y:auto;background:#f7f8fa;border-right:1px solid #dde;
  padding:1em .8em;font:14px/1.4 system-ui,-apple-system,'Segoe UI',sans-serif;box-sizing:border-box}
nav.ml-sidebar .ml-home{display:block;font-weight:700;font-size:1.2em;margin-bottom:.6em;color:#222;text-decoration:none}
nav.ml-sidebar ul{list-style:none;margin:0;padding:0}nav.ml-sidebar li a{display:block;padding:3px 6px;color:#2a5db0;
  text-decoration:none;border-radius:4px}nav.ml-sidebar li a:hover{background:#e8edf7}
nav.ml-sidebar li a.active{background:#dfe7f7;font-weight:600;color:#123}
"""
QUARTO_ATTRS = re.compile(r"\)\{target=[^}]*\}")    # show_doc's `[source](url){target=...}`: Quarto link attributes
HREF = re.compile(r'href="([^"#:]+?)\.ipynb(#[^"]*)?"')

def _nav(pages: list[tuple[str, str]], current: str) -> str:
    active = lambda p: ' class="active" aria-current="page"' if p == current else ""
    items = "".join(f'<li><a href="{p}"{active(p)}>{html.escape(t)}</a></li>' for p, t in pages)
    return f'<nav class="ml-sidebar" aria-label="pages"><a class="ml-home" href="index.html">mergelab</a><ul>{items}</ul></nav>'

def render_page(nb, out_dir: Path, pages: list[tuple[str, str]]) -> Path:
    "Render the docs-processed notebook `nb` (see `docs_notebook`) as `out_dir/<nbdev page name>` with the site's sidebar."
    import nbformat, yaml
    from nbconvert import HTMLExporter
    from traitlets.config import Config
    name = page_name(Path(nb.path_))
    node = nbformat.from_dict(nb)
    join = lambda v: "".join(v) if isinstance(v, list) else v
    cells = []
    for c in node.cells:
        c.pop("directives_", None); c.pop("idx_", None); c.pop("has_sd", None)
        c.source = join(c.source)
        if c.cell_type == "raw" and c.source.startswith("---"):       # nbdev's front matter: the page's title and summary
            fm = yaml.safe_load(c.source.strip().strip("-")) or {}
            c.cell_type, c.source = "markdown", f"# {fm.get('title', '')}\n\n> {fm.get('description', '')}"
            c.pop("outputs", None); c.pop("execution_count", None)
        if c.cell_type == "code":
            if re.search(r"^\s*#\|\s*echo:\s*false", c.source, re.MULTILINE):
                c.metadata.setdefault("tags", []).append("remove_input")
            c.source = DIRECTIVE.sub("", c.source).strip()
            c.setdefault("execution_count", None); c.setdefault("outputs", [])
            for o in c.outputs:                                        # execnb keeps multi-line values as lists
                if "text" in o: o["text"] = join(o["text"])
                for k, v in (o.get("data") or {}).items(): o["data"][k] = join(v)
                if "text/markdown" in (o.get("data") or {}): o["data"]["text/markdown"] = QUARTO_ATTRS.sub(")", o["data"]["text/markdown"])
            if not c.source and not c.outputs: continue
        cells.append(c)
    node.cells = cells
    cfg = Config()
    cfg.TagRemovePreprocessor.enabled = True
    cfg.TagRemovePreprocessor.remove_input_tags = {"remove_input"}
    body, _ = HTMLExporter(config=cfg, template_name="lab", exclude_input_prompt=True, exclude_output_prompt=True).from_notebook_node(node)
    from nbdev.config import get_config
    site = get_config(path=ROOT)
    body = body.replace(f'{site.doc_host.rstrip("/")}{site.doc_baseurl.rstrip("/")}/', "")     # links into this site: relative
    body = HREF.sub(lambda m: f'href="{page_name(Path(m.group(1) + ".ipynb"))}{m.group(2) or ""}"', body)
    body = body.replace("</head>", f"<style>{SITE_CSS}</style></head>", 1)
    body = re.sub(r"(<body[^>]*>)", lambda m: m.group(1) + _nav(pages, name), body, count=1)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out := out_dir / name).write_text(body, encoding="utf-8")
    RENDERED.add(name)
    return out
