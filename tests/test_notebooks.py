"""Every notebook in nbs/ is a test: run it with nbdev's own runner (the cells `nbdev_test` runs, skipping the
settings.ini `tst_flags`), one pytest test per notebook so the run ends with a real pytest summary."""
import os
from pathlib import Path
import pytest
import nbdev.test as nbtest          # the module, not `test_nb` by name: pytest would collect it
from nbdev.config import get_config

ROOT = Path(__file__).resolve().parents[1]
CFG = get_config(path=ROOT)
NBS = sorted(p for p in Path(CFG.nbs_path).rglob("*.ipynb")
             if not any(part.startswith(("_", ".")) for part in p.relative_to(CFG.nbs_path).parts))

def test_notebooks_found():
    assert len(NBS) >= 2, NBS

@pytest.mark.parametrize("nb", NBS, ids=[p.name for p in NBS])
def test_notebook(nb):
    os.environ["IN_TEST"] = "1"
    ok, secs = nbtest.test_nb(nb, skip_flags=CFG.tst_flags.split(), basepath=CFG.config_path)
    assert ok, f"{nb.name} failed (traceback above)"
