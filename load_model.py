"""Read model files, and predict the digit (or garment, or object) in image files.

    python load_model.py [--model mnist_model.pth] [--top-k K] [--save-input DIR] IMAGE...

From other programs (with this folder on sys.path):

    from load_model import predict
    prediction = predict("digit.jpg")  # or a PIL image, a numpy array, a prepared tensor, a list
    print(prediction.name, prediction.probability, prediction.top)

    from load_model import load_model
    model = load_model("mnist_model.pth")   # the bare nn.Module in eval mode, returning logits

A model file is a plain dict saved by save_model.py: the architecture's name and
arguments, the state_dict, the normalization constants, the class labels and the
metadata of the run that made it. It is read with `torch.load(weights_only=True)`,
which refuses any pickled object other than tensors and plain containers, so a
model file can't run code.
"""

import argparse
import functools
import json
import pickle
import re
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from common import (DEVICE_HELP, MODEL_HELP, default_model_path, make_parser, pick_device,
                    positive_int, require, run_cli, writable_folder)
from datasets import DATASETS, standardize
from outputs import write_atomic
from preprocess import (MAX_IMAGE_PIXELS, MAX_JPEG_PIXELS, PREPROCESSING, ImageError,  # noqa: F401
                        preprocess_digit, preprocess_garment, read_image, to_grayscale)
from records import (MODEL_KEYS, ONNX_INPUT, ONNX_METADATA_KEY, ONNX_OUTPUT, ModelFileError,
                     build_network, check_format, check_onnx_graph, check_record, probe_outputs)

MODEL_FORMAT = "mnist-pipeline/model"
CHECKPOINT_FORMAT = "mnist-pipeline/training-checkpoint"
FORMAT_VERSION = 1
# Under this probability the CLI says that the model is unsure (Prediction.confident is False).
LOW_CONFIDENCE = 0.6


def read_torch_file(path: str | Path) -> dict:
    """The dict stored in a file written by `torch.save`, loaded with weights_only=True."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"no file at {path}" + (" (it is a folder)" if path.is_dir() else ""))
    if path.stat().st_size == 0:
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
        return read_onnx_file(Path(path))
    content = read_torch_file(path)
    kind = content.get("format") if isinstance(content.get("format"), str) else None
    if kind == CHECKPOINT_FORMAT:
        content = content.get("model")
        if not isinstance(content, dict):
            raise ModelFileError(f"{path} is a training checkpoint without a model record "
                                 "(no epoch finished)")
    elif kind != MODEL_FORMAT:
        hint = (" (it looks like a bare state_dict)"
                if all(isinstance(v, Tensor) for v in content.values()) else "")
        raise ModelFileError(f"{path} is a PyTorch file but not a model file of this project{hint}")
    check_format(content, path, FORMAT_VERSION)
    return check_record(with_dataset(content), path)


def read_onnx_file(path: Path) -> dict:
    onnx = require("onnx")
    if not path.is_file():
        raise ModelFileError(f"no file at {path}")
    try:
        proto = onnx.load(str(path), load_external_data=False)
        onnx.checker.check_model(proto)
    except Exception as error:  # protobuf's DecodeError, onnx's ValidationError, ...
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ModelFileError(f"{path} is damaged or not an ONNX model ({reason})") from None
    description = {entry.key: entry.value for entry in proto.metadata_props}.get(ONNX_METADATA_KEY)
    if description is None:
        raise ModelFileError(f"{path} is an ONNX model but not one of this project "
                             f"(no {ONNX_METADATA_KEY} metadata)")
    try:
        record = json.loads(description)
    except ValueError as error:
        raise ModelFileError(f"{path}: its {ONNX_METADATA_KEY} metadata is not JSON "
                             f"({error})") from None
    if not isinstance(record, dict):
        raise ModelFileError(f"{path}: its {ONNX_METADATA_KEY} metadata is a "
                             f"{type(record).__name__}, not a model description")
    check_format(record, path, FORMAT_VERSION)
    record = check_record({**with_dataset(record), "onnx": str(path)}, path)
    check_onnx_graph(proto, record, path)
    return record


def with_dataset(record: dict) -> dict:
    """Files written before the dataset became a setting hold MNIST models and don't say so."""
    return {"dataset": "mnist", "input_shape": list(DATASETS["mnist"].shape), **record}


class OnnxModel:
    """An ONNX Runtime session used like a model in eval mode: normalized images in, logits out."""

    training = False

    def __init__(self, path: str | Path) -> None:
        runtime = require("onnxruntime")
        try:
            self.session = runtime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime's own Fail, InvalidGraph, NotImplemented, ...
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise ModelFileError(f"{path} can't run in ONNX Runtime ({reason})") from None

    def __call__(self, images: Tensor) -> Tensor:
        logits = self.session.run(
            [ONNX_OUTPUT], {ONNX_INPUT: images.detach().float().cpu().contiguous().numpy()})[0]
        return torch.from_numpy(logits).to(images.device)

    def train(self, mode: bool = True) -> "OnnxModel":
        return self  # inference only: there is no training mode to switch to

    def eval(self) -> "OnnxModel":
        return self


def build_from_record(record: dict, device: str | torch.device = "cpu") -> nn.Module | OnnxModel:
    """The network described by a model record, with its weights, in eval mode (ONNX files run in
    ONNX Runtime), once it has given finite outputs of the right shape on a few plain images."""
    if "onnx" in record:
        model, device = OnnxModel(record["onnx"]), "cpu"
    else:
        model = build_network(check_record(record, "the model record")).to(device).eval()
    probe_outputs(model, record, device)
    return model


def load_model(path: str | Path | None = None,
               device: str | torch.device = "cpu") -> nn.Module | OnnxModel:
    """The model stored in `path` (.pth, training checkpoint or .onnx; by default the one you
    trained, else the shipped one), in eval mode, returning logits (softmax them for
    probabilities)."""
    return build_from_record(read_model_file(path or default_model_path()), device)


@torch.no_grad()
def predict_images(model: nn.Module, record: dict, inputs: Tensor) -> Tensor:
    """Class probabilities (N, classes) for preprocessed images in [0, 1]: (N, 28, 28) gray, or
    (N, 3, 32, 32) colour."""
    return torch.softmax(model(standardize(inputs, **record["normalization"])), dim=1)


@dataclass(frozen=True)
class Prediction:
    """What the model makes of one image."""
    label: int  # the likeliest class's index
    name: str  # its name: "7", or "Sneaker" for a Fashion-MNIST model
    probability: float
    top: list[tuple[str, float]]  # the top-k classes' names and probabilities, likeliest first
    input: Tensor  # what the model saw, in [0, 1]: (28, 28) white on black, or (3, 32, 32) RGB

    @property
    def confident(self) -> bool:
        """False when the likeliest class has under LOW_CONFIDENCE: look at `input` to see why."""
        return self.probability >= LOW_CONFIDENCE


class Predictor:
    """A model file, loaded once, that predicts images:

        predictor = Predictor("mnist_model.pth")  # default: yours if trained, else the shipped one
        prediction = predictor("digit.jpg")       # a path, PIL image, numpy array or tensor
        prediction.name, prediction.probability

    Files, PIL images and numpy arrays (H x W gray, or H x W x 3 or 4 colour) go through the
    preprocessing of the model's dataset (any size, dark ink on light paper or the reverse,
    photos included). Tensors are taken as already prepared: (28, 28) or a batch (N, 28, 28) or
    (N, 1, 28, 28), white on black, floats in [0, 1] or uint8, as torchvision's MNIST gives them;
    (3, 32, 32) or (N, 3, 32, 32) RGB for a CIFAR-10 model. A list, or a batch tensor, gives a
    list of predictions.
    """

    def __init__(self, model: str | Path | None = None, device: str | torch.device = "cpu",
                 top_k: int = 3) -> None:
        self.record = read_model_file(model or default_model_path())
        self.model = build_from_record(self.record, device)
        self.device, self.top_k = device, top_k
        self.classes = self.record["classes"]
        self.preprocess = PREPROCESSING[self.record["dataset"]]
        channels, height, width = self.record["input_shape"]
        # one input's shape: a gray image has no channel axis
        self.shape = (height, width) if channels == 1 else (channels, height, width)

    def __call__(self, images: "ImageLike | list[ImageLike]") -> Prediction | list[Prediction]:
        batch = isinstance(images, (list, tuple)) or isinstance(images, Tensor) \
            and images.dim() > len(self.shape)
        inputs = self.inputs(images)
        probabilities = predict_images(self.model, self.record, inputs.to(self.device)).cpu()
        top = probabilities.topk(min(self.top_k, len(self.classes)))
        predictions = []
        for image, values, indices in zip(inputs, top.values.tolist(), top.indices.tolist()):
            top_k = [(self.classes[i], p) for p, i in zip(values, indices)]
            predictions.append(Prediction(label=indices[0], name=top_k[0][0], probability=values[0],
                                          top=top_k, input=image))
        return predictions if batch else predictions[0]

    def read(self, file: str | Path | BinaryIO) -> Image.Image:
        """An image file, decoded as the model's preprocessing needs it (gray or colour)."""
        return read_image(file, colour=self.record["input_shape"][0] == 3)

    def inputs(self, images: "ImageLike | list[ImageLike]") -> Tensor:
        """The model's inputs (N, *self.shape) in [0, 1] for `images`, before normalization."""
        if isinstance(images, Tensor):
            return prepared_tensor(images, self.shape)
        if isinstance(images, (list, tuple)):
            return torch.cat([self.inputs(image) for image in images])
        if isinstance(images, (str, Path)):
            images = self.read(images)
        elif isinstance(images, np.ndarray):
            images = array_image(images)
        if not isinstance(images, Image.Image):
            raise TypeError(f"can't predict a {type(images).__name__}: give a file path, "
                            "a PIL image, a numpy array or a tensor")
        return self.preprocess(images).unsqueeze(0)


ImageLike = str | Path | Image.Image | np.ndarray | Tensor


def prepared_tensor(images: Tensor, shape: tuple[int, ...]) -> Tensor:
    """A tensor of prepared inputs of one input's `shape` ((28, 28), or (3, 32, 32)), alone or in
    a batch (with a channel axis of 1 for gray ones), as (N, *shape) floats in [0, 1]."""
    given = tuple(images.shape)
    if len(shape) == 2 and images.dim() == 4 and given[1] == 1:
        images = images[:, 0]
    rank = len(shape)  # of one input: a batch has one more axis
    if tuple(images.shape[-rank:]) != shape or images.dim() not in (rank, rank + 1):
        example = " x ".join(map(str, shape))
        raise ImageError(f"a tensor of shape {given} is not a prepared input: give {example} or a "
                         f"batch N x {example}" + (", white on black" if len(shape) == 2 else "")
                         + "; pass other images as a path, PIL image or array")
    images = images.float().div(255) if images.dtype == torch.uint8 else images.float()
    if not torch.isfinite(images).all():
        raise ImageError("the tensor holds NaN or infinite values")
    # A little slack for rounding; normalized or 0-255 floats are far outside.
    if len(images) and not -1e-3 <= images.min() <= images.max() <= 1 + 1e-3:
        raise ImageError(f"the tensor's pixels run from {images.min():.3g} to {images.max():.3g}: "
                         "give them in [0, 1] (or uint8), before normalization")
    return images.cpu().reshape(-1, *shape)


def array_image(array: np.ndarray) -> Image.Image:
    """A numpy image (H x W gray, or H x W x 3 or 4 colour) as a PIL image."""
    if array.ndim == 3 and array.shape[2] in (3, 4) and array.dtype == np.uint8:
        return Image.fromarray(array)
    if array.ndim != 2:
        raise ImageError(f"an array of shape {array.shape} is not an image: give H x W gray, "
                         "or H x W x 3 (RGB) or x 4 (RGBA) uint8")
    return Image.fromarray(array if array.dtype == np.uint8 else array.astype(np.float32))


@functools.cache
def cached_predictor(model: Path, device: str, top_k: int) -> Predictor:
    return Predictor(model, device, top_k)


def predict(images: "ImageLike | list[ImageLike]", model: str | Path | None = None, top_k: int = 3,
            device: str = "cpu") -> Prediction | list[Prediction]:
    """The model's prediction for an image (a file path, PIL image, numpy array or prepared tensor)
    or a list of them (or a batch tensor): see Predictor. Each model file is read once."""
    path = Path(model or default_model_path()).resolve()
    return cached_predictor(path, str(device), top_k)(images)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = make_parser(
        "Predict the class of each image file (PNG, JPEG, ...; any size): the digit, dark ink on "
        "light paper or the reverse, scanned, drawn or photographed on a page, for an MNIST "
        "model; the garment, photographed on a plain background, for a Fashion-MNIST model; the "
        "object in a colour photo for a CIFAR-10 model.")
    parser.add_argument("images", nargs="+", metavar="IMAGE",
                        help="image files, one digit, garment or object each")
    parser.add_argument("--model", type=Path, help=MODEL_HELP)
    parser.add_argument("--top-k", type=positive_int, default=1,
                        help="how many likeliest classes to print")
    parser.add_argument("--save-input", type=writable_folder, metavar="DIR",
                        help="write the input the model saw (28x28, or 32x32 in colour) for "
                             "each image into DIR, as NAME.input.png")
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    return parser.parse_args(argv)  # no --model: Predictor takes the default


def input_image(pixels: Tensor) -> Image.Image:
    """A model's input in [0, 1], (H, W) gray or (3, H, W) colour, as an 8-bit image."""
    pixels = (pixels.clamp(0, 1) * 255).round().to(torch.uint8)
    return Image.fromarray((pixels.permute(1, 2, 0) if pixels.dim() == 3 else pixels).numpy())


def save_input(prediction: Prediction, image_path: str, folder: Path, taken: set[str]) -> Path:
    """Writes the model's input as folder/NAME.input.png (NAME-2... if taken); returns
    its path."""
    stem, number = Path(image_path).stem, 1
    while (name := f"{stem}{f'-{number}' if number > 1 else ''}.input.png") in taken:
        number += 1
    taken.add(name)
    write_atomic(folder / name, lambda file: input_image(prediction.input).save(file, "PNG"))
    return folder / name


def main() -> None:
    args = parse_args()
    predictor = Predictor(args.model, device=pick_device(args.device), top_k=args.top_k)
    failures, taken = 0, set()
    for path in args.images:
        try:
            prediction = predictor(path)
            saved = args.save_input and save_input(prediction, path, args.save_input, taken)
        except ImageError as error:
            print(f"{path}: error: {error}", file=sys.stderr)
            failures += 1
            continue
        except Exception as error:  # noqa: BLE001 -- one file's failure must not stop the others
            print(f"{path}: error: could not predict it ({type(error).__name__}: {error})",
                  file=sys.stderr)
            failures += 1
            continue
        guesses = ", ".join(f"{name} ({probability:.1%})" for name, probability in prediction.top)
        notes = [] if prediction.confident else ["low confidence: check the input"]
        notes += [f"input: {saved}"] if saved else []
        print(f"{path}: {guesses}" + "".join(f"  [{note}]" for note in notes))
    if failures:
        sys.exit(1)


if __name__ == "__main__":
    run_cli(main)
