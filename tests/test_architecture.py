"""The layout is the architecture: imports between the packages run one way,
datamodules <- lightning_modules <- evaluation <- the scripts."""

from __future__ import annotations

import ast
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

LAYERS = ["datamodules", "lightning_modules", "evaluation"]  # each may import only those before it


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
