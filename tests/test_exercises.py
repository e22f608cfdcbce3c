"""The exercises: every checker accepts its reference solution, recognises each known mistake with its own message,
says "not attempted" for a stub, and never prints the answer; the notebooks hold every exercise as a stub."""
import json

import nbformat
import pytest

from tinyldm import exercises
from tinyldm.config import REPO_ROOT
from tinyldm.exercises import EXERCISES, check, hint, progress
from tinyldm.exercises.core import in_course_order
from tinyldm.exercises.notebooks import (SOLUTIONS_DIR, exercise_cells, load_solutions, reset, solution_source, solve,
                                         unused)

NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


@pytest.fixture(autouse=True)
def progress_file(tmp_path, monkeypatch):
    monkeypatch.setattr("tinyldm.exercises.core.PROGRESS_FILE", tmp_path / "exercises.json")
    return tmp_path / "exercises.json"


def solutions():
    found = {}
    for notebook in NOTEBOOKS:
        module = load_solutions(notebook)
        for name in EXERCISES:
            if name.split(".")[0] == notebook.name[:2]:
                found[name] = getattr(module, EXERCISES[name].function)
    return found


SOLUTIONS = solutions()


@pytest.mark.parametrize("name", sorted(EXERCISES))
def test_the_reference_solution_passes(name, capsys):
    result = check(name, SOLUTIONS[name])
    assert result.passed, result.message
    assert capsys.readouterr().out.startswith(f"✓ {name}: right on all")


@pytest.mark.parametrize("name, k", [(n, k) for n in sorted(EXERCISES) for k in range(len(EXERCISES[n].mistakes))])
def test_each_known_mistake_gets_its_own_diagnosis(name, k):
    mistake = EXERCISES[name].mistakes[k]
    result = check(name, mistake.fn, quiet=True)
    assert result.status == "failed"
    assert mistake.message in result.message, result.message


@pytest.mark.parametrize("name", sorted(EXERCISES))
def test_a_stub_is_not_attempted_and_the_stub_is_what_the_notebook_starts_from(name):
    ex = EXERCISES[name]
    namespace = {}
    exec(ex.stub, namespace)  # noqa: S102 - the stub the notebook shows
    stub = namespace[ex.function]
    assert stub.__doc__ and "raise NotImplementedError" in ex.stub
    result = check(name, stub, quiet=True)
    assert result.status == "not attempted" and "not attempted yet" in result.message


def test_messages_say_what_is_wrong_and_where_without_the_answer():
    def wrong_shape(x_0, t, eps, alpha_bar):
        return x_0[:, 0]

    message = check("02.q_sample", wrong_shape, quiet=True).message
    assert "expected shape [6, 4, 8, 8], got shape [6, 8, 8]" in message and "six latents at random t" in message

    def raises(x_0, t, eps, alpha_bar):
        return alpha_bar[t] * x_0  # [6] against [6, 4, 8, 8]: broadcasting fails

    assert "raised RuntimeError" in check("02.q_sample", raises, quiet=True).message

    def forgot_return(x_0, t, eps, alpha_bar):
        x_0 * 2

    assert "None (did the function forget to return" in check("02.q_sample", forgot_return, quiet=True).message

    def unknown(x_0, t, eps, alpha_bar):
        return x_0 + 1

    message = check("02.q_sample", unknown, quiet=True).message
    assert "the values differ" in message and "hint('02.q_sample')" in message
    for text in (check("02.q_sample", ex.fn, quiet=True).message for ex in EXERCISES["02.q_sample"].mistakes):
        assert "sqrt(1 - a)" not in text and ".sqrt()" not in text  # the formula's code is never printed


def test_a_notebook_shows_the_checks_message_once():
    from IPython.core.interactiveshell import InteractiveShell

    # the check printed its message; the Result it returns (the cell's last value) adds no output of its own
    result = check("02.snr", lambda alpha_bar: alpha_bar, quiet=True)
    assert InteractiveShell.instance().display_formatter.format(result) == ({}, {})
    assert result.status == "failed" and repr(result) == "Result('02.snr', 'failed')"


def test_strict_mode_turns_a_failed_check_into_an_error(monkeypatch):
    monkeypatch.setenv("TINYLDM_EXERCISES_STRICT", "1")
    with pytest.raises(AssertionError, match="02.snr"):
        check("02.snr", EXERCISES["02.snr"].mistakes[0].fn, quiet=True)
    assert check("02.snr", SOLUTIONS["02.snr"], quiet=True).passed


def test_a_function_that_writes_into_its_inputs_does_not_spoil_the_next_case():
    def in_place(x_0, t, eps, alpha_bar):
        a = alpha_bar[t].view(-1, 1, 1, 1).to(x_0.dtype)
        return x_0.mul_(a.sqrt()).add_(eps.mul_((1 - a).sqrt()))

    assert check("02.q_sample", in_place, quiet=True).passed


def test_hints_come_in_levels_and_progress_is_remembered(progress_file, capsys):
    first, second = hint("02.q_sample"), hint("02.q_sample", 2)
    assert first.startswith("hint 1 of 2") and "hint('02.q_sample', 2) says more" in first
    assert second.startswith("hint 2 of 2") and hint("02.q_sample", 9) == second
    check("02.q_sample", SOLUTIONS["02.q_sample"], quiet=True)
    check("02.snr", EXERCISES["02.snr"].mistakes[0].fn, quiet=True)
    saved = json.loads(progress_file.read_text())
    assert saved["02.q_sample"]["status"] == "passed" and saved["02.snr"]["status"] == "failed"
    capsys.readouterr()
    status = progress()
    out = capsys.readouterr().out
    assert status["02.q_sample"] == "passed" and status["04.ddim_step"] == "not attempted"
    assert "notebook 02: · alpha_bar  ✓ q_sample" in out and f"1 of {len(EXERCISES)} exercises pass" in out
    with pytest.raises(KeyError, match="no exercise '02.q_smaple'; the exercises are named like 02.alpha_bar"):
        check("02.q_smaple", SOLUTIONS["02.q_sample"])


def test_every_notebook_has_two_to_four_exercises_as_stubs_and_solutions_for_them():
    assert len(NOTEBOOKS) == 11
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        cells = exercise_cells(nb)
        assert 2 <= len(cells) <= 4, path.name
        for i, name in cells:
            assert name.startswith(path.name[:2]) and nb.cells[i].source == EXERCISES[name].cell(), (path.name, name)
            assert "NotImplementedError" in nb.cells[i].source
        text = "\n".join(c.source for c in nb.cells)
        assert "one possible answer" not in text
    assert unused() == []
    assert sorted(p.stem for p in SOLUTIONS_DIR.glob("[0-9][0-9]_*.py")) == [p.stem for p in NOTEBOOKS]
    # list and progress show them as a learner meets them
    in_notebooks = [name for path in NOTEBOOKS for _, name in exercise_cells(nbformat.read(path, as_version=4))]
    assert in_course_order() == in_notebooks


@pytest.mark.parametrize("name", sorted(EXERCISES))
def test_a_solved_cell_passes_on_its_own(name):
    """The cell ``solve`` writes runs in a namespace with nothing but ``check``: it brings its own imports."""
    module = load_solutions(next(p for p in NOTEBOOKS if p.name.startswith(name[:2])))
    namespace = {"check": lambda n, fn: check(n, fn, quiet=True)}
    source = EXERCISES[name].cell(solution_source(name, module))
    exec(compile(source.replace(f"check({name!r}", f"result = check({name!r}"), name, "exec"), namespace)  # noqa: S102
    assert namespace["result"].passed, namespace["result"].message


def test_solve_fills_in_the_solutions_and_reset_puts_the_stubs_back(tmp_path):
    source = NOTEBOOKS[2]  # 02: four exercises
    solved = solve(source, tmp_path / "solved")
    nb = nbformat.read(solved, as_version=4)
    module = load_solutions(source)
    for i, name in exercise_cells(nb):
        assert solution_source(name, module) in nb.cells[i].source and "NotImplementedError" not in nb.cells[i].source
        assert nb.cells[i].source.rstrip().endswith(f"check({name!r}, {EXERCISES[name].function})")
    assert reset(solved) == len(exercise_cells(nb))
    assert nbformat.read(solved, as_version=4).cells == nbformat.read(source, as_version=4).cells
    assert reset(solved) == 0


def test_the_exercises_command(tmp_path, capsys):
    from tinyldm.cli import main

    assert main(["exercises", "solve", str(NOTEBOOKS[0]), "--out", str(tmp_path)]) == 0
    assert (tmp_path / NOTEBOOKS[0].name).exists()
    assert main(["exercises", "reset", str(tmp_path / NOTEBOOKS[0].name)]) == 0
    assert "2 exercise cells back to their stubs" in capsys.readouterr().out
    assert main(["exercises", "progress"]) == 0
    assert "exercises pass" in capsys.readouterr().out
    assert main(["exercises", "list"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert listed == in_course_order() and listed[:3] == ["00.label_of", "00.to_uint8", "01.reparameterize"]


def test_the_public_api():
    assert set(exercises.__all__) >= {"check", "hint", "progress"}
