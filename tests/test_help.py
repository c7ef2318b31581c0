"""One way across the scripts: the same flag reads the same in every --help, each default is
shown, outputs are --out (a file) or --out-dir (a folder), and every script has --version."""

import re
import subprocess
import sys

import pytest

import lenetkit

from conftest import PROJECT_DIR, run_main

SCRIPTS = ("train.py", "evaluate.py", "save_model.py", "load_model.py", "serve.py", "tune.py",
           "tools/bench.py", "tools/bench_serve.py")


@pytest.fixture(scope="module")
def helps() -> dict[str, str]:
    """Each script's --help, as one line per option (argparse wraps them)."""
    return {script: re.sub(r"\s+", " ", run_main(script, "--help").stdout) for script in SCRIPTS}


def option_help(text: str, flag: str) -> str:
    """The help of `flag` in a --help's text: from the flag to the next option."""
    return re.search(rf" {flag}\b(.*?)(?= --[a-z]|$)", text).group(1)


def test_data_dir_and_device_read_the_same_in_every_script(helps):
    for script, text in helps.items():
        if "--data-dir" in text:
            help_text = option_help(text, "--data-dir")
            assert help_text.startswith(" DATA_DIR dataset root holding MNIST/raw/"), script
            assert help_text.endswith("(default: data in the project folder)"), script
        if "--device" in text:
            assert "--device {auto,cuda,mps,cpu}" in text, script


def test_outputs_are_out_for_a_file_and_out_dir_for_a_folder(helps):
    for script, text in helps.items():
        flags = set(re.findall(r"--(?:out|save|write)(?:put|-[a-z-]+)?\b", text))
        assert flags <= {"--out", "--out-dir"}, (script, flags)


def test_every_setting_shows_its_default(helps):
    train = helps["train.py"]
    assert "(default: all of them)" in option_help(train, "--train-size")
    for switch in ("--amp", "--lookahead"):
        assert "(default: off)" in option_help(train, rf"{switch}, --no-{switch[2:]}"), switch
    assert "(default: on)" in option_help(train, "--channels-last, --no-channels-last")
    assert "--seeds" not in helps["tune.py"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_says_its_version(script):
    result = run_main(script, "--version")
    assert result.stdout == f"lenetkit {lenetkit.__version__}\n"


@pytest.mark.slow
def test_json_piped_into_head_ends_quietly(tiny_model, tiny_data):
    """`evaluate.py --json | head`: a reader that stops early gets no traceback."""
    process = subprocess.Popen(
        [sys.executable, str(PROJECT_DIR / "evaluate.py"), "--model", str(tiny_model),
         "--data-dir", str(tiny_data), "--no-download", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    process.stdout.close()  # as `head` does once it has its lines
    errors = process.stderr.read()
    assert process.wait() == 141 and errors == ""
