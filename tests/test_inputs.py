"""What a stranger hands the project, and how it answers in one line: a named pipe, a device or a
huge sparse file where a file is read, a recipe nested absurdly deep, and arrays and tensors that
hold no plain pixels or no digit given to the Python API."""

import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from lenetkit.cifar10 import CIFAR10_FOLDER, REAL_FILE_BYTES, RECORD_BYTES, load_cifar10
from lenetkit.datasets import IDX_SIZES, load_dataset
from lenetkit.environment import PRETRAINED_MODEL_PATH
from lenetkit.errors import UserError
from lenetkit.modelfile import ModelFileError, read_model_file
from lenetkit.prediction import predict
from lenetkit.preprocess import ImageError

from conftest import run_main, write_cifar10, write_mnist


def refused(script: str, *args: object) -> str:
    """The one line a command that must fail says, with no traceback."""
    result = run_main(script, *args, check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    return result.stderr.strip().splitlines()[-1]


def named_pipe(path: Path) -> Path:
    """A FIFO at `path`. A reader that opens it waits for a writer: a thread plays one for a few
    seconds (opening it, then closing it at once), so that a reader which should never have
    opened it fails the test with an empty read instead of stalling the suite."""
    os.mkfifo(path)

    def release() -> None:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:  # succeeds only while a reader waits
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                time.sleep(0.05)
    threading.Thread(target=release, daemon=True).start()
    return path


def sparse_file(path: Path, size: int) -> Path:
    """A file of `size` bytes that takes no disk: all of it a hole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as file:
        file.truncate(size)
    return path


def test_a_named_pipe_given_as_an_image_is_one_line_not_a_wait(tmp_path):
    pipe = named_pipe(tmp_path / "digit.png")
    result = run_main("load_model.py", "--model", PRETRAINED_MODEL_PATH, pipe, check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1] == (f"{pipe}: error: the file is a named pipe (FIFO), "
                                              "not a regular file: refusing to read it as an image")


def test_a_folder_and_a_huge_file_given_as_images_are_refused_unread(tmp_path):
    (tmp_path / "folder.png").mkdir()
    huge = sparse_file(tmp_path / "huge.png", 12 * 2**30)
    with pytest.raises(ImageError, match="folder.png: the file is a folder, not an image$"):
        predict(tmp_path / "folder.png", model=PRETRAINED_MODEL_PATH)
    with pytest.raises(ImageError, match="huge.png: the file is 12,884,901,888 bytes, more than "
                                         "an image"):
        predict(huge, model=PRETRAINED_MODEL_PATH)


@pytest.mark.parametrize("special, complaint", [
    ("pipe", "is a named pipe (FIFO), not a regular file: refusing to read it as a recipe"),
    ("/dev/zero", "is a character device, not a regular file: refusing to read it as a recipe"),
    ("huge", "is 8,589,934,592 bytes, more than a recipe can be (65,536 bytes at most)"),
])
def test_a_pipe_a_device_or_a_huge_file_as_a_recipe_is_one_line(tmp_path, special, complaint):
    recipe = {"pipe": lambda: named_pipe(tmp_path / "recipe.json"),
              "huge": lambda: sparse_file(tmp_path / "recipe.json", 2**33)}.get(
        special, lambda: Path(special))()
    line = refused("train.py", "--config", recipe, "--data-dir", tmp_path, "--dry-run")
    assert line.endswith(f"argument --config: {recipe} {complaint}")


def test_a_recipe_nested_deeper_than_python_recurses_is_refused_before_it_is_parsed(tmp_path):
    recipe = tmp_path / "deep.json"
    recipe.write_text('{"epochs": ' + "[" * 20_000 + "]" * 20_000 + "}")
    line = refused("train.py", "--config", recipe, "--data-dir", tmp_path, "--dry-run")
    assert line.endswith(f"can't read {recipe}: its arrays and objects nest 20,001 deep, more "
                         "than the 8 allowed")


@pytest.mark.parametrize("size", [REAL_FILE_BYTES + RECORD_BYTES, 12 * 2**30])
def test_a_cifar10_batch_larger_than_a_real_one_is_refused_unread(tmp_path, size):
    write_cifar10(tmp_path, per_file=3)
    huge = sparse_file(tmp_path / CIFAR10_FOLDER / "data_batch_2.bin", size)
    with pytest.raises(UserError, match=f"^{huge} is {size:,} bytes, more than a CIFAR-10 batch "
                                        f"file can be \\({REAL_FILE_BYTES:,} bytes at most\\)$"):
        load_cifar10(tmp_path, train=True, download=False)


def test_a_pipe_in_place_of_a_cifar10_file_is_named_not_taken_for_missing(tmp_path):
    write_cifar10(tmp_path, per_file=3)
    pipe = tmp_path / CIFAR10_FOLDER / "test_batch.bin"
    pipe.unlink()
    named_pipe(pipe)
    with pytest.raises(UserError, match=f"^{pipe} is a named pipe \\(FIFO\\), not a regular file"):
        load_cifar10(tmp_path, train=False, download=False)


def test_an_mnist_file_larger_than_the_real_one_is_refused_unread(tmp_path):
    write_mnist(tmp_path, train_count=30, test_count=10)
    name = "train-images-idx3-ubyte"
    huge = sparse_file(tmp_path / "MNIST" / "raw" / name, IDX_SIZES[name] + 1)
    with pytest.raises(UserError, match=f"^{huge} is .* more than mnist's {name} can be"):
        load_dataset(tmp_path, train=True, download=False)


@pytest.mark.parametrize("suffix", [".pth", ".onnx"])
def test_a_pipe_or_a_huge_file_as_a_model_file_is_named_for_what_it_is(tmp_path, suffix):
    pipe = named_pipe(tmp_path / f"pipe{suffix}")
    with pytest.raises(ModelFileError, match="is a named pipe \\(FIFO\\), not a regular file"):
        read_model_file(pipe)
    huge = sparse_file(tmp_path / f"huge{suffix}", 12 * 2**30)
    with pytest.raises(ModelFileError, match="bytes, more than a model file can be"):
        read_model_file(huge)


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
@pytest.mark.parametrize("given, complaint", [
    (lambda: torch.zeros(0, 28, 28), r"the tensor is empty \(shape \(0, 28, 28\)\)"),
    (lambda: torch.zeros(28, 28, device="meta"), "a tensor on the meta device holds no values"),
    (lambda: torch.eye(28).to_sparse(), r"a sparse tensor \(torch.sparse_coo\) is not a prepared"),
    (lambda: torch.eye(28).to_sparse_csr(), r"a sparse tensor \(torch.sparse_csr\)"),
    (lambda: torch.eye(28, dtype=torch.complex64), "a tensor of complex numbers"),
    (lambda: np.zeros((0, 28)), r"the array is empty \(shape \(0, 28\)\)"),
    (lambda: np.eye(28, dtype=complex), "an array of complex128 is not an image"),
    (lambda: np.full((28, 28), "x"), "an array of <U1 is not an image"),
    (lambda: np.empty((28, 28), dtype=object), "an array of object is not an image"),
])
def test_an_array_or_tensor_with_no_plain_pixels_is_an_image_error(given, complaint):
    with pytest.raises(ImageError, match=complaint):
        predict(given(), model=PRETRAINED_MODEL_PATH)


def test_an_array_over_the_pixel_limit_is_refused_before_it_is_copied():
    huge = np.broadcast_to(np.uint8(0), (6000, 5000))  # no memory: one value, seen everywhere
    with pytest.raises(ImageError, match="an array of 5000x6000 pixels is too large"):
        predict(huge, model=PRETRAINED_MODEL_PATH)


def near_blank() -> torch.Tensor:
    pixels = torch.full((28, 28), 0.05)
    pixels[14, 14] = 0.15
    return pixels


def speck() -> torch.Tensor:
    pixels = torch.zeros(28, 28)
    pixels[13:15, 13:15] = 1.0
    return pixels


@pytest.mark.parametrize("tensor, reason", [
    (torch.zeros(28, 28), "the image is blank or nearly uniform"),
    (torch.zeros(28, 28, dtype=torch.uint8), "the image is blank or nearly uniform"),
    (torch.full((28, 28), 0.5), "the image is blank or nearly uniform"),
    (near_blank(), "the image is blank or nearly uniform"),
    (speck(), "its ink is a mark 2 pixels across, too small to be a digit"),
])
def test_a_blank_prepared_tensor_is_no_digit_as_a_blank_image_file_is(tensor, reason):
    with pytest.raises(ImageError, match=f"^no digit found \\({reason}\\)$"):
        predict(tensor, model=PRETRAINED_MODEL_PATH)


def test_a_blank_input_in_a_batch_is_named_by_its_index():
    digit = torch.zeros(28, 28)
    digit[4:24, 12:16] = 1.0  # a "1"
    assert predict(digit, model=PRETRAINED_MODEL_PATH).name == "1"
    with pytest.raises(ImageError, match=r"^input 1 of the batch: no digit found \(the image is"):
        predict(torch.stack([digit, torch.zeros(28, 28)]), model=PRETRAINED_MODEL_PATH)
