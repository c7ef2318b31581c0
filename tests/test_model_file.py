"""save_model.py and load_model.py: one model-file format, written atomically, read safely."""

import io
import os
import zipfile

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lenetkit.export
import lenetkit.modelfile
from lenetkit.detector import detected, detector_args
from lenetkit.model import DETECTED, CifarNet, LeNet
from lenetkit.modelfile import (
    MODEL_KEYS,
    ModelFileError,
    build_from_record,
    model_record,
    read_model_file,
    save_atomic,
    save_model,
)
from lenetkit.prediction import load_model

from conftest import PROJECT_DIR, run_main

NORMALIZATION = {"mean": 0.1307, "std": 0.3081}
CLASSES = [str(digit) for digit in range(10)]


def lenet_record(seed: int = 0, **metadata) -> dict:
    torch.manual_seed(seed)
    return model_record(LeNet(), "lenet", {"num_classes": 10}, "mnist", NORMALIZATION, CLASSES,
                        metadata)


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "model.pth"
    save_model(lenet_record(seed=0, val_accuracy=0.5), path)
    return path


def test_a_saved_model_loads_in_eval_mode_and_gives_identical_outputs(tmp_path):
    torch.manual_seed(0)
    original = LeNet().eval()
    path = tmp_path / "model.pth"
    save_model(model_record(original, "lenet", {"num_classes": 10}, "mnist", NORMALIZATION,
                            CLASSES, {}), path)
    loaded = load_model(path)
    assert not loaded.training
    images = torch.randn(16, 1, 28, 28)
    assert torch.equal(loaded(images), original(images))


def test_a_model_with_a_wider_detector_names_its_scale_and_reads_back_as_saved(tmp_path):
    torch.manual_seed(0)
    reader, detector = LeNet().state_dict(), LeNet(1, scale=2).eval()
    args = {"num_classes": 10, **detector_args(2)}
    model = detected(reader, args, detector)
    path = tmp_path / "wide.pth"
    save_model(model_record(model, DETECTED, args, "mnist", NORMALIZATION, CLASSES, {}), path)
    assert read_model_file(path)["model_args"] == {"num_classes": 10, "detector_scale": 2}
    images = torch.randn(4, 1, 28, 28)
    assert torch.equal(load_model(path)(images), model(images))
    # LeNet-5's own widths are named by nothing, as files written before wider detectors
    assert detector_args(1) == {}


def test_a_model_file_carries_its_description_and_metadata(model_file):
    record = read_model_file(model_file)
    assert record["arch"] == "lenet" and record["model_args"] == {"num_classes": 10}
    # single numbers, as grayscale models' files hold them, read as their one channel's
    assert record["normalization"] == {"mean": [0.1307], "std": [0.3081]}
    assert record["classes"] == CLASSES
    assert record["dataset"] == "mnist" and record["input_shape"] == [1, 28, 28]
    assert record["metadata"] == {"val_accuracy": 0.5}


def test_a_model_file_is_a_plain_dict_that_weights_only_loading_accepts(model_file):
    content = torch.load(model_file, weights_only=True)
    assert set(content) == {"format", "version", "arch", "model_args", "state_dict", "dataset",
                            "input_shape", "normalization", "classes", "metadata"}


def test_a_crash_while_saving_leaves_the_old_file_whole_and_no_temporary_behind(model_file,
                                                                                monkeypatch):
    before = model_file.read_bytes()

    def crash_midway(obj, file):
        file.write(b"half a model")
        raise KeyboardInterrupt

    monkeypatch.setattr(lenetkit.modelfile.torch, "save", crash_midway)
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
    with pytest.raises(ModelFileError, match="misfit.pth: the weights do not fit architecture "
                                             "'lenet'.*size mismatch"):
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



@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(min_value=0),
       flips=st.lists(st.tuples(st.integers(min_value=0), st.integers(1, 255)), max_size=4))
def test_a_damaged_model_file_loads_or_gets_a_clear_error_never_anything_else(model_file, tmp_path,
                                                                              cut, flips):
    """Whatever bytes are cut off or flipped, the reader returns a model or raises
    ModelFileError."""
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


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=3000))
def test_arbitrary_bytes_never_load_as_a_model(tmp_path, data):
    path = tmp_path / "arbitrary.pth"
    path.write_bytes(data)
    with pytest.raises(ModelFileError):
        load_model(path)


def test_a_cifarnets_logit_scale_is_kept_in_the_file_and_must_be_a_positive_number(tmp_path):
    torch.manual_seed(0)
    args = {"num_classes": 10, "width": 8, "logit_scale": 0.25}
    record = model_record(CifarNet(**args), "cifarnet", args, "cifar10",
                          {"mean": [0.5] * 3, "std": [0.25] * 3}, list("abcdefghij"), {})
    path = tmp_path / "cifar.pth"
    save_model(record, path)
    assert read_model_file(path)["model_args"] == args and load_model(path).logit_scale == 0.25
    for wrong, complaint in ((0, "a positive number"), (-1.0, "a positive number"),
                             ("0.25", "a finite number"), (float("nan"), "a finite number"),
                             (float("inf"), "a finite number"), (True, "a finite number")):
        record["model_args"]["logit_scale"] = wrong
        path.write_bytes(save_bytes(record))
        with pytest.raises(ModelFileError, match=f"model_args.logit_scale must be {complaint}"):
            load_model(path)
    record["model_args"]["logit_scale"] = 1  # a whole number is a number too
    path.write_bytes(save_bytes(record))
    assert load_model(path).logit_scale == 1


# Round two: structurally valid files whose fields are wrong, silent NaN, memory bombs.

def without(key: str):
    return lambda record: record.pop(key)


def setting(path: str, value):
    """A change to a record: the field at `path` set to `value` (`normalization.std`: a field's own
    field; `state_dict.features.0.weight`: a weight; `classes.0`: a list's item)."""
    def change(record):
        field, _, inner = path.partition(".")
        if not inner:
            record[field] = value
        else:
            target = record[field]
            target[int(inner) if isinstance(target, list) else inner] = value
    return change


WRONG_FIELDS = {
    "model_args a list": (setting("model_args", [10]),
                          r"model_args must be a dict with text keys, not list"),
    "model_args with an unknown key": (setting("model_args", {"num_classes": 10, "depth": 3}),
                                       r"model_args must be a dict of num_classes, scale, "
                                       r"not dict"),
    "model_args a string count": (setting("model_args.num_classes", "10"),
                                  r"model_args.num_classes must be a positive whole number"),
    "model_args an overflowing count": (setting("model_args.num_classes", 10 ** 30),
                                        r"up to 65,536"),
    "5 class names for 10 outputs": (setting("classes", list("01234")),
                                     r"outputs of shape \(4, 10\) .* names 5 classes"),
    "classes a string": (setting("classes", "0123456789"),
                         r"classes must be a non-empty list of names"),
    "normalization missing": (without("normalization"), r"lacks normalization"),
    "normalization strings": (setting("normalization", {"mean": "0.13", "std": "0.31"}),
                              r"normalization.mean must be a finite number, not str"),
    "normalization without std": (setting("normalization", {"mean": 0.13}),
                                  r"normalization.std must be a finite number, not NoneType"),
    "normalization mean beyond float's range": (setting("normalization.mean", -10 ** 400),
                                                r"normalization.mean must be a finite number"),
    "normalization std 0": (setting("normalization.std", 0.0),
                            r"normalization.std must be above 0"),
    "normalization std infinite": (setting("normalization.std", float("inf")),
                                   r"normalization.std must be a finite number"),
    "a state_dict value not a tensor": (
        setting("state_dict.features.0.weight", [[0.5]]),
        r"state_dict\['features.0.weight'\] must be a tensor of real numbers"),
    "state_dict a list": (setting("state_dict", [1, 2]), r"state_dict must be a dict"),
    "metadata a list": (setting("metadata", ["val_accuracy", 0.5]), r"metadata must be a dict"),
    "metadata accuracy a string": (setting("metadata", {"val_accuracy": "99%"}),
                                   r"metadata.val_accuracy must be a finite number"),
    "metadata val_size negative": (setting("metadata", {"val_size": -5}),
                                   r"metadata.val_size must be a whole number >= 0"),
    "arch a number": (setting("arch", 5), r"arch must be a name, not int 5"),
    "dataset unknown": (setting("dataset", "cifar"), r"dataset names an unknown dataset 'cifar'"),
    "input_shape another": (setting("input_shape", [3, 32, 32]),
                            r"input_shape must be \[1, 28, 28\]"),
    "input_shape a tensor": (setting("input_shape", torch.tensor([1, 28, 28])),
                             r"input_shape must be \[1, 28, 28\], not Tensor"),
    "an extra 'weight' the architecture lacks": (
        setting("state_dict.junk", torch.zeros(3)),
        r"do not fit architecture 'lenet'.*unexpected junk"),
}


@pytest.mark.parametrize("case", WRONG_FIELDS)
def test_a_record_with_a_wrong_field_is_refused_naming_the_field(tmp_path, case):
    change, message = WRONG_FIELDS[case]
    record = lenet_record()
    change(record)
    path = tmp_path / "wrong.pth"
    path.write_bytes(save_bytes(record))
    with pytest.raises(ModelFileError, match=message) as error:
        load_model(path)
    assert "\n" not in str(error.value) and str(path) in str(error.value)  # it names the file


def test_a_checkpoint_whose_model_is_not_a_record_is_refused(tmp_path):
    path = tmp_path / "odd.ckpt"
    path.write_bytes(save_bytes({"format": "mnist-pipeline/training-checkpoint", "version": 1,
                                 "model": [1]}))
    with pytest.raises(ModelFileError, match="without a model record"):
        load_model(path)


@pytest.mark.parametrize("change", ["enormous weights", "tiny std"])
def test_finite_weights_that_give_nan_outputs_are_refused_at_load(tmp_path, change):
    record = lenet_record()
    if change == "enormous weights":
        for name in ("features.0.weight", "features.3.weight", "classifier.1.weight"):
            record["state_dict"][name] *= 1e30
    else:
        record["normalization"]["std"] = 1e-45
    save_model(record, tmp_path / "overflow.pth")
    assert all(torch.isfinite(tensor).all() for tensor in record["state_dict"].values())
    with pytest.raises(ModelFileError, match="outputs are NaN or infinite on plain test images"):
        load_model(tmp_path / "overflow.pth")


def test_predicting_with_an_overflowing_model_is_one_line_not_nan_percent(tmp_path):
    record = lenet_record()
    record["state_dict"]["classifier.5.weight"] *= 1e38
    record["state_dict"]["classifier.3.weight"] *= 1e38
    save_model(record, tmp_path / "overflow.pth")
    result = run_main("load_model.py", "--model", tmp_path / "overflow.pth",
                      PROJECT_DIR / "examples" / "seven.png", check=False)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith("error: ") and "NaN or infinite" in result.stderr
    assert result.stderr.count("\n") == 1


def deflated_copy(source, target) -> None:
    """`source`, a torch.save file, re-zipped with compressed entries (torch.save never does)."""
    with zipfile.ZipFile(source) as original, \
            zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as packed:
        for entry in original.infolist():
            packed.writestr(entry.filename, original.read(entry.filename))


def test_a_small_file_that_unpacks_to_an_unused_large_tensor_is_refused_unread(tmp_path,
                                                                               monkeypatch):
    record = lenet_record()
    record["state_dict"]["junk"] = torch.zeros(16 * 2 ** 20)  # 64 MiB of zeros, a few KB compressed
    save_model(record, tmp_path / "plain.pth")
    deflated_copy(tmp_path / "plain.pth", tmp_path / "bomb.pth")
    assert (tmp_path / "bomb.pth").stat().st_size < 2 ** 20
    monkeypatch.setattr(torch, "load", lambda *args, **kwargs: pytest.fail("read the bomb"))
    with pytest.raises(ModelFileError, match=r"bomb.pth unpacks to [\d,]+ bytes from [\d,]+: "):
        load_model(tmp_path / "bomb.pth")


def test_an_unused_large_tensor_stored_plainly_is_refused_before_the_network_is_built(
        tmp_path, monkeypatch):
    record = lenet_record()
    record["state_dict"]["junk"] = torch.zeros(16 * 2 ** 20)
    save_model(record, tmp_path / "padded.pth")
    devices, build = [], lenetkit.modelfile.build_model

    def recorded(*args, **kwargs):
        devices.append(torch.get_default_device().type)
        return build(*args, **kwargs)

    monkeypatch.setattr(lenetkit.modelfile, "build_model", recorded)
    with pytest.raises(ModelFileError, match="unexpected junk"):
        load_model(tmp_path / "padded.pth")
    assert devices == ["meta"]  # compared on the meta device: nothing allocated for the network


def test_weights_whose_strides_repeat_a_few_stored_numbers_are_refused(tmp_path):
    """An expanded tensor stores one number for its whole shape: with a wide network's shape, a
    file of a few KB would fill memory once the network is built."""
    scale = 64
    record = model_record(LeNet(scale=scale), "lenet", {"num_classes": 10, "scale": scale},
                          "mnist", NORMALIZATION, CLASSES, {})
    record["state_dict"] = {name: torch.zeros(1).expand(weights.shape)
                            for name, weights in record["state_dict"].items()}
    save_model(record, tmp_path / "expanded.pth")
    assert (tmp_path / "expanded.pth").stat().st_size < 20_000
    with pytest.raises(ModelFileError, match=r"stores fewer numbers than its shape \(384, 1, 5"):
        load_model(tmp_path / "expanded.pth")


def test_a_deflated_copy_of_a_real_model_file_is_refused_too(model_file, tmp_path):
    deflated_copy(model_file, tmp_path / "deflated.pth")
    assert (tmp_path / "deflated.pth").stat().st_size < model_file.stat().st_size
    with pytest.raises(ModelFileError, match="unpacks to"):
        load_model(tmp_path / "deflated.pth")


# What a pickle of weights_only's plain types can hold, for the hypothesis tests below.
PLAIN_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
    | st.builds(torch.zeros, st.integers(0, 5)),
    lambda inner: (st.lists(inner, max_size=4)
                   | st.dictionaries(st.text(max_size=10), inner, max_size=4)),
    max_leaves=8)
FIELDS = [*MODEL_KEYS, "version", "format", "model_args.num_classes", "model_args.width",
          "normalization.mean", "normalization.std", "metadata.val_accuracy", "metadata.val_size",
          "state_dict.features.0.weight", "state_dict.classifier.5.bias", "classes.0"]


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(changes=st.lists(st.tuples(st.sampled_from(FIELDS), PLAIN_VALUES), min_size=1, max_size=3))
def test_a_record_with_random_field_values_loads_and_predicts_or_gets_a_clear_error(tmp_path,
                                                                                     changes):
    """Whatever values a record's fields hold, the reader gives a model whose outputs are finite and
    one per class, or one ModelFileError line: never a TypeError, KeyError or IndexError."""
    record = lenet_record()
    for path, value in changes:
        try:
            setting(path, value)(record)
        except (TypeError, KeyError, IndexError, ValueError):
            pass  # the field's parent was replaced by an earlier change: nothing to set
    file = tmp_path / "random.pth"
    file.write_bytes(save_bytes(record))
    try:
        loaded = read_model_file(file)
        model = build_from_record(loaded)
    except ModelFileError as error:
        assert "\n" not in str(error)
        return
    logits = model(torch.randn(2, 1, 28, 28))
    assert logits.shape == (2, len(loaded["classes"])) and torch.isfinite(logits).all()
    f"{loaded['metadata'].get('val_accuracy', float('nan')):.2%}"  # what save_model.py prints
