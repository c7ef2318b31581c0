"""The commands in README.md and docs/ as a reader copies them: every script's command parses with
that script's own flags (placeholders such as S for a seed filled in), the quick ones run as
written, every command in the README says how long it takes, and no sample holds a path of the
machine it ran on."""

import contextlib
import importlib
import io
import re
import shlex
from pathlib import Path

import pytest

import lenetkit.environment
from lenetkit import tuning
from lenetkit.commands import MODULES

from conftest import PROJECT_DIR, run_main

DOCS = [PROJECT_DIR / "README.md", *sorted((PROJECT_DIR / "docs").glob("*.md"))]
# What the docs write for a value the reader picks, and a value that stands for it here.
PLACEHOLDERS = {"S": "0", "R": "0", "LR": "0.01", "M": "lenetkit/pretrained/mnist_model.pth",
                "M0": "a.pth", "M1": "b.pth", "M2": "c.pth", "FILE": "file.pth",
                "HOST": "127.0.0.1"}
# A time, as the comments beside commands give it: "35-40 s", "about 11 min", "8.6 min".
A_TIME = re.compile(r"#.*\b\d+(\.\d+)?\s*(s|ms|min|minutes?|seconds?|h)\b")
# Folders of a particular machine; a sample shows paths relative to the project folder.
MACHINE_PATH = re.compile(r"(?<![\w.~])/(work|home|root|Users|opt|srv|mnt)/")


def code_lines(path: Path) -> list[str]:
    """The lines of the fenced code blocks in `path`, with continued lines (`\\`) joined."""
    lines: list[str] = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", path.read_text(), re.S):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            lines.append(line.removeprefix("$ ").strip())
    return lines


def commands(paths: list[Path]) -> list[tuple[str, str]]:
    """(doc, line) for each command of the project's scripts the docs show."""
    return [(path.name, line) for path in paths for line in code_lines(path)
            if re.match(r"(python|torchrun)\b.*\.py\b", line) and "-m pytest" not in line]


def script_argv(line: str) -> tuple[str, list[str]]:
    """The script and its arguments in a command line: the comment dropped, optional parts
    (`[--seed S]`) kept, placeholders filled in."""
    words = shlex.split(line.split("  #")[0].replace("[", "").replace("]", ""), comments=True)
    index = next(i for i, word in enumerate(words) if word.endswith(".py"))
    return words[index], [PLACEHOLDERS.get(word, word) for word in words[index + 1:]]


def parse_function(script: str):
    """The parse_args behind a script: the package module its command runs, or the tool's own."""
    main = importlib.import_module(Path(script).stem).main
    if main.__module__ == "lenetkit.commands":
        return importlib.import_module(f"lenetkit.{MODULES[main.__name__]}").parse_args
    return importlib.import_module(main.__module__).parse_args


@pytest.mark.parametrize("doc, line", commands(DOCS))
def test_every_documented_command_parses_with_the_scripts_flags(doc, line, monkeypatch):
    monkeypatch.chdir(PROJECT_DIR)  # the docs' relative paths are the project folder's
    script, argv = script_argv(line)
    errors = io.StringIO()
    with contextlib.redirect_stderr(errors), contextlib.redirect_stdout(io.StringIO()):
        try:
            parse_function(script)(argv)
        except SystemExit as exit:
            assert exit.code == 0, f"{doc}: {line}\n{errors.getvalue()}"


@pytest.mark.parametrize("doc, line", [(doc, line) for doc, line in commands(DOCS)
                                       if "load_model.py" in line and "runs/" not in line
                                       and "onnx" not in line and "photo.jpg" not in line])
def test_the_documented_predictions_run_as_written(doc, line, monkeypatch):
    monkeypatch.chdir(PROJECT_DIR)
    script, argv = script_argv(line)
    result = run_main(script, *argv)
    assert len(result.stdout.splitlines()) == sum(word.endswith((".png", ".jpg")) for word in argv)


def test_the_readme_sample_of_load_model_prints_what_it_shows(monkeypatch, tmp_path):
    """The README's `$ python load_model.py ...` block: its command's output, line for line
    (the `model:` line is stderr's), as on a fresh clone: by the shipped model, even where a
    model of your own has been trained since."""
    monkeypatch.chdir(PROJECT_DIR)
    monkeypatch.setattr(lenetkit.environment, "DEFAULT_MODEL_PATH", tmp_path / "mnist_model.pth")
    block = re.search(r"```\n\$ (python load_model\.py .*?)\n(.*?)```",
                      (PROJECT_DIR / "README.md").read_text(), re.S)
    assert block is not None
    script, argv = script_argv(block.group(1))
    result = run_main(script, *argv)
    shown = block.group(2).splitlines()
    assert result.stderr.strip() == shown[0]
    assert result.stdout.splitlines() == shown[1:]


def test_the_readmes_python_example_runs_as_written_and_gives_what_its_comments_say(
        monkeypatch, tmp_path):
    """Its first block, pasted into Python in the project folder, with the shipped model."""
    monkeypatch.chdir(PROJECT_DIR)
    monkeypatch.setattr(lenetkit.environment, "DEFAULT_MODEL_PATH", tmp_path / "mnist_model.pth")
    block = re.search(r"```python\n(.*?)```", (PROJECT_DIR / "README.md").read_text(), re.S)
    assert block is not None
    names: dict = {}
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        exec(block.group(1), names)
    p, n = names["p"], names["n"]
    assert printed.getvalue() == "7 (100.0%)\n"
    assert (p.name, round(p.probability, 4), p.is_digit) == ("7", 0.9995, True)
    assert n.text == "2026"


def test_a_documented_sweep_is_as_many_runs_as_it_says():
    sweeps = [line for _, line in commands(DOCS)
              if "tune.py" in line and re.search(r"#.*\b\d+ runs\b", line)]
    assert sweeps
    for line in sweeps:
        args = tuning.parse_args(script_argv(line)[1])[0]
        runs = len(args.lr) * len(args.batch_size) * len(args.epochs) * len(args.seeds)
        assert f"# {runs} runs" in line, line


def test_every_command_in_the_readme_says_how_long_it_takes():
    readme = [line for line in code_lines(PROJECT_DIR / "README.md")
              if re.match(r"(python|make|torchrun|curl)\b", line)]
    assert readme
    untimed = [line for line in readme if not A_TIME.search(line)]
    assert untimed == []


def test_no_sample_shows_a_path_of_the_machine_it_ran_on():
    found = [(path.name, line) for path in DOCS for line in code_lines(path)
             if MACHINE_PATH.search(line)]
    assert found == []
