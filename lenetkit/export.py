"""Write model files, atomically.

    python save_model.py SRC [--out mnist_model.pth]
    python save_model.py SRC --format onnx --out mnist_model.onnx
    python save_model.py SRC --format onnx-int8 --out mnist_model.int8.onnx [--data-dir data]

turns a training checkpoint (or a model file) into a lean model file: the best
weights and their description, without optimizer state or history. train.py
calls the same `save_model` at the end of every run. The ONNX formats (for ONNX
Runtime; `pip install -r requirements-deploy.txt`) carry the same description in
the file's metadata; INT8 is static quantization calibrated on training images (and
non-digits, for a model that refuses them).
"""

import argparse
import os
from pathlib import Path

import numpy as np
import torch

from lenetkit.cli import add_data_dir, make_parser, positive_int, writable_file
from lenetkit.datasets import load_dataset, normalize, training_indices
from lenetkit.environment import DEFAULT_MODEL_PATH
from lenetkit.errors import UserError
from lenetkit.modelchoice import check_replacement
from lenetkit.modelfile import MODEL_SUFFIXES, read_model_file, save_model
from lenetkit.negatives import KINDS as NEGATIVE_KINDS
from lenetkit.negatives import TRAIN_SIZE, negative_inputs
from lenetkit.onnxfiles import export_onnx

# Each format's file name ending: the suffix of --out says the format when --format doesn't.
FORMATS = {"pth": ".pth", "onnx": ".onnx", "onnx-int8": ".int8.onnx"}
SUFFIXES = {"pth": MODEL_SUFFIXES, "onnx": (".onnx",), "onnx-int8": (".onnx",)}


def calibration_images(record: dict, data_dir: Path, count: int) -> np.ndarray:
    """`count` normalized images from the training split (never validation or test images), and
    for a model with a digit score half as many of the training split's non-digits: calibrated
    on digits alone, the ranges clip the low scores that refuse a non-digit, and refuse none."""
    images, _ = load_dataset(data_dir, train=True, dataset=record["dataset"])
    chosen = images[training_indices(len(images))[:count]]
    if "digit_score" in record:
        each = max(1, count // (2 * len(NEGATIVE_KINDS)))
        others = negative_inputs(dict.fromkeys(NEGATIVE_KINDS, each), "train", data_dir,
                                 TRAIN_SIZE)
        chosen = torch.cat([chosen, (others * 255).round().to(torch.uint8)])
    return normalize(chosen, **record["normalization"]).numpy()


def output_format(out: Path, asked: str | None) -> str:
    """The format of the file to write: --format, else the one --out's name ends with (else pth);
    a name that ends otherwise than its format is refused (no tool would read it as one)."""
    name = out.name.lower()
    fmt = asked or next((fmt for fmt in ("onnx-int8", "onnx", "pth")
                         if name.endswith(FORMATS[fmt])), "pth")
    float_named_int8 = fmt == "onnx" and name.endswith(FORMATS["onnx-int8"])
    if not name.endswith(SUFFIXES[fmt]) or float_named_int8:
        ending = " or ".join(SUFFIXES[fmt]) + (" (not .int8.onnx)" if float_named_int8 else "")
        raise UserError(f"{out}: a {fmt} file's name ends with {ending}; "
                        "give --out a name that says its format")
    return fmt


def check_source_kept(source: Path, out: Path) -> None:
    """The source (a training checkpoint, say) is never written over."""
    if out.exists() and source.exists() and os.path.samefile(source, out):
        raise UserError(f"{out} is the source file: writing it would destroy it; "
                        "give another --out")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = make_parser("Write the lean model file (weights and metadata) from a training "
                         "checkpoint or a model file.")
    parser.add_argument("source", type=Path, metavar="SRC",
                        help="training checkpoint (.ckpt) or model file")
    parser.add_argument("--out", type=writable_file,
                        help="file to write (default: mnist_model.pth, .onnx or .int8.onnx "
                             "in the project folder)")
    parser.add_argument("--format", choices=FORMATS,
                        help="PyTorch model file, ONNX float32, or ONNX with INT8 weights "
                             "and activations (default: as --out's name ends, else pth)")
    parser.add_argument("--force", action="store_true",
                        help="replace mnist_model.pth even with a model of another dataset or "
                             "a worse validation score")
    add_data_dir(parser, "onnx-int8: its calibration images")
    parser.add_argument("--calibration-images", type=positive_int, default=500,
                        help="training images that calibrate the INT8 ranges")
    args = parser.parse_args(argv)
    args.out = args.out or DEFAULT_MODEL_PATH.with_suffix(FORMATS[args.format or "pth"])
    try:
        check_source_kept(args.source, args.out)
        args.format = output_format(args.out, args.format)
    except UserError as error:
        parser.error(f"argument --out: {error}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    record = read_model_file(args.source)
    if "onnx" in record:
        raise UserError(f"{args.source} is an ONNX file: "
                        "give the .pth model file or the training checkpoint")
    metadata = record["metadata"]
    check_replacement(args.out, record["dataset"], metadata.get("val_accuracy"), args.force,
                      metadata.get("val_size"))
    if args.format == "pth":
        save_model(record, args.out)
    else:
        calibration = (calibration_images(record, args.data_dir, args.calibration_images)
                       if args.format == "onnx-int8" else None)
        export_onnx(record, args.out, calibration)
    validation = (f"validation accuracy {metadata['val_accuracy']:.2%} at"
                  if "val_accuracy" in metadata else "no validation, kept")
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KB): {record['arch']}, "
          f"{validation} epoch {metadata.get('best_epoch')} of {metadata.get('epochs')}")
