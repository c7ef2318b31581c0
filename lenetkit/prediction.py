"""Predict the digit (or garment, or object) in images, from a model file.

    from lenetkit import predict            # or, in a clone: from load_model import predict
    prediction = predict("digit.jpg")  # or a PIL image, a numpy array, a prepared tensor, a list
    print(prediction)                   # 7 (99.9%)
    prediction.name, prediction.probability, prediction.top

    from lenetkit import load_model
    model = load_model("mnist_model.pth")   # the bare nn.Module in eval mode, returning logits

    number = read_number("year.jpg")   # several digits side by side, read left to right
    print(number)                       # 2026 (98.7%: 2 99.9%, 0 99.6%, 2 99.5%, 6 99.7%)
    number.text, number.digits          # "2026", a Prediction for each digit

The defaults are the command line's (`python load_model.py IMAGE...`): the model you trained, else
the shipped one; the device `auto`; the top class only. Errors are UserError's subclasses
(ImageError, ModelFileError), each naming the file or list item at fault.
"""

import argparse
import contextlib
import functools
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, overload

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from lenetkit.cli import MODEL_HELP, add_device, make_parser, positive_int, writable_folder
from lenetkit.datasets import standardize
from lenetkit.digitscore import judge
from lenetkit.environment import default_model_path, pick_device
from lenetkit.errors import UserError
from lenetkit.inputs import check_input_file
from lenetkit.model import Classifier
from lenetkit.modelchoice import model_line
from lenetkit.modelfile import build_from_record, read_model_file
from lenetkit.multidigit import preprocess_number
from lenetkit.onnxfiles import OnnxModel
from lenetkit.outputs import write_atomic
from lenetkit.preprocess import (
    MAX_IMAGE_PIXELS,
    PREPROCESSING,
    ImageError,
    check_digit_ink,
    preprocess_digit,
    read_image,
)
from lenetkit.threads import use_threads

# Under this probability the CLI says that the model is unsure (Prediction.confident is False).
LOW_CONFIDENCE = 0.6
# No image file within the pixel limits is larger: 16-bit RGBA, uncompressed, takes 8 bytes a
# pixel, and a JPEG at its larger limit is compressed.
MAX_IMAGE_FILE_BYTES = 2**28


@torch.no_grad()
def model_logits(model: Classifier, record: dict, inputs: Tensor) -> Tensor:
    """Logits (N, classes) for preprocessed images in [0, 1]: (N, 28, 28) gray, or
    (N, 3, 32, 32) colour."""
    return model(standardize(inputs, **record["normalization"]))


def predict_images(model: Classifier, record: dict, inputs: Tensor) -> Tensor:
    """Class probabilities (N, classes) for preprocessed images in [0, 1] (model_logits)."""
    return torch.softmax(model_logits(model, record, inputs), dim=1)


@dataclass(frozen=True)
class Prediction:
    """What the model makes of one image."""
    label: int  # the likeliest class's index
    name: str  # its name: "7", or "Sneaker" for a Fashion-MNIST model
    probability: float
    top: list[tuple[str, float]]  # the top-k classes' names and probabilities, likeliest first
    # what the model saw, in [0, 1]: (28, 28) white on black, or (3, 32, 32) RGB
    input: Tensor = field(repr=False)
    # how much it looks like a digit at all, 0..1 (digitscore.py); None: the model can't tell
    digit_score: float | None = None
    # False when the model's calibrated digit score refuses the input as no digit (a letter, a
    # scribble): then `name` is only the likeliest of the ten
    is_digit: bool = True

    @property
    def confident(self) -> bool:
        """False when the likeliest class has under LOW_CONFIDENCE, or the input does not look
        like a digit: look at `input` to see why."""
        return self.probability >= LOW_CONFIDENCE and self.is_digit

    def __str__(self) -> str:
        """As the command line prints it: `7 (99.9%)`, then any other top classes; for a
        non-digit, `no digit (...)`."""
        guesses = ", ".join(f"{name} ({probability:.1%})" for name, probability in self.top)
        if not self.is_digit:
            return (f"no digit (it does not look like one: digit score {self.digit_score:.0%}; "
                    f"the likeliest digit {guesses})")
        return guesses + ("" if self.confident else "  [low confidence: check the input]")


@dataclass(frozen=True)
class Number:
    """What the model reads in an image of a number: its digits, left to right."""
    digits: list[Prediction]

    @property
    def text(self) -> str:
        """The digits' names in order: "2026"."""
        return "".join(digit.name for digit in self.digits)

    @property
    def probability(self) -> float:
        """How likely every digit is right, as the model sees it: their probabilities' product."""
        return float(np.prod([digit.probability for digit in self.digits]))

    @property
    def confident(self) -> bool:
        """False when any digit is not confident (Prediction.confident)."""
        return all(digit.confident for digit in self.digits)

    @property
    def is_digit(self) -> bool:
        """False when the model's digit score refuses any of the digits (Prediction.is_digit)."""
        return all(digit.is_digit for digit in self.digits)

    @property
    def input(self) -> Tensor:
        """What the model saw: the digits' inputs side by side, (28, 28 x digits)."""
        return torch.cat([digit.input for digit in self.digits], dim=-1)

    def __str__(self) -> str:
        """As the command line prints it: `2026 (98.7%: 2 99.9%, 0 99.6%, ...)`, the unsure
        digits named; a number of one digit as its Prediction prints."""
        if len(self.digits) == 1:
            return str(self.digits[0])
        each = ", ".join(f"{digit.name} {digit.probability:.1%}" for digit in self.digits)
        places = list(enumerate(self.digits, 1))
        # Two reasons apart: a digit can be sure which of the ten it is most like, and still not
        # look like a digit at all.
        refused = [(str(place), f"{digit.digit_score:.0%}") for place, digit in places
                   if not digit.is_digit]
        unsure = [str(place) for place, digit in places if digit.is_digit and not digit.confident]
        notes = [f"low confidence in digit {', '.join(unsure)}"] if unsure else []
        if refused:
            which, scores = (", ".join(column) for column in zip(*refused))
            notes.insert(0, f"digit {which} does not look like a digit (digit score {scores})"
                         if len(refused) == 1 else
                         f"digits {which} do not look like digits (digit scores {scores})")
        note = f"  [{'; '.join(notes)}: check the input]" if notes else ""
        return f"{self.text} ({self.probability:.1%}: {each}){note}"


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

    For an MNIST model, an input without a digit (blank, nearly uniform, or a speck too small to
    be one) raises ImageError("no digit found (...)"), as `load_model.py` answers for such an image
    file: never a prediction, confident or not. So does a blank or near-blank prepared tensor, or
    one input of a batch (named by its index). Every other input that can't be read (a missing or
    special file, an empty, sparse, complex or meta tensor or array) is an ImageError too.
    """

    def __init__(self, model: str | Path | None = None, device: str | torch.device = "auto",
                 top_k: int = 1) -> None:
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise UserError(f"top_k must be a whole number >= 1, not {top_k!r}")
        device = pick_device(device)
        self.path = Path(model or default_model_path())
        self.record = read_model_file(self.path)
        self.model = build_from_record(self.record, device, self.path)
        self.device, self.top_k = device, top_k
        self.classes = self.record["classes"]
        self.preprocess = PREPROCESSING[self.record["dataset"]]
        channels, height, width = self.record["input_shape"]
        # one input's shape: a gray image has no channel axis
        self.shape = (height, width) if channels == 1 else (channels, height, width)

    @overload
    def __call__(self, images: "str | Path | Image.Image | np.ndarray") -> Prediction: ...

    @overload
    def __call__(self, images: "list[ImageLike]") -> list[Prediction]: ...

    @overload  # a tensor is one input, or a batch of them
    def __call__(self, images: "ImageLike | list[ImageLike]") -> Prediction | list[Prediction]: ...

    def __call__(self, images: "ImageLike | list[ImageLike]") -> Prediction | list[Prediction]:
        batch = isinstance(images, (list, tuple)) or isinstance(images, Tensor) \
            and images.dim() > len(self.shape)
        inputs = self.inputs(images)
        logits = model_logits(self.model, self.record, inputs.to(self.device)).cpu()
        top = torch.softmax(logits, dim=1).topk(min(self.top_k, len(self.classes)))
        judged = judge(self.record, logits)
        scores, refused = ((judged[0].tolist(), judged[1].tolist()) if judged
                           else ([None] * len(inputs), [False] * len(inputs)))
        predictions = []
        for image, values, indices, score, no in zip(inputs, top.values.tolist(),
                                                     top.indices.tolist(), scores, refused):
            top_k = [(self.classes[i], p) for p, i in zip(values, indices)]
            predictions.append(Prediction(label=indices[0], name=top_k[0][0], probability=values[0],
                                          top=top_k, input=image, digit_score=score,
                                          is_digit=not no))
        return predictions if batch else predictions[0]

    @property
    def reads_numbers(self) -> bool:
        """Whether the model reads digits, and so numbers (read_number): an MNIST model."""
        return self.preprocess is preprocess_digit

    def read_number(self, image: "str | Path | Image.Image | np.ndarray") -> Number:
        """The number in an image (a file path, PIL image or numpy array): its separate digits,
        found and read left to right (multidigit.py). An image of one digit reads as `self(image)`
        reads it, as a Number of one digit. Only an MNIST model reads numbers."""
        if not self.reads_numbers:
            raise UserError(f"a {self.record['dataset']} model reads no numbers: give an MNIST one")
        if isinstance(image, Tensor):
            raise ImageError("a number is read from an image (a file path, PIL image or numpy "
                             "array), not from prepared tensors: predict those one by one")
        digits = self(preprocess_number(self.image(image)))
        assert isinstance(digits, list)  # a batch, of one digit or more
        return Number(digits)

    def read(self, file: str | Path | BinaryIO) -> Image.Image:
        """An image file, decoded as the model's preprocessing needs it (gray or colour); a path
        is first checked to be a regular file of at most MAX_IMAGE_FILE_BYTES."""
        if isinstance(file, (str, Path)):
            check_input_file(file, MAX_IMAGE_FILE_BYTES, "an image", ImageError, named=False)
        return read_image(file, colour=self.record["input_shape"][0] == 3)

    def inputs(self, images: "ImageLike | list[ImageLike]") -> Tensor:
        """The model's inputs (N, *self.shape) in [0, 1] for `images`, before normalization."""
        if isinstance(images, Tensor):
            inputs = prepared_tensor(images, self.shape)
            if self.preprocess is preprocess_digit:  # judged as an image file's digit is
                check_prepared_digits(inputs, batch=images.dim() > len(self.shape))
            return inputs
        if isinstance(images, (list, tuple)):
            if not images:
                raise ImageError("the list of images is empty")
            return torch.cat([self.item_inputs(index, image) for index, image in enumerate(images)])
        return self.preprocess(self.image(images)).unsqueeze(0)

    def image(self, image: "str | Path | Image.Image | np.ndarray") -> Image.Image:
        """An image file (read), a numpy array or a PIL image, as a PIL image."""
        if isinstance(image, (str, Path)):
            image = self.read(image)
        elif isinstance(image, np.ndarray):
            image = array_image(image)
        if not isinstance(image, Image.Image):
            raise ImageError(f"can't predict a {type(image).__name__}: give a file path, "
                             "a PIL image, a numpy array or a tensor")
        if not image.width or not image.height:
            raise ImageError(f"the image is empty ({image.width}x{image.height} pixels)")
        return image

    def item_inputs(self, index: int, image: "ImageLike") -> Tensor:
        """The inputs of one item of a list, an error naming the item (and its file) at fault."""
        try:
            return self.inputs(image)
        except ImageError as error:
            name = f" ({image})" if isinstance(image, (str, Path)) else ""
            raise ImageError(f"item {index}{name}: {error}") from None


ImageLike = str | Path | Image.Image | np.ndarray | Tensor


def prepared_tensor(images: Tensor, shape: tuple[int, ...]) -> Tensor:
    """A tensor of prepared inputs of one input's `shape` ((28, 28), or (3, 32, 32)), alone or in
    a batch (with a channel axis of 1 for gray ones), as (N, *shape) floats in [0, 1]."""
    check_plain_tensor(images)
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


def check_plain_tensor(images: Tensor) -> None:
    """Refuses (ImageError) a tensor with no plain values to read as pixels: sparse, nested,
    quantized, on the meta device, complex, or empty."""
    if images.layout != torch.strided or images.is_nested:
        raise ImageError(f"a {'nested' if images.is_nested else 'sparse'} tensor "
                         f"({images.layout}) is not a prepared input: give a dense one "
                         "(tensor.to_dense()), or a list")
    if images.is_quantized:
        raise ImageError("a quantized tensor is not a prepared input: give floats in [0, 1] or "
                         "uint8 (tensor.dequantize())")
    if images.is_meta:
        raise ImageError("a tensor on the meta device holds no values to predict")
    if images.is_complex():
        raise ImageError(f"a tensor of complex numbers ({images.dtype}) is not an image: give "
                         "real ones")
    if images.numel() == 0:
        raise ImageError(f"the tensor is empty (shape {tuple(images.shape)})")


def check_prepared_digits(inputs: Tensor, batch: bool) -> None:
    """Refuses (no digit found) a prepared input that holds no digit, as an image file's
    preprocessing refuses one (check_digit_ink), naming the input of a `batch` at fault."""
    for index, pixels in enumerate(inputs):
        try:
            check_digit_ink(pixels.numpy())
        except ImageError as error:
            raise ImageError(f"input {index} of the batch: {error}" if batch else str(error)) \
                from None


def array_image(array: np.ndarray) -> Image.Image:
    """A numpy image (H x W gray, or H x W x 3 or 4 colour) as a PIL image: numbers (integers,
    floats or booleans), not empty, within the pixel limit of image files."""
    if array.dtype.kind not in "biuf":
        raise ImageError(f"an array of {array.dtype} is not an image: give numbers (uint8, or "
                         "integers or floats for gray)")
    if array.size == 0:
        raise ImageError(f"the array is empty (shape {array.shape})")
    if array.ndim >= 2 and array.shape[0] * array.shape[1] > MAX_IMAGE_PIXELS:
        raise ImageError(f"an array of {array.shape[1]}x{array.shape[0]} pixels is too large to "
                         f"be a digit (the limit is {MAX_IMAGE_PIXELS:,} pixels)")
    if array.ndim == 3 and array.shape[2] in (3, 4) and array.dtype == np.uint8:
        return Image.fromarray(array)
    if array.ndim != 2:
        raise ImageError(f"an array of shape {array.shape} is not an image: give H x W gray, "
                         "or H x W x 3 (RGB) or x 4 (RGBA) uint8")
    return Image.fromarray(array if array.dtype == np.uint8 else array.astype(np.float32))


@functools.cache
def cached_predictor(model: Path, device: str, top_k: int) -> Predictor:
    return Predictor(model, device, top_k)


@overload
def predict(images: "str | Path | Image.Image | np.ndarray", model: str | Path | None = None,
            top_k: int = 1, device: str = "auto") -> Prediction: ...


@overload
def predict(images: "list[ImageLike]", model: str | Path | None = None, top_k: int = 1,
            device: str = "auto") -> list[Prediction]: ...


@overload  # a tensor is one input, or a batch of them
def predict(images: "ImageLike | list[ImageLike]", model: str | Path | None = None, top_k: int = 1,
            device: str = "auto") -> Prediction | list[Prediction]: ...


def predict(images: "ImageLike | list[ImageLike]", model: str | Path | None = None, top_k: int = 1,
            device: str = "auto") -> Prediction | list[Prediction]:
    """The model's prediction for an image (a file path, PIL image, numpy array or prepared tensor)
    or a list of them (or a batch tensor): see Predictor. Each model file is read once."""
    path = Path(model or default_model_path()).resolve()
    with naming(images):
        return cached_predictor(path, str(device), top_k)(images)


def read_number(image: "str | Path | Image.Image | np.ndarray", model: str | Path | None = None,
                device: str = "auto") -> Number:
    """The number in an image (a file path, PIL image or numpy array), its digits read left to
    right: see Predictor.read_number. Each model file is read once."""
    path = Path(model or default_model_path()).resolve()
    with naming(image):
        return cached_predictor(path, str(device), 1).read_number(image)


@contextlib.contextmanager
def naming(image: object) -> Iterator[None]:
    """An ImageError about a file path names the file, as a list's errors name their item (the
    command line puts the path before its own error lines instead)."""
    try:
        yield
    except ImageError as error:
        if not isinstance(image, (str, Path)):
            raise
        raise ImageError(f"{image}: {error}") from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = make_parser(
        "Predict the class of each image file (PNG, JPEG, ...; any size): the digit, dark ink on "
        "light paper or the reverse, scanned, drawn or photographed on a page, for an MNIST "
        "model, and the number, read left to right, when the image holds several digits side "
        "by side (written apart: touching digits read as one); the garment, photographed on a "
        "plain background, for a Fashion-MNIST model; the object in a colour photo for a "
        "CIFAR-10 model. An image with no digit in it is answered `no digit`: blank ones "
        "always, and letters or scribbles by a model trained with --negatives (its digit "
        "score); the exit status is 1 when any image was not read.")
    parser.add_argument("images", nargs="+", metavar="IMAGE",
                        help="image files, one digit (or number), garment or object each")
    parser.add_argument("--model", type=Path, help=MODEL_HELP)
    parser.add_argument("--top-k", type=positive_int, default=1,
                        help="how many likeliest classes to print")
    parser.add_argument("--out-dir", type=writable_folder, metavar="DIR",
                        help="write the input the model saw (28x28, or 32x32 in colour) for "
                             "each image into DIR, as NAME.input.png")
    add_device(parser)
    return parser.parse_args(argv)  # no --model: Predictor takes the default


def input_image(pixels: Tensor) -> Image.Image:
    """A model's input in [0, 1], (H, W) gray or (3, H, W) colour, as an 8-bit image."""
    pixels = (pixels.clamp(0, 1) * 255).round().to(torch.uint8)
    return Image.fromarray((pixels.permute(1, 2, 0) if pixels.dim() == 3 else pixels).numpy())


def save_input(prediction: Prediction | Number, image_path: str, folder: Path,
               taken: set[str]) -> Path:
    """Writes the model's input as folder/NAME.input.png (NAME-2... if taken); returns
    its path."""
    stem, number = Path(image_path).stem, 1
    while (name := f"{stem}{f'-{number}' if number > 1 else ''}.input.png") in taken:
        number += 1
    taken.add(name)
    write_atomic(folder / name, lambda file: input_image(prediction.input).save(file, "PNG"))
    return folder / name


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    use_threads(args.threads)
    predictor = Predictor(args.model, device=pick_device(args.device), top_k=args.top_k)
    print(model_line(predictor.path, predictor.record), file=sys.stderr)
    failures = 0
    taken: set[str] = set()
    for path in args.images:
        try:
            prediction = predictor.read_number(path) if predictor.reads_numbers \
                else predictor(path)
            saved = args.out_dir and save_input(prediction, path, args.out_dir, taken)
        except UserError as error:  # the image's fault, or a folder that can't be written
            print(f"{path}: error: {error}", file=sys.stderr)
            failures += 1
            continue
        except Exception as error:  # noqa: BLE001 -- one file's failure must not stop the others
            print(f"{path}: error: could not predict it ({type(error).__name__}: {error})",
                  file=sys.stderr)
            failures += 1
            continue
        failures += not prediction.is_digit
        notes = [f"input: {saved}"] if saved else []
        print(f"{path}: {prediction}" + "".join(f"  [{note}]" for note in notes))
    if failures:
        sys.exit(1)



def load_model(path: str | Path | None = None,
               device: str | torch.device = "cpu") -> nn.Module | OnnxModel:
    """The model stored in `path` (.pth, training checkpoint or .onnx; by default the one you
    trained, else the shipped one), in eval mode, returning logits (softmax them for
    probabilities)."""
    path = path or default_model_path()
    return build_from_record(read_model_file(path), device, path)
