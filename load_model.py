"""Read model files, and predict the digit (or garment) in image files.

    python load_model.py [--model mnist_model.pth] [--top-k K] IMAGE...

From other programs:

    from load_model import load_model
    model = load_model("mnist_model.pth")   # an nn.Module in eval mode, returning logits

A model file is a plain dict saved by save_model.py: the architecture's name and
arguments, the state_dict, the normalization constants, the class labels and the
metadata of the run that made it. It is read with `torch.load(weights_only=True)`,
which refuses any pickled object other than tensors and plain containers, so a
model file can't run code.
"""

import argparse
import json
import pickle
import re
import sys
import zipfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor, nn

from common import (INPUT_SHAPE, MODEL_HELP, UserError, default_model_path, make_parser, positive_int,
                    require, run_cli)
from records import (MODEL_KEYS, ONNX_INPUT, ONNX_METADATA_KEY, ONNX_OUTPUT, ModelFileError,
                     build_network, check_format, check_onnx_graph, check_record, probe_outputs)

MODEL_FORMAT = "mnist-pipeline/model"
CHECKPOINT_FORMAT = "mnist-pipeline/training-checkpoint"
FORMAT_VERSION = 1
# A phone photo has 12-50 megapixels; far larger "images" are decompression bombs. This keeps
# the decoded image, and its float copy, to a few hundred MB at most.
MAX_IMAGE_PIXELS = 64_000_000


class ImageError(UserError):
    """An image file that can't be read, or holds no digit (or garment)."""


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
        raise ModelFileError(f"{path} holds pickled objects other than weights ({what}); refusing to load it") from None
    except Exception as error:  # torch.load reports damage as RuntimeError, EOFError, KeyError, ...
        raise ModelFileError(f"{path} is damaged or not a PyTorch file ({type(error).__name__}: {error})") from None
    if not isinstance(content, dict):
        raise ModelFileError(f"{path} holds a {type(content).__name__}, not a model file of this project")
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
    """The model record (arch, model_args, state_dict, dataset, input_shape, normalization, classes, metadata) in a
    model file, or the best model's record in a training checkpoint. For an ONNX file, the
    record holds `onnx` (its path) in place of the state_dict."""
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
        hint = " (it looks like a bare state_dict)" if all(isinstance(v, Tensor) for v in content.values()) else ""
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
        raise ModelFileError(f"{path} is an ONNX model but not one of this project (no {ONNX_METADATA_KEY} metadata)")
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
    check_onnx_graph(proto, len(record["classes"]), path)
    return record


def with_dataset(record: dict) -> dict:
    """Files written before the dataset became a setting hold MNIST models and don't say so."""
    return {"dataset": "mnist", "input_shape": list(INPUT_SHAPE), **record}


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
        logits = self.session.run([ONNX_OUTPUT], {ONNX_INPUT: images.detach().float().cpu().contiguous().numpy()})[0]
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


def load_model(path: str | Path | None = None, device: str | torch.device = "cpu") -> nn.Module | OnnxModel:
    """The model stored in `path` (.pth, training checkpoint or .onnx; by default the one you trained,
    else the shipped one), in eval mode, returning logits (softmax them for probabilities)."""
    return build_from_record(read_model_file(path or default_model_path()), device)


def read_image(path: str | Path) -> Image.Image:
    """The first frame of an image file, fully decoded; images over MAX_IMAGE_PIXELS are refused unread."""
    try:
        with Image.open(path) as image:  # reads the header only
            if image.width * image.height > MAX_IMAGE_PIXELS:
                raise ImageError(f"{image.width}x{image.height} pixels is too large to be a digit "
                                 f"(the limit is {MAX_IMAGE_PIXELS:,} pixels)")
            image.load()
            return ImageOps.exif_transpose(image)
    except FileNotFoundError:
        raise ImageError("no such file") from None
    except Image.DecompressionBombError as error:
        raise ImageError(f"too large to be a digit ({error})") from None
    except (OSError, ValueError, SyntaxError) as error:
        raise ImageError(f"not a readable image ({error})") from None


def to_grayscale(image: Image.Image) -> np.ndarray:
    """Float32 gray levels stretched to [0, 1]; transparent areas count as white paper."""
    if "A" in image.getbands() or "transparency" in image.info:
        image = Image.alpha_composite(Image.new("RGBA", image.size, "white"), image.convert("RGBA"))
    if image.mode not in ("L", "I", "I;16", "I;16B", "I;16L", "F"):
        image = image.convert("L")
    gray = np.asarray(image, dtype=np.float32)
    low, high = float(gray.min()), float(gray.max())
    return (gray - low) / (high - low) if high > low else np.zeros_like(gray)


def preprocess_digit(image: Image.Image, box: int = 20, size: int = 28) -> Tensor:
    """An image of one digit, as MNIST prepared its own: white ink on black, cropped to the
    ink, the longer side scaled to `box` pixels, centred by centre of mass in `size` x `size`.

    Returns float32 (size, size) in [0, 1], before normalization.
    """
    gray = to_grayscale(image)
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    if np.median(border) > 0.5:  # light paper, dark ink: MNIST's digits are the reverse
        gray, border = 1 - gray, 1 - border
    ink = np.clip(gray - np.median(border), 0, None)
    if ink.max() < 0.2:
        raise ImageError("no digit found (the image is blank or nearly uniform)")
    ink /= ink.max()
    rows, cols = np.nonzero(ink > 0.1)
    ink = ink[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    scale = box / max(ink.shape)
    height, width = (max(1, round(side * scale)) for side in ink.shape)
    ink = np.asarray(Image.fromarray(ink).resize((width, height), Image.Resampling.LANCZOS)).clip(0, 1)
    if ink.max() <= 0:
        raise ImageError("no digit found (the ink vanishes at 28x28)")
    ink = ink / ink.max()  # shrinking a large photo thins and greys its strokes; MNIST's are full-strength
    total = ink.sum()
    centre_row = (ink.sum(1) * np.arange(height)).sum() / total
    centre_col = (ink.sum(0) * np.arange(width)).sum() / total
    # MNIST's mean centre of mass is pixel (14, 14); clamp so that no ink is cut off.
    top = min(max(round(size / 2 - centre_row), 0), size - height)
    left = min(max(round(size / 2 - centre_col), 0), size - width)
    canvas = np.zeros((size, size), dtype=np.float32)
    canvas[top:top + height, left:left + width] = ink
    return torch.from_numpy(canvas)


def preprocess_garment(image: Image.Image, size: int = 28) -> Tensor:
    """A photo of one garment on a plain background, as Fashion-MNIST prepared its own: light on
    black, cropped to the garment, padded to a square and scaled so its longer side fills `size`.

    Returns float32 (size, size) in [0, 1], before normalization.
    """
    gray = to_grayscale(image)
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    if np.median(border) > 0.5:  # a light background: Fashion-MNIST's is black
        gray, border = 1 - gray, 1 - border
    rows, cols = np.nonzero(gray > np.median(border) + 0.1)
    if len(rows) == 0:
        raise ImageError("no garment found (the image is blank or nearly uniform)")
    gray = gray[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    side = max(gray.shape)
    square = np.zeros((side, side), dtype=np.float32)
    top, left = (side - gray.shape[0]) // 2, (side - gray.shape[1]) // 2
    square[top:top + gray.shape[0], left:left + gray.shape[1]] = gray
    square = np.asarray(Image.fromarray(square).resize((size, size), Image.Resampling.LANCZOS))
    return torch.from_numpy(square.clip(0, 1).copy())


# How an image file becomes a model's 28x28 input, by the dataset the model learned.
PREPROCESSING = {"mnist": preprocess_digit, "fashion-mnist": preprocess_garment}


@torch.no_grad()
def predict_images(model: nn.Module, record: dict, inputs: Tensor) -> Tensor:
    """Class probabilities (N, classes) for preprocessed images (N, 28, 28) in [0, 1]."""
    normalization = record["normalization"]
    images = ((inputs - normalization["mean"]) / normalization["std"]).unsqueeze(1)
    return torch.softmax(model(images), dim=1)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = make_parser(
        "Predict the class of each image file (PNG, JPEG, ...; any size): the digit, dark ink on "
        "light paper or the reverse, for an MNIST model; the garment, photographed on a plain "
        "background, for a Fashion-MNIST model.")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files, one digit or garment each")
    parser.add_argument("--model", type=Path, help=MODEL_HELP)
    parser.add_argument("--top-k", type=positive_int, default=1, help="how many likeliest classes to print")
    args = parser.parse_args(argv)
    args.model = args.model or default_model_path()
    return args


def main() -> None:
    args = parse_args()
    record = read_model_file(args.model)
    model = build_from_record(record)
    classes = record["classes"]
    failures = 0
    for path in args.images:
        try:
            image = PREPROCESSING[record["dataset"]](read_image(path))
        except ImageError as error:
            print(f"{path}: error: {error}", file=sys.stderr)
            failures += 1
            continue
        probabilities = predict_images(model, record, image.unsqueeze(0))[0]
        top = probabilities.topk(min(args.top_k, len(classes)))
        guesses = ", ".join(f"{classes[i]} ({p:.1%})" for p, i in zip(top.values.tolist(), top.indices.tolist()))
        print(f"{path}: {guesses}")
    if failures:
        sys.exit(1)


if __name__ == "__main__":
    run_cli(main)
