"""A real software tree for the benches: ``pip install --target`` of real scientific packages.

Made at bench time (PyPI is reachable here) and kept in a cache directory between runs, with the
bytecode pip compiles, as a user's software area has. ``SCIENTIFIC`` gives ~13,000 files and
~480 MB; the import line imports a part of each package, as a job start does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCIENTIFIC = ("numpy", "scipy", "pandas", "matplotlib", "sympy")
IMPORTS = "import numpy, scipy.linalg, scipy.sparse, pandas, matplotlib.pyplot, sympy"
"""What a job start imports from :data:`SCIENTIFIC` (``MPLBACKEND=Agg``)."""


def pip_target(dest: Path, packages: tuple[str, ...] = SCIENTIFIC) -> tuple[int, int]:
    """Install ``packages`` into ``dest`` (once; reused when present); (files, bytes) of the tree."""
    stamp = dest.with_name(dest.name + ".json")
    if stamp.exists() and dest.is_dir():
        info = json.loads(stamp.read_text())
        if info.get("packages") == list(packages):
            return int(info["files"]), int(info["bytes"])
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-warn-script-location", "--target", str(dest),
         *packages],
        check=True,
    )  # fmt: skip
    files = nbytes = 0
    for d, _, names in os.walk(dest):
        for n in names:
            st = os.lstat(os.path.join(d, n))
            files += 1
            nbytes += st.st_size
    stamp.write_text(json.dumps({"packages": list(packages), "files": files, "bytes": nbytes}))
    return files, nbytes
