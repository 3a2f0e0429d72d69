"""The code's layers run one way: the import-linter contract of pyproject.toml holds, function-level
imports included, and a violation is caught (the check can fail)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _lint_imports(cwd: Path) -> subprocess.CompletedProcess:
    command = shutil.which("lint-imports")
    if command is None:
        pytest.skip("import-linter is not installed (pip install -e '.[dev]')")
    return subprocess.run([command, "--no-cache"], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_the_layers_contract_holds():
    result = _lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout


def test_an_import_up_a_layer_inside_a_function_breaks_the_contract(tmp_path):
    copy = tmp_path / "repo"
    shutil.copytree(ROOT / "src", copy / "src")
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    files = copy / "src" / "headstart" / "files.py"
    files.write_text(
        files.read_text() + "\n\ndef _reach_up():\n    from headstart.stage import fit_stage\n\n    return fit_stage\n"
    )
    # the copy is found first: its folder leads sys.path, ahead of the installed package
    code = (
        "import sys; sys.path.insert(0, 'src'); sys.argv = ['lint-imports', '--no-cache']; "
        "from importlinter.cli import lint_imports_command; lint_imports_command()"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=copy, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "headstart.files is not allowed to import headstart.stage" in result.stdout
