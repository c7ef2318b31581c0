"""The model file format, in one place: what a model file and a training checkpoint hold, how
they are written (atomically) and read (with `torch.load(weights_only=True)`), and one check of
every field.

A model file is a plain dict: the architecture's name and arguments, the state_dict, the
dataset, input shape, normalization constants and class names, and the metadata of the run that
made it. A training checkpoint holds that dict for its best epoch, beside the run's settings and
state. Both are untrusted when read: every field is checked for its type and values before
anything uses it, and the network a record describes is built only once its weights are known to
fit, then tried on a few inputs. Every failure is one ModelFileError naming the file and field,
never a TypeError or KeyError from deep inside.
"""

import inspect
import math
import pickle
import re
import reprlib
import zipfile
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from lenetkit.datasets import DATASETS, standardize
from lenetkit.digitscore import check_digit_score
from lenetkit.errors import UserError
from lenetkit.inputs import check_input_file
from lenetkit.model import ARCHITECTURES, TRAINABLE, Classifier, build_model
from lenetkit.outputs import write_atomic

if TYPE_CHECKING:  # for the annotations only: they import this module
    from lenetkit.config import TrainConfig
    from lenetkit.onnxfiles import OnnxModel
    from lenetkit.training import Training

MODEL_FORMAT = "mnist-pipeline/model"
CHECKPOINT_FORMAT = "mnist-pipeline/training-checkpoint"
FORMAT_VERSION = 1
MODEL_SUFFIXES = (".pth", ".pt")  # a PyTorch model file's name ends so; ONNX files in .onnx
MODEL_KEYS = ("arch", "model_args", "state_dict", "dataset", "input_shape", "normalization",
              "classes", "metadata")
# Keys a model file may hold beside those: the calibrated digit score (digitscore.py).
OPTIONAL_KEYS = ("digit_score",)
# ONNX files (save_model.py --format onnx): these names, and the description as JSON in metadata.
ONNX_INPUT, ONNX_OUTPUT, ONNX_METADATA_KEY = "image", "logits", "mnist_pipeline"
# Operator domains ONNX Runtime's CPU provider implements; any other is a custom operator.
ONNX_DOMAINS = ("", "ai.onnx", "com.microsoft")
# Far above any width or class count a small image classifier uses; larger only make sizes overflow.
MAX_MODEL_ARG = 65_536
# A training checkpoint of the widest network train.py builds, with its optimizer's state and
# averaged weights, is a small fraction of this: a larger file is no model of this project.
MAX_MODEL_FILE_BYTES = 2**30
# The types of the metadata that scripts read (others are kept as they are, unread).
METADATA_FIELDS = {"val_accuracy": "number", "val_loss": "number", "train_seconds": "number",
                   "best_epoch": "count", "epochs": "count", "val_size": "size"}


class ModelFileError(UserError):
    """A model or checkpoint file that is missing, damaged, foreign or inconsistent."""


_SHORT = reprlib.Repr()  # a hostile value may be huge: show its start
_SHORT.maxstring = _SHORT.maxother = 40


def show(value: object) -> str:
    """A value from an untrusted file, shortened to one line for an error message."""
    return " ".join(_SHORT.repr(value).split())


def check_format(content: dict[str, Any], source: str | Path, version: int) -> None:
    """The format version must be exactly `version` (an int: True or a tensor is not a version)."""
    found = content.get("version")
    if type(found) is not int or found != version:
        raise ModelFileError(f"{source} has format version {show(found)}; "
                             f"this code reads version {version}")


class _Field:
    """Checks of one record's fields, each failure a ModelFileError naming the file and field."""

    def __init__(self, source: str | Path) -> None:
        self.source = source

    def fail(self, field: str, wanted: str, value: object) -> ModelFileError:
        return ModelFileError(f"{self.source}: {field} must be {wanted}, "
                              f"not {type(value).__name__} {show(value)}")

    def number(self, field: str, value: object) -> float:
        try:
            number = float(value) if type(value) is int or type(value) is float else math.nan
        except OverflowError:  # an int beyond float's range
            number = math.inf
        if not math.isfinite(number):
            raise self.fail(field, "a finite number", value)
        return number

    def count(self, field: str, value: object, most: int | None = None) -> int:
        if type(value) is not int or not 1 <= value <= (most or value):
            limit = f" up to {most:,}" if most else ""
            raise self.fail(field, f"a positive whole number{limit}", value)
        return value

    def size(self, field: str, value: object) -> int:
        if type(value) is not int or value < 0:
            raise self.fail(field, "a whole number >= 0", value)
        return value

    def known(self, field: str, value: object, names: dict[str, Any], what: str) -> str:
        if not isinstance(value, str):
            raise self.fail(field, "a name", value)
        if value not in names:
            raise ModelFileError(f"{self.source}: {field} names {what} {show(value)}; "
                                 f"known: {', '.join(names)}")
        return value

    def mapping(self, field: str, value: object,
                keys: set[str] | None = None) -> dict[str, Any]:
        if not isinstance(value, dict) or not all(isinstance(key, str) for key in value):
            raise self.fail(field, "a dict with text keys", value)
        if keys is not None and not set(value) <= keys:
            raise self.fail(field, f"a dict of {', '.join(sorted(keys)) or 'nothing'}", value)
        return value


def check_record(record: object, source: str | Path) -> dict[str, Any]:
    """`record` if it is a model record whose every field has the right type and a usable value;
    for a .pth record, the weights must also be finite tensors (checked before building anything).
    Unknown top-level keys are left alone, unread."""
    field = _Field(source)
    record = field.mapping("the record", record)
    needed = [key for key in MODEL_KEYS if not (key == "state_dict" and "onnx" in record)]
    missing = [key for key in needed if key not in record]
    if missing:
        raise ModelFileError(f"{source} lacks {', '.join(missing)}")
    field.known("arch", record["arch"], ARCHITECTURES, "an unknown architecture")
    arguments = inspect.signature(ARCHITECTURES[record["arch"]]).parameters
    for name, value in field.mapping("model_args", record["model_args"], set(arguments)).items():
        if arguments[name].annotation is not float:  # sizes
            field.count(f"model_args.{name}", value, most=MAX_MODEL_ARG)
        elif field.number(f"model_args.{name}", value) <= 0:  # scales
            raise field.fail(f"model_args.{name}", "a positive number", value)
    field.known("dataset", record["dataset"], DATASETS, "an unknown dataset")
    shape, given = list(DATASETS[record["dataset"]].shape), record["input_shape"]
    if not (type(given) in (list, tuple) and [type(size) for size in given] == [int] * len(given)
            and list(given) == shape):
        raise field.fail("input_shape", f"{shape}", given)
    mismatch = shape_mismatch(record["arch"], record["dataset"])
    if mismatch:
        raise ModelFileError(f"{source}: {mismatch}")
    record["normalization"] = _normalization(field, record["normalization"], channels=shape[0])
    classes = record["classes"]
    if type(classes) is not list or not classes or not all(type(name) is str for name in classes):
        raise field.fail("classes", "a non-empty list of names", classes)
    if "digit_score" in record:
        problem = check_digit_score(record["digit_score"], len(classes))
        if problem:
            raise ModelFileError(f"{source}: digit_score {problem}, not "
                                 f"{show(record['digit_score'])}")
    metadata = field.mapping("metadata", record["metadata"])
    for name, kind in METADATA_FIELDS.items():
        if name in metadata:
            getattr(field, kind)(f"metadata.{name}", metadata[name])
    if "onnx" in record:
        field.count("parameters", record.get("parameters"))
    else:
        _check_weights(field, record)
    return record


def shape_mismatch(arch: str, dataset: str) -> str | None:
    """Why network `arch` can't learn `dataset` (its images have another shape), or None."""
    size = lambda shape: "x".join(map(str, shape))  # noqa: E731
    takes, given = ARCHITECTURES[arch].input_shape, DATASETS[dataset].shape
    if takes == given:
        return None
    fitting = [name for name in TRAINABLE if ARCHITECTURES[name].input_shape == given]
    return (f"the {arch} takes images of {size(takes)}, {dataset}'s are {size(given)}; networks "
            f"for them: {', '.join(fitting)}")


def _normalization(field: _Field, value: object, channels: int) -> dict[str, list[float]]:
    """The mean and std of each channel, as lists of floats (a single number, as files of
    grayscale models once held, is their one channel's); every std above 0."""
    normalization = field.mapping("normalization", value, {"mean", "std"})
    checked = {}
    for name in ("mean", "std"):
        given = normalization.get(name)
        values: Sequence[object] = (
            given if (type(given) is list or type(given) is tuple) and len(given) == channels
            else [given])
        if len(values) != channels:
            raise field.fail(f"normalization.{name}", f"{channels} numbers, one a channel",
                             normalization.get(name))
        checked[name] = [field.number(f"normalization.{name}", number) for number in values]
    if not all(std > 0 for std in checked["std"]):
        raise field.fail("normalization.std", "above 0 (the inputs are divided by it)",
                         normalization["std"])
    return checked


def _check_weights(field: _Field, record: dict) -> None:
    """Tensors of real numbers, the names and shapes the architecture has, then finite: in that
    order, so that a tensor the architecture lacks is refused unread (files are memory-mapped)."""
    for name, value in field.mapping("state_dict", record["state_dict"]).items():
        if not isinstance(value, Tensor) or value.is_complex() or value.dtype == torch.bool:
            raise field.fail(f"state_dict[{name!r}]", "a tensor of real numbers", value)
        # A tensor whose numbers are repeated by its strides (an expanded one) stores fewer than
        # it holds: a small file could build a network of any size. torch.save stores them all.
        if value.untyped_storage().nbytes() < value.numel() * value.element_size():
            raise ModelFileError(f"{field.source}: state_dict[{name!r}] stores fewer numbers "
                                 f"than its shape {tuple(value.shape)} holds (its strides repeat "
                                 "them); refusing to load it")
    _check_fit(record, field.source)
    if not all(torch.isfinite(value).all() for value in record["state_dict"].values()):
        raise ModelFileError(f"{field.source} holds NaN or infinite weights")


def _check_fit(record: dict, source: str | Path) -> None:
    """The weights must have the names and shapes of the architecture, built on the meta device
    (no memory) to compare: nothing is allocated for weights that don't fit."""
    arch, model_args = record["arch"], record["model_args"]
    try:
        with torch.device("meta"):
            skeleton = build_model(arch, **model_args)
    except Exception as error:  # a width too small for the architecture's halvings, ...
        raise ModelFileError(f"{source}: architecture {arch!r} can't be built with "
                             f"{model_args} ({error})") from None
    expected = {name: tuple(tensor.shape) for name, tensor in skeleton.state_dict().items()}
    given = {name: tuple(tensor.shape) for name, tensor in record["state_dict"].items()}
    problems = [f"missing {name}" for name in expected if name not in given]
    problems += [f"unexpected {name}" for name in given if name not in expected]
    problems += [f"size mismatch for {name}: {given[name]} in the file, {shape} in the architecture"
                 for name, shape in expected.items() if name in given and given[name] != shape]
    if problems:
        more = f"; and {len(problems) - 3} more" if len(problems) > 3 else ""
        raise ModelFileError(f"{source}: the weights do not fit architecture {arch!r} with "
                             f"{model_args}: " + "; ".join(problems[:3]) + more)


def build_network(record: dict) -> nn.Module:
    """The network of a record that check_record passed, with its weights."""
    model = build_model(record["arch"], **record["model_args"])
    model.load_state_dict(record["state_dict"], strict=True)
    return model


@torch.no_grad()
def probe_outputs(model: Classifier, record: dict, device: str | torch.device = "cpu",
                  source: str | Path = "the model") -> None:
    """Runs the model once on images at the edges of what real ones give (all black, all white,
    mid grey, seeded noise), normalized as the record says. Finite weights can still overflow to NaN
    (enormous values, a tiny std): such a model is refused here, not found out as `nan%`
    predictions or a chance-level accuracy."""
    shape = record["input_shape"]
    pixels = torch.stack([torch.zeros(shape), torch.ones(shape), torch.full(shape, 0.5),
                          torch.rand(shape, generator=torch.Generator().manual_seed(0))])
    images = standardize(pixels, **record["normalization"]).to(device)
    logits = model(images)
    classes = len(record["classes"])
    if tuple(logits.shape) != (len(images), classes):
        raise ModelFileError(f"{source} gives outputs of shape {tuple(logits.shape)} for "
                             f"{len(images)} images, but its record names {classes} classes")
    if not torch.isfinite(logits).all():
        raise ModelFileError(f"{source}'s outputs are NaN or infinite on plain test images: "
                             "its weights (or its normalization) are unusable")


def read_torch_file(path: str | Path) -> dict:
    """The dict stored in a file written by `torch.save`, loaded with weights_only=True."""
    path = Path(path)
    if check_input_file(path, MAX_MODEL_FILE_BYTES, "a model file", ModelFileError) == 0:
        raise ModelFileError(f"{path} is empty (0 bytes)")
    if not zipfile.is_zipfile(path):
        raise ModelFileError(f"{path} is not a PyTorch file, or it is truncated")
    check_unpacked_size(path)
    try:
        # mmap: tensors are read from the file only where used, so one the record doesn't need
        # (refused below) costs no memory.
        content = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as error:
        # weights_only=True stopped at an object that is not a tensor or plain container.
        refused = re.search(r"GLOBAL (\S+)", str(error))
        what = refused.group(1) if refused else "an object"
        raise ModelFileError(f"{path} holds pickled objects other than weights ({what}); "
                             "refusing to load it") from None
    except Exception as error:  # torch.load reports damage as RuntimeError, EOFError, KeyError, ...
        raise ModelFileError(f"{path} is damaged or not a PyTorch file "
                             f"({type(error).__name__}: {error})") from None
    if not isinstance(content, dict):
        raise ModelFileError(f"{path} holds a {type(content).__name__}, "
                             "not a model file of this project")
    return content


def check_unpacked_size(path: Path) -> None:
    """torch.save stores its entries uncompressed, so what one of its files holds is never larger
    than the file: an archive that unpacks to more is a decompression bomb (a small file that
    fills memory)."""
    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as archive:
            unpacked = sum(entry.file_size for entry in archive.infolist())
    except Exception as error:  # zipfile reports damage as BadZipFile, ValueError, EOFError, ...
        raise ModelFileError(f"{path} is damaged or not a PyTorch file "
                             f"({type(error).__name__}: {error})") from None
    if unpacked > size:
        raise ModelFileError(f"{path} unpacks to {unpacked:,} bytes from {size:,}: torch.save "
                             "never compresses, so this file was made to fill memory; "
                             "refusing to load it")


def read_model_file(path: str | Path) -> dict:
    """The model record (arch, model_args, state_dict, dataset, input_shape, normalization,
    classes, metadata) in a model file, or the best model's record in a training checkpoint. For
    an ONNX file, the record holds `onnx` (its path) in place of the state_dict."""
    if Path(path).suffix == ".onnx":
        from lenetkit.onnxfiles import read_onnx_file  # ONNX is optional: only for its files

        return read_onnx_file(Path(path))
    content = read_torch_file(path)
    kind = content.get("format") if isinstance(content.get("format"), str) else None
    if kind == CHECKPOINT_FORMAT:
        best = content.get("model")
        if not isinstance(best, dict):
            raise ModelFileError(f"{path} is a training checkpoint without a model record "
                                 "(no epoch finished)")
        content = best
    elif kind != MODEL_FORMAT:
        hint = (" (it looks like a bare state_dict)"
                if all(isinstance(v, Tensor) for v in content.values()) else "")
        raise ModelFileError(f"{path} is a PyTorch file but not a model file of this project{hint}")
    check_format(content, path, FORMAT_VERSION)
    return check_record(with_dataset(content), path)


def with_dataset(record: dict) -> dict:
    """Files written before the dataset became a setting hold MNIST models and don't say so."""
    return {"dataset": "mnist", "input_shape": list(DATASETS["mnist"].shape), **record}


def build_from_record(record: dict, device: str | torch.device = "cpu",
                      source: str | Path = "the model") -> "nn.Module | OnnxModel":
    """The network described by a record that check_record passed (or that training made), with
    its weights, in eval mode (ONNX files run in ONNX Runtime), once it has given finite outputs
    of the right shape on a few plain images."""
    if "onnx" in record:
        from lenetkit.onnxfiles import OnnxModel

        session = OnnxModel(record["onnx"])
        probe_outputs(session, record, "cpu", source)
        return session
    model = build_network(record).to(device).eval()
    probe_outputs(model, record, device, source)
    return model


def save_atomic(obj: object, path: str | Path) -> None:
    """`torch.save`, atomically (see write_atomic)."""
    write_atomic(path, lambda file: torch.save(obj, file))


def model_record(model: nn.Module, arch: str, model_args: dict, dataset: str, normalization: dict,
                 classes: Sequence[str], metadata: dict) -> dict:
    """A model file's content: plain types and CPU tensors only, so weights_only loading works."""
    return {
        "format": MODEL_FORMAT,
        "version": FORMAT_VERSION,
        "arch": arch,
        "model_args": dict(model_args),
        "state_dict": {name: tensor.detach().cpu().contiguous().clone()
                       for name, tensor in model.state_dict().items()},
        "dataset": dataset,
        "input_shape": list(DATASETS[dataset].shape),
        "normalization": dict(normalization),
        "classes": list(classes),
        "metadata": dict(metadata),
    }


def save_model(record: dict, path: str | Path) -> None:
    """Writes a model record as a lean model file (only the keys a model file holds)."""
    lean = {key: record[key] for key in ("format", "version", *MODEL_KEYS, *OPTIONAL_KEYS)
            if key in record or key not in OPTIONAL_KEYS}
    save_atomic(lean, path)


def save_checkpoint(path: Path, config: "TrainConfig", training: "Training",
                    history: list[dict], best: dict | None) -> None:
    """All a resumed run needs to go on as if it had never stopped."""
    save_atomic({"format": CHECKPOINT_FORMAT, "version": FORMAT_VERSION, "config": asdict(config),
                 "model": best, "history": history,
                 "state_dict": {name: t.cpu() for name, t in training.model.state_dict().items()},
                 "ema": training.ema.state_dict() if training.ema is not None else None,
                 "optimizer": training.optimizer.state_dict(),
                 "scheduler": training.scheduler.state_dict(),
                 "generator": training.generator.get_state(), "torch_rng": torch.get_rng_state(),
                 "threads": torch.get_num_threads()},
                path)


def read_checkpoint(path: Path, settings: tuple[str, ...]) -> dict:
    """A checkpoint that save_checkpoint wrote, of a run whose settings have these names."""
    checkpoint = read_torch_file(path)
    config = checkpoint.get("config")
    if checkpoint.get("format") != CHECKPOINT_FORMAT or not isinstance(config, dict) \
            or set(config) != set(settings):
        raise UserError(f"{path} is not a training checkpoint of this version of the project")
    return checkpoint
