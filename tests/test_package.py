"""The package: importable from anywhere once installed, beside a user's own modules; the
scripts thin and never imported by the library; the plain-PyTorch reading the README shows."""

import ast
import re
import shutil
import subprocess
import sys

import pytest
import torch
from PIL import Image

import lenetkit
from lenetkit.commands import predict as predict_command
from lenetkit.environment import PRETRAINED_MODEL_PATH
from lenetkit.prediction import load_model
from lenetkit.preprocess import preprocess_digit

from conftest import PROJECT_DIR

SCRIPTS = ("train", "evaluate", "load_model", "save_model", "serve", "tune", "model")
SEVEN = PROJECT_DIR / "examples" / "seven.png"


def python_blocks(markdown: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", markdown, re.S)


def test_the_documented_plain_pytorch_reading_gives_load_models_logits(monkeypatch):
    """docs/deployment.md's: a model file read with torch.load and build_model alone."""
    block = next(code for code in python_blocks(
                     (PROJECT_DIR / "docs" / "deployment.md").read_text())
                 if "torch.load(" in code)
    monkeypatch.chdir(PROJECT_DIR)
    images = preprocess_digit(Image.open(SEVEN))[None, None]  # 1 x 1 x 28 x 28, white on black
    names = {"images": images}
    with torch.no_grad():
        exec(block, names)  # the doc's own lines, as a reader would paste them
        expected = load_model(PRETRAINED_MODEL_PATH)(
            (images - 0.1307) / 0.3081)  # the shipped file's constants
    assert torch.allclose(names["logits"], expected) and names["logits"].argmax().item() == 7


@pytest.mark.slow
def test_the_installed_package_works_from_a_folder_with_a_users_own_model_and_datasets(tmp_path):
    shutil.copy(SEVEN, tmp_path / "seven.png")
    for name in ("model", "datasets", "evaluate", "common", "errors"):  # a user's own modules
        (tmp_path / f"{name}.py").write_text("raise ImportError('the user\\'s own module')\n")
    code = ("import lenetkit\nfrom lenetkit import predict\n"
            "print(lenetkit.__file__)\nprint(predict('seven.png'))\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                            text=True, env={"PATH": "/usr/bin:/bin", "CUDA_VISIBLE_DEVICES": ""})
    if "No module named 'lenetkit'" in result.stderr:
        pytest.skip("lenetkit is not installed in this interpreter (pip install -e .)")
    assert result.returncode == 0, result.stderr
    location, answer = result.stdout.splitlines()
    assert location.startswith(str(PROJECT_DIR / "lenetkit")) and answer.startswith("7 (")


def test_no_module_of_the_library_or_the_tools_imports_a_script():
    for path in [*(PROJECT_DIR / "lenetkit").glob("*.py"), *(PROJECT_DIR / "tools").glob("*.py")]:
        tree = ast.parse(path.read_text())
        imported = {alias.name.split(".")[0] for node in ast.walk(tree)
                    if isinstance(node, ast.Import) for alias in node.names}
        imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                     if isinstance(node, ast.ImportFrom) and node.module and not node.level}
        assert not imported & set(SCRIPTS), f"{path.name} imports {imported & set(SCRIPTS)}"


def test_the_root_scripts_are_thin():
    """Each holds only imports from the package, `__all__` and the `__main__` guard; and the API
    that load_model.py re-exports is the package's, imported on first use (so that running it
    sets the thread policy before torch is imported)."""
    for name in SCRIPTS:
        for node in ast.parse((PROJECT_DIR / f"{name}.py").read_text()).body:
            if isinstance(node, ast.ImportFrom):
                assert node.module.startswith("lenetkit") or node.module == "typing", name
            elif isinstance(node, ast.Import):
                assert [alias.name for alias in node.names] == ["lenetkit"], name
            elif isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
                assert all(isinstance(inner, ast.ImportFrom) for inner in node.body), name
            elif isinstance(node, ast.FunctionDef):
                assert (name, node.name) == ("load_model", "__getattr__")
            else:
                assert isinstance(node, (ast.Expr, ast.Assign, ast.If)), (name, node.lineno)
                assert not isinstance(node, ast.Assign) or node.targets[0].id == "__all__"
                assert not isinstance(node, ast.If) or ast.unparse(node.test) == (
                    "__name__ == '__main__'") and len(node.body) == 1


def test_the_api_is_at_the_packages_top_and_importing_it_loads_nothing_else():
    code = ("import sys, lenetkit; loaded = sorted(m for m in sys.modules if m.startswith("
            "('lenetkit.', 'torch')))\nprint(lenetkit.__version__, loaded)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=PROJECT_DIR, check=True)
    assert re.fullmatch(r"\d+\.\d+\.\d+ \[\]\n", result.stdout)
    assert {"predict", "Predictor", "load_model", "UserError"} <= set(lenetkit.__all__)
    assert lenetkit.UserError is lenetkit.errors.UserError and callable(lenetkit.predict)


def test_the_console_commands_named_in_pyproject_run_the_scripts_mains(monkeypatch, capsys):
    declared = re.findall(r'^lenetkit-(\w+) = "lenetkit\.commands:(\w+)"$',
                          (PROJECT_DIR / "pyproject.toml").read_text(), re.M)
    assert sorted(declared) == [(name, name) for name in ("evaluate", "predict", "serve", "train")]
    monkeypatch.setattr(sys, "argv", ["lenetkit-predict", "--model", str(PRETRAINED_MODEL_PATH),
                                      str(SEVEN)])
    predict_command()
    assert capsys.readouterr().out == f"{SEVEN}: 7 (100.0%)\n"
