"""The notebooks under docs/notebooks: stored without outputs, and run top to bottom without an error.

Running them takes minutes, so it happens where ``SALIENCEKIT_NOTEBOOKS=1`` is set, as ``.ci/run`` does (the build
fails if a cell raises or a cell runs past its time limit); the check of the stored files always runs. Each notebook
runs in a fresh kernel in a temporary folder (what it writes stays out of the repository).
``SALIENCEKIT_NOTEBOOKS_OUT=DIR`` keeps the executed copies there (e.g. to take the README's screenshot).
"""

from __future__ import annotations

import os
import re
import resource
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="needs nbformat: pip install saliencekit[notebook]")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "docs" / "notebooks").glob("*.ipynb"))
# seconds any one cell may take before the run fails (SALIENCEKIT_NOTEBOOKS_CELL_TIMEOUT: more on a crowded machine)
CELL_TIMEOUT = int(os.environ.get("SALIENCEKIT_NOTEBOOKS_CELL_TIMEOUT", "1200"))


def test_there_are_notebooks() -> None:
    assert {p.name for p in NOTEBOOKS} >= {"chest_xray_lesson.ipynb", "your_model.ipynb"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_is_stored_without_outputs(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)]
    assert not dirty, (f"{path.name}: code cells {dirty} have outputs or execution counts; store notebooks stripped "
                       "(Jupyter: Edit > Clear Outputs of All Cells, then save)")
    assert "widgets" not in nb.metadata, f"{path.name}: widget state stored in the notebook's metadata"
    stray = [i for i, c in enumerate(nb.cells) if {"execution", "collapsed", "scrolled"} & set(c.metadata)]
    assert not stray, f"{path.name}: cells {stray} carry run-time metadata (execution times, scroll state)"


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # the kernel's, once it has exited
    return usage.ru_utime + usage.ru_stime


def _image_outputs(cell: nbformat.NotebookNode) -> int:
    return sum(1 for o in cell.get("outputs", []) if {"image/png", "text/html"} & set(o.get("data", {})))


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("SALIENCEKIT_NOTEBOOKS") != "1",
                    reason="runs the notebooks (minutes): set SALIENCEKIT_NOTEBOOKS=1, as .ci/run does")
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs_top_to_bottom(path: Path, tmp_path: Path) -> None:
    nbclient = pytest.importorskip("nbclient", reason="running the notebooks needs the notebook extra")
    pytest.importorskip("ipykernel", reason="running the notebooks needs a kernel: the notebook extra")

    nb = nbformat.read(path, as_version=4)
    env_before = os.environ.get("PYTHONPATH")
    # the kernel imports this checkout's saliencekit, as the tests do
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), env_before) if p)
    t0, cpu0 = time.perf_counter(), _children_cpu()
    try:
        nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3",
                       resources={"metadata": {"path": str(tmp_path)}}).execute()  # raises on the first error
    finally:
        if env_before is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = env_before
        out = os.environ.get("SALIENCEKIT_NOTEBOOKS_OUT")
        if out:
            Path(out).mkdir(parents=True, exist_ok=True)
            nbformat.write(nb, Path(out) / path.name)
    seconds, cpu = time.perf_counter() - t0, _children_cpu() - cpu0
    print(f"{path.name}: {seconds:.0f} s, kernel CPU time {cpu:.0f} s")
    # every cell that ends in a figure or a saliencekit result showed a picture or a table
    shown = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and _image_outputs(c)]
    drawing = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and "display" in c.metadata.get("tags", [])]
    assert drawing and set(drawing) <= set(shown), f"cells {sorted(set(drawing) - set(shown))} showed no picture"
    if path.name == "chest_xray_lesson.ipynb":
        _readme_example_runs(tmp_path)


def _readme_example_runs(folder: Path) -> None:
    """The README's "In a notebook" example, on the run the lesson notebook trained in ``folder``."""
    from matplotlib.figure import Figure

    section = (ROOT / "README.md").read_text().split("## In a notebook", 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)
    scope: dict = {}
    cwd = Path.cwd()
    os.chdir(folder)
    try:
        exec(compile(code, "README.md", "exec"), scope)
        fig = eval(code.strip().splitlines()[-1], scope)  # the last line is what the cell shows
    finally:
        os.chdir(cwd)
    assert isinstance(fig, Figure)
    assert [ax.get_title() for ax in fig.axes if ax.get_title() == "image"] == ["image", "image"]
