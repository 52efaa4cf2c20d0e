"""The layout is the architecture: imports between the packages run one way,
common <- datamodules <- lightning_modules <- inference <- evaluation <- the scripts, inside a package in no
circle, and evaluation (reporting on computed results) needs nothing of the project but common."""

from __future__ import annotations

import ast
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

LAYERS = ["common", "datamodules", "lightning_modules", "inference", "evaluation"]  # each imports only those before it


def imported_packages(path) -> set[str]:
    """The top-level names a module imports (at any depth of its code)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", LAYERS)
def test_a_package_imports_no_package_above_it(package):
    above = set(LAYERS[LAYERS.index(package) + 1 :]) | {"train", "evaluate", "predict", "export", "app", "scripts"}
    offences = {
        str(path.relative_to(REPO)): sorted(imported_packages(path) & above) for path in (REPO / package).glob("*.py")
    }
    assert {path: names for path, names in offences.items() if names} == {}


def test_evaluation_needs_nothing_of_the_project_but_common():
    project = set(LAYERS) | {"train", "evaluate", "predict", "export", "app", "scripts"}
    imported = set().union(*(imported_packages(path) for path in (REPO / "evaluation").glob("*.py")))
    assert imported & project == {"common", "evaluation"}


def imported_modules(path, package: str) -> set[str]:
    """The modules of `package` a module imports, anywhere in its code (in functions and under TYPE_CHECKING too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
    return {name for name in names if name.startswith(f"{package}.")}


def import_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the import graph (as its modules, the first repeated last), or None."""
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> list[str] | None:
        state[module] = "open"
        for imported in sorted(graph.get(module, ())):
            if state.get(imported) == "open":
                return path[path.index(imported) :] + [imported]
            if imported not in state and (cycle := visit(imported, [*path, imported])):
                return cycle
        state[module] = "done"
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module, [module])):
            return cycle
    return None


@pytest.mark.parametrize("package", LAYERS)
def test_the_modules_of_a_package_import_each_other_in_no_circle(package):
    graph = {f"{package}.{path.stem}": imported_modules(path, package) for path in (REPO / package).glob("*.py")}
    assert import_cycle(graph) is None


def test_an_import_circle_is_caught():
    assert import_cycle({"p.a": {"p.b"}, "p.b": {"p.c"}, "p.c": {"p.a"}, "p.d": {"p.a"}}) == [
        "p.a",
        "p.b",
        "p.c",
        "p.a",
    ]
    assert import_cycle({"p.a": {"p.b"}, "p.b": set(), "p.c": {"p.a", "p.b"}}) is None


def test_a_package_importing_one_above_it_is_caught(tmp_path):
    offender = tmp_path / "bad.py"
    offender.write_text("from evaluation.boxes import box_report\nimport train\n")
    assert imported_packages(offender) & {"evaluation", "train"} == {"evaluation", "train"}


@pytest.mark.slow
def test_comparing_reports_loads_neither_lightning_nor_the_networks():
    # A fresh process: this one has imported everything already.
    heavy = "{'lightning', 'timm', 'segmentation_models_pytorch'}"
    code = f"import sys, evaluation.compare; print(sorted({heavy} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("command", [["format", "--check"], ["check"]])
def test_the_code_is_formatted_and_linted(command):
    pytest.importorskip("ruff", reason="ruff is not installed (pip install -e '.[dev]')")
    result = subprocess.run([sys.executable, "-m", "ruff", *command, "."], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
@pytest.mark.parametrize(
    "module", ["datamodules.segmentation", "datamodules.transforms", "lightning_modules.segmentation"]
)
def test_albumentations_is_imported_with_its_update_check_off(module):
    # A fresh process, whose first import is `module`: the check asks PyPI, which offline machines wait on.
    code = f"""
import os, sys
class Watch:
    def find_spec(self, name, path, target=None):
        if name == "albumentations":
            print(os.environ.get("NO_ALBUMENTATIONS_UPDATE"))
sys.meta_path.insert(0, Watch())
import {module}
import albumentations
"""
    environment = {key: value for key, value in os.environ.items() if key != "NO_ALBUMENTATIONS_UPDATE"}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120, env=environment
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1"]
