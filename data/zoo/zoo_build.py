"""What the zoo builders share: rebuild a zoo directory in place without ever leaving a half-built one."""
import shutil
from pathlib import Path
from typing import Callable

def build_in_place(out: str | Path, build: Callable[[Path], dict]) -> dict:
    """Run `build(tmp)` into a hidden sibling of `out`, then replace `out` with it; on any failure (or Ctrl-C) remove the
    sibling and the builder's own `.building` folder, leaving `out` as it was. Returns what `build` returned."""
    out = Path(out)
    tmp = out.parent / f".{out.name}.new"
    shutil.rmtree(tmp, ignore_errors=True)
    try: result = build(tmp)
    except BaseException:
        for d in (tmp, out.parent / f".{tmp.name}.building"): shutil.rmtree(d, ignore_errors=True)
        raise
    if out.exists(): shutil.rmtree(out)
    tmp.rename(out)
    return result
