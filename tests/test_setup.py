"""The project's own set-up files agree with each other."""
import re
import subprocess
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[ ;]", req, maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_lists_the_same_dependencies_as_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = set(project["dependencies"]) | set(project["optional-dependencies"]["dev"])
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    listed = {r for r in pip if not r.startswith("-")}
    assert sorted(listed) == sorted(wanted), "environment.yml and pyproject.toml disagree"
    assert any(r.startswith("-e") for r in pip), "environment.yml should install the package itself"


def _commands(text: str) -> list[str]:
    """The command lines of a shell snippet: no comments, no blank lines."""
    lines = (line.split("#", 1)[0].strip() for line in text.splitlines())
    return [line for line in lines if line]


def test_ci_runs_the_readme_test_command_and_it_runs_every_test_and_notebook():
    readme = (ROOT / "README.md").read_text()
    block = readme.split("```bash\n", 1)[1].split("```", 1)[0]  # the README's first commands
    test_line = next(line for line in block.splitlines() if "test" in line.split("#", 1)[-1])
    command = test_line.split("#", 1)[0].strip()
    assert command in _commands((ROOT / ".ci" / "run").read_text()), "CI does not run the README's test command"
    # what that command does (a dry run prints make's recipe): the unit tests and every notebook under nbval
    target = command.split()[-1]
    dry = subprocess.run(["make", "-n", target], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    dry = dry.replace("\\\n", " ")  # a recipe line continued with a backslash is one command
    assert re.search(r"pytest .*\btests\b", dry), dry
    notebooks = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    nbval = [line for line in dry.splitlines() if "--nbval" in line]
    assert notebooks and all(nb in nbval[0] for nb in notebooks), nbval
    assert all("TINYLDM_FAST=1" in line for line in nbval)
    # and again with the exercises' reference solutions filled in
    assert "exercises solve" in dry and any("build/solved/" in line for line in nbval), dry


def test_value_checks_read_back_only_cpu_tensors_unless_debugging(monkeypatch):
    import torch

    from tinyldm.config import check_values

    monkeypatch.delenv("TINYLDM_DEBUG", raising=False)
    assert check_values(torch.zeros(2)) and not check_values(torch.zeros(2, device="meta"))

    class OnGPU:  # what check_values sees of a CUDA tensor: its device
        device = torch.device("cuda", 0)

    assert not check_values(OnGPU())  # no read-back from a GPU on the hot path ...
    monkeypatch.setenv("TINYLDM_DEBUG", "1")
    assert check_values(OnGPU())  # ... unless asked for
