"""save_model.py and load_model.py: one model-file format, written atomically, read safely."""

import io
import os
import zipfile

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import save_model as save_model_module
from load_model import ModelFileError, load_model, read_model_file
from model import LeNet
from save_model import model_record, save_atomic, save_model

NORMALIZATION = {"mean": 0.1307, "std": 0.3081}
CLASSES = [str(digit) for digit in range(10)]


def lenet_record(seed: int = 0, **metadata) -> dict:
    torch.manual_seed(seed)
    return model_record(LeNet(), "lenet", {"num_classes": 10}, "mnist", NORMALIZATION, CLASSES, metadata)


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "model.pth"
    save_model(lenet_record(seed=0, val_accuracy=0.5), path)
    return path


def test_a_saved_model_loads_in_eval_mode_and_gives_identical_outputs(tmp_path):
    torch.manual_seed(0)
    original = LeNet().eval()
    path = tmp_path / "model.pth"
    save_model(model_record(original, "lenet", {"num_classes": 10}, "mnist", NORMALIZATION, CLASSES, {}), path)
    loaded = load_model(path)
    assert not loaded.training
    images = torch.randn(16, 1, 28, 28)
    assert torch.equal(loaded(images), original(images))


def test_a_model_file_carries_its_description_and_metadata(model_file):
    record = read_model_file(model_file)
    assert record["arch"] == "lenet" and record["model_args"] == {"num_classes": 10}
    assert record["normalization"] == NORMALIZATION and record["classes"] == CLASSES
    assert record["dataset"] == "mnist" and record["input_shape"] == [1, 28, 28]
    assert record["metadata"] == {"val_accuracy": 0.5}


def test_a_model_file_is_a_plain_dict_that_weights_only_loading_accepts(model_file):
    content = torch.load(model_file, weights_only=True)
    assert set(content) == {"format", "version", "arch", "model_args", "state_dict", "dataset", "input_shape",
                            "normalization", "classes", "metadata"}


def test_a_crash_while_saving_leaves_the_old_file_whole_and_no_temporary_behind(model_file, monkeypatch):
    before = model_file.read_bytes()

    def crash_midway(obj, file):
        file.write(b"half a model")
        raise KeyboardInterrupt

    monkeypatch.setattr(save_model_module.torch, "save", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        save_model(lenet_record(seed=1), model_file)
    assert model_file.read_bytes() == before
    assert os.listdir(model_file.parent) == [model_file.name]


def test_saving_replaces_the_old_file_and_creates_missing_folders(tmp_path):
    path = tmp_path / "new" / "folder" / "model.pth"
    save_atomic({"a": 1}, path)
    save_atomic({"a": 2}, path)
    assert torch.load(path, weights_only=True) == {"a": 2}


def save_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(ModelFileError, match="no file at .*absent.pth"):
        load_model(tmp_path / "absent.pth")


def test_an_empty_file_is_called_empty(tmp_path):
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(ModelFileError, match="is empty"):
        load_model(tmp_path / "empty.pth")


@pytest.mark.parametrize("fraction", [0.01, 0.3, 0.6, 0.9, 0.999])
def test_a_truncated_file_is_refused_with_a_clear_message(model_file, fraction):
    data = model_file.read_bytes()
    model_file.write_bytes(data[:int(len(data) * fraction)])
    with pytest.raises(ModelFileError, match="not a PyTorch file, or it is truncated|damaged"):
        load_model(model_file)


def test_random_bytes_are_not_a_model_file(tmp_path):
    path = tmp_path / "noise.pth"
    path.write_bytes(os.urandom(5000))
    with pytest.raises(ModelFileError, match="not a PyTorch file"):
        load_model(path)


def test_a_zip_archive_of_something_else_is_refused(tmp_path):
    path = tmp_path / "photos.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("holiday.txt", "not weights")
    with pytest.raises(ModelFileError, match="damaged or not a PyTorch file"):
        load_model(path)


class RunsCode:
    """Unpickling this calls os.system: what a hostile model file would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_pickle_that_would_run_code_is_refused_and_the_code_does_not_run(tmp_path):
    marker = tmp_path / "code_ran"
    path = tmp_path / "hostile.pth"
    path.write_bytes(save_bytes({"format": "mnist-pipeline/model", "payload": RunsCode(marker)}))
    with pytest.raises(ModelFileError, match="pickled objects other than weights"):
        load_model(path)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # proof that the payload is real: unsafe loading runs it
    assert marker.exists()


def test_a_bare_state_dict_is_recognised_as_foreign(tmp_path):
    path = tmp_path / "state_dict.pth"
    path.write_bytes(save_bytes(LeNet().state_dict()))
    with pytest.raises(ModelFileError, match="not a model file of this project .*bare state_dict"):
        load_model(path)


def test_a_saved_tensor_is_not_a_model_file(tmp_path):
    path = tmp_path / "tensor.pth"
    path.write_bytes(save_bytes(torch.zeros(3)))
    with pytest.raises(ModelFileError, match="holds a Tensor"):
        load_model(path)


def test_weights_that_do_not_fit_the_architecture_are_refused(tmp_path):
    record = lenet_record()
    record["model_args"] = {"num_classes": 3}
    save_model(record, tmp_path / "misfit.pth")
    with pytest.raises(ModelFileError, match="do not fit architecture 'lenet'.*size mismatch"):
        load_model(tmp_path / "misfit.pth")


def test_missing_weights_are_refused(tmp_path):
    record = lenet_record()
    del record["state_dict"]["classifier.5.bias"]
    save_model(record, tmp_path / "incomplete.pth")
    with pytest.raises(ModelFileError, match="do not fit.*classifier.5.bias"):
        load_model(tmp_path / "incomplete.pth")


def test_an_unknown_architecture_is_named(tmp_path):
    record = lenet_record()
    record["arch"] = "transformer"
    save_model(record, tmp_path / "unknown.pth")
    with pytest.raises(ModelFileError, match="unknown architecture 'transformer'"):
        load_model(tmp_path / "unknown.pth")


def test_nan_weights_are_refused(tmp_path):
    record = lenet_record()
    record["state_dict"]["features.0.weight"][0, 0, 0, 0] = float("nan")
    save_model(record, tmp_path / "nan.pth")
    with pytest.raises(ModelFileError, match="NaN or infinite"):
        load_model(tmp_path / "nan.pth")


def test_a_newer_format_version_is_refused(tmp_path):
    record = lenet_record()
    record["version"] = 99
    save_model(record, tmp_path / "future.pth")
    with pytest.raises(ModelFileError, match="format version 99"):
        load_model(tmp_path / "future.pth")


def test_model_file_errors_are_one_line_user_errors(tmp_path):
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(ModelFileError) as error:
        load_model(tmp_path / "empty.pth")
    assert "\n" not in str(error.value)



@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(min_value=0), flips=st.lists(st.tuples(st.integers(min_value=0), st.integers(1, 255)),
                                                    max_size=4))
def test_a_damaged_model_file_loads_or_gets_a_clear_error_never_anything_else(model_file, tmp_path, cut, flips):
    """Whatever bytes are cut off or flipped, the reader returns a model or raises ModelFileError."""
    data = bytearray(model_file.read_bytes())
    del data[cut % (len(data) + 1):]
    for position, mask in flips:
        if data:
            data[position % len(data)] ^= mask
    damaged = tmp_path / "damaged.pth"
    damaged.write_bytes(bytes(data))
    try:
        model = load_model(damaged)
    except ModelFileError as error:
        assert "\n" not in str(error)
    else:
        assert model(torch.zeros(1, 1, 28, 28)).shape == (1, 10)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=3000))
def test_arbitrary_bytes_never_load_as_a_model(tmp_path, data):
    path = tmp_path / "arbitrary.pth"
    path.write_bytes(data)
    with pytest.raises(ModelFileError):
        load_model(path)
