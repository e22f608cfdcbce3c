"""The machinery of the course's exercises: a registry, checks that diagnose, hints, and the learner's progress.

An exercise is a piece of a lesson that the learner writes: a function with a given signature. Its checker calls the
learner's function on a few cases (random inputs and the edge cases that matter: t = 1, t = T, a batch of one, other
dtypes) and compares each result with what the package computes. When they differ it does not print the answer; it
says what is wrong: the shape or the dtype that came back, the case that fails (which t, which batch), and, when the
result equals what a known-wrong version computes (alpha in place of alpha_bar, t - 1 in place of t, a missing square
root), the question that points at that mistake.

    from tinyldm.exercises import check, hint, progress
    check("02.q_sample", my_q_sample)   # prints what passed or what is wrong; returns a Result
    hint("02.q_sample")                 # the first hint; hint("02.q_sample", 2) the second
    progress()                          # every exercise of the course and where you stand

The learner's results are kept in ``build/exercises.json`` (or the file ``TINYLDM_PROGRESS`` names; the test command
keeps its own), so ``progress()`` sees every notebook's checks.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from ..config import BUILD_DIR, env_flag

__all__ = ["Case", "Mistake", "Exercise", "Result", "EXERCISES", "register", "check", "hint", "progress",
           "exercise", "PROGRESS_FILE"]

PROGRESS_FILE = Path(os.environ.get("TINYLDM_PROGRESS", BUILD_DIR / "exercises.json"))


@dataclass
class Case:
    """One call of the learner's function: its arguments, and how a message names it ("t = 1, the last step")."""

    args: tuple
    where: str
    kwargs: dict = field(default_factory=dict)


@dataclass
class Mistake:
    """A known-wrong version of the answer and the question that points at it (never the answer itself)."""

    fn: Callable
    message: str


@dataclass
class Exercise:
    """``name`` ("02.q_sample": notebook number and function name), the ``stub`` the notebook shows (signature,
    docstring with shapes, ``raise NotImplementedError``), the ``reference`` the checker compares with (the
    package's code), the ``cases`` to try, the ``mistakes`` it recognises and the ``hints`` it gives on request.
    ``atol`` / ``rtol``: how close is right (float32 arithmetic in another order differs in the last digits)."""

    name: str
    title: str
    stub: str
    reference: Callable
    cases: Callable[[], Sequence[Case]]
    mistakes: Sequence[Mistake] = ()
    hints: Sequence[str] = ()
    atol: float = 1e-5
    rtol: float = 1e-4

    @property
    def notebook(self) -> str:
        return self.name.split(".")[0]

    @property
    def function(self) -> str:
        return self.name.split(".", 1)[1]

    def cell(self, solution: str | None = None) -> str:
        """The source of the notebook's exercise cell: the stub (or a solution's source) and the check."""
        return f"{(solution or self.stub).rstrip()}\n\n\ncheck({self.name!r}, {self.function})\n"


EXERCISES: dict[str, Exercise] = {}


def in_course_order() -> list[str]:
    """The exercises' names by notebook, and within a notebook in the order the lesson asks them."""
    return sorted(EXERCISES, key=lambda name: EXERCISES[name].notebook)  # a stable sort keeps the registration order


def register(exercise: Exercise) -> Exercise:
    if exercise.name in EXERCISES:
        raise ValueError(f"exercise {exercise.name!r} is registered twice")
    EXERCISES[exercise.name] = exercise
    return exercise


def exercise(name: str) -> Exercise:
    """The exercise called ``name``; an unknown name lists the known ones of its notebook."""
    if name not in EXERCISES:
        near = sorted(n for n in EXERCISES if EXERCISES[n].notebook == name.split(".")[0]) or sorted(EXERCISES)
        raise KeyError(f"no exercise {name!r}; the exercises are named like {', '.join(near[:8])}")
    return EXERCISES[name]


@dataclass
class Result:
    """What a check found: ``status`` "passed", "failed" or "not attempted", and the ``message`` it printed."""

    name: str
    status: str
    message: str

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def __repr__(self) -> str:
        return f"Result({self.name!r}, {self.status!r})"

    def _ipython_display_(self) -> None:
        # the last line of an exercise cell is its check, which has printed the message already: a notebook shows
        # nothing more for the value (status and message stay on the object)
        pass


# -- comparing results ---------------------------------------------------------------------------------------------

def _clone(value: Any) -> Any:
    """A copy of the inputs, so that a function that writes into its arguments cannot change the next case."""
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, (list, tuple)):
        return type(value)(_clone(v) for v in value)
    if isinstance(value, dict):
        return {k: _clone(v) for k, v in value.items()}
    return value


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {str(value.dtype).replace('torch.', '')} tensor of shape {list(value.shape)}"
    if value is None:
        return "None (did the function forget to return its result?)"
    return f"{type(value).__name__} {value!r}"[:120]


def difference(got: Any, want: Any, atol: float, rtol: float) -> str | None:
    """None if ``got`` is ``want`` (tensors within the tolerances, other values equal), else what differs."""
    if isinstance(want, torch.Tensor):
        if not isinstance(got, torch.Tensor):
            return f"expected {_describe(want)}, got {_describe(got)}"
        if got.shape != want.shape:
            return f"expected shape {list(want.shape)}, got shape {list(got.shape)}"
        if got.dtype != want.dtype:
            return f"expected dtype {str(want.dtype).replace('torch.', '')}, got {str(got.dtype).replace('torch.', '')}"
        if got.device != want.device:
            return f"expected the result on {want.device}, got it on {got.device}"
        if want.is_floating_point():
            if not bool(torch.isfinite(got).all()) and bool(torch.isfinite(want).all()):
                return "the result has NaN or inf values where the right one has none"
            if not torch.allclose(got, want, atol=atol, rtol=rtol, equal_nan=True):
                worst = (got - want).abs().max().item()
                return f"the values differ (largest difference {worst:.3g})"
            return None
        return None if torch.equal(got, want) else "the values differ"
    if isinstance(want, (tuple, list)):
        if not isinstance(got, (tuple, list)) or len(got) != len(want):
            return f"expected a {type(want).__name__} of {len(want)} values, got {_describe(got)}"
        for i, (g, w) in enumerate(zip(got, want)):
            problem = difference(g, w, atol, rtol)
            if problem:
                return f"item {i} of the result: {problem}"
        return None
    if isinstance(want, float):
        if not isinstance(got, (int, float)) or isinstance(got, bool):
            return f"expected a number, got {_describe(got)}"
        return None if math.isclose(got, want, rel_tol=rtol, abs_tol=atol) else f"expected another number than {got!r}"
    return None if got == want else f"expected another value than {_describe(got)}"


def _same(fn: Callable, case: Case, want: Any, ex: Exercise) -> bool:
    try:
        return difference(fn(*_clone(case.args), **_clone(case.kwargs)), want, ex.atol, ex.rtol) is None
    except Exception:  # noqa: BLE001 - a wrong version that cannot run on this case does not match it
        return False


def _diagnose(ex: Exercise, fn: Callable, cases: Sequence[Case], wants: Sequence[Any]) -> str | None:
    """The message of the known mistake whose results equal the learner's on every case where the two differ from the
    reference (and on the failing case at least)."""
    for mistake in ex.mistakes:
        hits, tried = 0, 0
        for case, want in zip(cases, wants):
            try:
                mine = fn(*_clone(case.args), **_clone(case.kwargs))
            except Exception:  # noqa: BLE001
                break
            if difference(mine, want, ex.atol, ex.rtol) is None:
                continue  # right on this case: no evidence either way
            tried += 1
            try:
                theirs = mistake.fn(*_clone(case.args), **_clone(case.kwargs))
            except Exception:  # noqa: BLE001
                break
            if difference(mine, theirs, ex.atol, ex.rtol) is not None:
                break
            hits += 1
        else:
            if tried and hits == tried:
                return mistake.message
    return None


# -- the learner's commands ------------------------------------------------------------------------------------------

def _record(result: Result) -> None:
    try:
        PROGRESS_FILE.parent.mkdir(parents=True, exist_ok=True)
        state = json.loads(PROGRESS_FILE.read_text()) if PROGRESS_FILE.is_file() else {}
        state[result.name] = {"status": result.status, "time": time.strftime("%Y-%m-%d %H:%M")}
        tmp = PROGRESS_FILE.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1, sort_keys=True))
        tmp.replace(PROGRESS_FILE)
    except (OSError, ValueError):
        pass  # a read-only checkout: the check still prints its result


def check(name: str, fn: Callable, quiet: bool = False) -> Result:
    """Run exercise ``name``'s checks on the learner's ``fn``, print what passed or what is wrong, and return a
    :class:`Result`. A function that still raises NotImplementedError is "not attempted" (and the notebook runs on)."""
    ex = exercise(name)
    if not callable(fn):
        raise TypeError(f"check({name!r}, ...) takes your function, got {_describe(fn)}")
    cases = list(ex.cases())
    wants = [ex.reference(*_clone(c.args), **_clone(c.kwargs)) for c in cases]
    result = None
    for case, want in zip(cases, wants):
        try:
            got = fn(*_clone(case.args), **_clone(case.kwargs))
        except NotImplementedError:
            result = Result(name, "not attempted", f"· {name}: not attempted yet (replace `raise NotImplementedError` "
                                                   f"with your code, then run the cell again; hint({name!r}) helps)")
            break
        except Exception as e:  # noqa: BLE001 - the learner's error, reported with the case that raised it
            result = Result(name, "failed", f"✗ {name}: raised {type(e).__name__}: {e} (for {case.where})")
            break
        problem = difference(got, want, ex.atol, ex.rtol)
        if problem:
            why = _diagnose(ex, fn, cases, wants)
            more = f" {why}" if why else f" hint({name!r}) gives a hint."
            result = Result(name, "failed", f"✗ {name}: {problem} for {case.where}.{more}")
            break
    if result is None:
        result = Result(name, "passed", f"✓ {name}: right on all {len(cases)} checks "
                                        f"({'; '.join(c.where for c in cases)})")
    _record(result)
    if not quiet:
        print(result.message)
    if env_flag("TINYLDM_EXERCISES_STRICT") and not result.passed:
        # the notebooks with the reference solutions filled in (make test): a check that does not pass is an error
        raise AssertionError(result.message)
    return result


def hint(name: str, level: int = 1) -> str:
    """Hint ``level`` (1 or 2) of exercise ``name``: a nudge, never the answer. Prints it and returns it."""
    ex = exercise(name)
    if not ex.hints:
        text = f"{name} has no hints: read the lesson's text above the exercise again."
    else:
        level = max(1, min(level, len(ex.hints)))
        more = f" (hint({name!r}, {level + 1}) says more)" if level < len(ex.hints) else ""
        text = f"hint {level} of {len(ex.hints)} for {name}: {ex.hints[level - 1]}{more}"
    print(text)
    return text


def progress(show: bool = True) -> dict[str, str]:
    """Every exercise of the course and its last result (from ``build/exercises.json``); prints a table per notebook
    and returns {name: status}."""
    state = json.loads(PROGRESS_FILE.read_text()) if PROGRESS_FILE.is_file() else {}
    status = {name: state.get(name, {}).get("status", "not attempted") for name in in_course_order()}
    if show:
        marks = {"passed": "✓", "failed": "✗", "not attempted": "·"}
        for notebook in sorted({EXERCISES[n].notebook for n in status}):
            names = [n for n in status if EXERCISES[n].notebook == notebook]
            line = "  ".join(f"{marks[status[n]]} {exercise(n).function}" for n in names)
            print(f"notebook {notebook}: {line}")
        done = sum(s == "passed" for s in status.values())
        print(f"{done} of {len(status)} exercises pass")
    return status
