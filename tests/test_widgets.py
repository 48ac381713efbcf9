"""The explorers in a real Jupyter kernel (nbclient): they display, their widget state (plots included) serialises with
`store_widget_state=True`, and MergeExplorer's auto-run is debounced on the kernel's event loop. The explorers'
behaviour itself is tested in nbs/15_widgets.ipynb."""
import json
import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

CELLS = [
    "import torch; torch.set_num_threads(1)\n"
    "from mergelab.widgets import MergeExplorer, KinshipExplorer, LMCExplorer, InterferenceExplorer\n"
    "mx = MergeExplorer(auto=True, auto_delay=0.3, progress=False)\nmx",
    # two changes in quick succession: nothing runs yet, one merge is pending
    "mx.set_params(density=0.3); mx.set_params(density=0.4)\nassert len(mx.results) == 0 and mx._pending is not None",
    # the debounced merge runs on the kernel's event loop: wait for it (a loaded machine may take seconds), then a while
    # longer, in which no second merge may start
    "import asyncio, time\nt0 = time.monotonic()\nwhile not len(mx.results) and time.monotonic() - t0 < 60: await asyncio.sleep(0.1)\n"
    "await asyncio.sleep(1.0)",
    "assert len(mx.results) == 1, mx.results\nassert mx.results.params[0] == 'weight=1.0, density=0.4', mx.results.params[0]\n"
    "mx.merge_button.click(); assert len(mx.results) == 2",
    "kx = KinshipExplorer(merge_explorer=mx, progress=False)\nkx",
    "kx.metric_select.value = 'cosine'; kx.send_to(pair=('rot90', 'rot270')); assert mx.selected == ('rot90', 'rot270')",
    "lx = LMCExplorer(matching='weight')\nlx",
    "lx.alpha_slider.value = 0.25; assert lx.point.alpha.item() == 0.25",
    "ix = InterferenceExplorer(progress=False)\nix",
    "ix.density_slider.value = 0.5; assert ix.summary['density'] == 0.5",
]

def test_explorers_in_a_kernel(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in CELLS])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "python3", "language": "python"}
    nbclient.NotebookClient(nb, timeout=120, kernel_name="python3", store_widget_state=True,
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in nb.cells for o in c.outputs if o.output_type == "error" or o.get("name") == "stderr"
              and "Traceback" in o.get("text", "")]
    assert not errors, errors
    # every explorer cell displays a widget view
    views = [i for i, c in enumerate(nb.cells) if any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in c.outputs)]
    assert views == [0, 4, 6, 8], views
    state = nb.metadata.widgets["application/vnd.jupyter.widget-state+json"]["state"]
    models = {k: v["state"] for k, v in state.items()}
    sliders = {(m.get("description"), m.get("value")) for m in models.values() if m.get("_model_name") == "FloatSliderModel"}
    assert ("α", 0.25) in sliders and ("TIES k (density)", 0.5) in sliders, sliders
    # the plots travel inside the Output widgets' state as PNG images: MergeExplorer 1, Kinship 3, LMC 1, Interference 3
    pngs = sum(1 for m in models.values() if m.get("_model_name") == "OutputModel"
               for o in m.get("outputs", []) if "image/png" in o.get("data", {}))
    assert pngs >= 8, pngs
    tables = [m["value"] for m in models.values() if m.get("_model_name") == "HTMLModel" and "mergelab-table" in m.get("value", "")]
    assert len(tables) >= 2, "no barrier/point tables in the widget state"         # LMC's barriers and θ(α)
    runs = [o["data"]["text/html"] for m in models.values() if m.get("_model_name") == "OutputModel"
            for o in m.get("outputs", []) if "mergelab-table" in o.get("data", {}).get("text/html", "")]
    assert len(runs) == 1 and "weight=1.0, density=0.4" in runs[0], runs            # the MergeExplorer's runs table
    json.dumps(nb.metadata.widgets)                        # serialisable as saved in a notebook
