"""The exercise cells of the notebooks: stubs for learners, solutions for instructors.

An exercise cell is a code cell whose metadata holds ``{"tinyldm": {"exercise": "NN.function"}}``; its source is
:meth:`Exercise.cell`: the stub and the check. Two operations keep the notebooks honest:

* ``reset``: every exercise cell back to its stub (what a learner starts from; what the repository keeps);
* ``solve``: a copy of each notebook with the reference solutions of ``solutions/NN_*.py`` in place of the stubs
  (what an instructor runs to see every exercise pass; CI runs both versions).

The solutions live in the repository, outside the package and the notebooks: one Python file per notebook, named
like the notebook (``solutions/02_beta_schedule.py``), defining each exercise's function under its own name.
"""

from __future__ import annotations

import importlib.util
import inspect
from pathlib import Path
from types import ModuleType

import nbformat

from ..config import REPO_ROOT
from .core import EXERCISES, exercise

__all__ = ["SOLUTIONS_DIR", "exercise_cells", "load_solutions", "solution_source", "reset", "solve"]

SOLUTIONS_DIR = REPO_ROOT / "solutions"


def exercise_cells(nb) -> list[tuple[int, str]]:
    """(cell index, exercise name) of every exercise cell of a notebook."""
    return [(i, cell.metadata["tinyldm"]["exercise"]) for i, cell in enumerate(nb.cells)
            if cell.cell_type == "code" and "exercise" in cell.metadata.get("tinyldm", {})]


def load_solutions(notebook: str | Path, folder: str | Path = SOLUTIONS_DIR) -> ModuleType:
    """The solutions module of a notebook (``solutions/<notebook name>.py``), imported from its file."""
    path = Path(folder) / f"{Path(notebook).stem}.py"
    if not path.is_file():
        raise FileNotFoundError(f"no solutions for {Path(notebook).name}: expected {path}")
    spec = importlib.util.spec_from_file_location(f"tinyldm_solutions_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def solution_source(name: str, module: ModuleType) -> str:
    """The source of exercise ``name``'s reference solution in ``module``, after the module's imports (so that the
    cell runs in any notebook, whatever that notebook imported)."""
    ex = exercise(name)
    fn = getattr(module, ex.function, None)
    if fn is None:
        raise AttributeError(f"{module.__file__} has no function {ex.function!r} (the solution of {name})")
    imports = [line for line in inspect.getsource(module).splitlines() if line.startswith(("import ", "from "))]
    return "\n".join(imports) + ("\n\n\n" if imports else "") + inspect.getsource(fn)


def reset(path: str | Path) -> int:
    """Put every exercise cell of the notebook at ``path`` back to its stub, in place; returns how many changed."""
    nb = nbformat.read(path, as_version=4)
    changed = 0
    for i, name in exercise_cells(nb):
        stub = exercise(name).cell()
        if nb.cells[i].source != stub:
            nb.cells[i].source, nb.cells[i].outputs, nb.cells[i].execution_count = stub, [], None
            changed += 1
    if changed:
        nbformat.write(nb, path)
    return changed


def solve(path: str | Path, out_dir: str | Path, solutions: str | Path = SOLUTIONS_DIR) -> Path:
    """A copy of the notebook at ``path`` in ``out_dir`` with every exercise cell holding its reference solution;
    returns the copy's path. The copy keeps the notebook's name, so it runs from any folder next to its data."""
    nb = nbformat.read(path, as_version=4)
    module = load_solutions(path, solutions)
    for i, name in exercise_cells(nb):
        nb.cells[i].source = exercise(name).cell(solution_source(name, module))
    out = Path(out_dir) / Path(path).name
    out.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, out)
    return out


def unused() -> list[str]:
    """Registered exercises that no notebook cell holds (a check for the course's consistency)."""
    names = set()
    for path in sorted((REPO_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        names |= {name for _, name in exercise_cells(nbformat.read(path, as_version=4))}
    return sorted(set(EXERCISES) - names)
