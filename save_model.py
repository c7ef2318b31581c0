"""Write model files, atomically.

    python save_model.py SRC [--out mnist_model.pth]
    python save_model.py SRC --format onnx --out mnist_model.onnx
    python save_model.py SRC --format onnx-int8 --out mnist_model.int8.onnx [--data-dir data]

turns a training checkpoint (or a model file) into a lean model file: the best
weights and their description, without optimizer state or history. train.py
calls the same `save_model` at the end of every run. The ONNX formats (for ONNX
Runtime; `pip install -r requirements-deploy.txt`) carry the same description in
the file's metadata; INT8 is static quantization calibrated on training images.
"""

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from torch import nn

from common import (DATA_HELP, DEFAULT_DATA_DIR, DEFAULT_MODEL_PATH, PROJECT_DIR, UserError,
                    make_parser, positive_int, require, run_cli, writable_file)
from datasets import DATASETS, load_dataset, normalize, training_indices
from load_model import (FORMAT_VERSION, MODEL_FORMAT, MODEL_KEYS, ONNX_INPUT, ONNX_METADATA_KEY,
                        ONNX_OUTPUT, build_from_record, read_model_file)
from model import count_parameters
from outputs import write_atomic

FORMATS = {"pth": ".pth", "onnx": ".onnx", "onnx-int8": ".int8.onnx"}


def save_atomic(obj: object, path: str | Path) -> None:
    """`torch.save`, atomically (see write_atomic)."""
    write_atomic(path, lambda file: torch.save(obj, file))


def git_commit() -> str | None:
    """The commit of the code that is running, with `+dirty` when it has uncommitted changes."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_DIR, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=PROJECT_DIR, capture_output=True, text=True,
                               check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("+dirty" if dirty else "")


def run_metadata() -> dict:
    """Where a result came from: the command line, the code's commit, the date and the torch
    version."""
    return {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "git_commit": git_commit(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "torch_version": str(torch.__version__),  # a str subclass that weights_only refuses
    }


def model_record(model: nn.Module, arch: str, model_args: dict, dataset: str, normalization: dict,
                 classes: list[str], metadata: dict) -> dict:
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
    lean = {key: record[key] for key in ("format", "version", *MODEL_KEYS)}
    save_atomic(lean, path)


def export_onnx(record: dict, path: str | Path, calibration: np.ndarray | None = None) -> None:
    """Writes the model as an ONNX file with a dynamic batch axis, input `image` (normalized,
    N x the record's input_shape) and output `logits`; with `calibration` images, statically
    quantized to INT8 (QDQ, per channel)."""
    onnx = require("onnx")
    require("onnxscript")  # the exporter's own dependency
    model = build_from_record(record)
    with tempfile.TemporaryDirectory() as folder:
        exported = Path(folder) / "model.onnx"
        # The exporter narrates.
        with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
            torch.onnx.export(model, (torch.zeros(2, *record["input_shape"]),), str(exported),
                              input_names=[ONNX_INPUT], output_names=[ONNX_OUTPUT],
                              dynamic_shapes=({0: torch.export.Dim("batch")},),
                              dynamo=True, external_data=False)
        if calibration is not None:
            exported = _quantize_int8(exported, calibration)
        proto = onnx.load(str(exported))
    description = {key: record[key] for key in MODEL_KEYS if key != "state_dict"}
    description.update(format=MODEL_FORMAT, version=FORMAT_VERSION,
                       parameters=count_parameters(model),
                       precision="int8" if calibration is not None else "float32")
    entry = proto.metadata_props.add()
    entry.key, entry.value = ONNX_METADATA_KEY, json.dumps(description)
    onnx.checker.check_model(proto)
    write_atomic(path, lambda file: file.write(proto.SerializeToString()))


def _quantize_int8(source: Path, calibration: np.ndarray) -> Path:
    quantization = require("onnxruntime.quantization")
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared, quantized = source.with_suffix(".prepared.onnx"), source.with_suffix(".int8.onnx")
    # ONNX Runtime's symbolic shape inference does not know every operator (GELU); ONNX's own does.
    quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)

    class Batches(quantization.CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(np.array_split(calibration, max(1, len(calibration) // 50)))

        def get_next(self) -> dict | None:
            return next(({ONNX_INPUT: batch} for batch in self.batches), None)

    quantization.quantize_static(str(prepared), str(quantized), Batches(),
                                 quant_format=quantization.QuantFormat.QDQ,
                                 activation_type=quantization.QuantType.QInt8,
                                 weight_type=quantization.QuantType.QInt8, per_channel=True)
    return quantized


def calibration_images(record: dict, data_dir: Path, count: int) -> np.ndarray:
    """`count` normalized images from the training split (never validation or test images)."""
    images, _ = load_dataset(data_dir, train=True, dataset=record["dataset"])
    train_indices = training_indices(len(images))
    return normalize(images[train_indices[:count]], **record["normalization"]).numpy()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = make_parser("Write the lean model file (weights and metadata) from a training "
                         "checkpoint or a model file.")
    parser.add_argument("source", type=Path, metavar="SRC",
                        help="training checkpoint (.ckpt) or model file")
    parser.add_argument("--out", type=writable_file,
                        help="file to write (default: mnist_model.pth, .onnx or .int8.onnx "
                             "in the project folder)")
    parser.add_argument("--format", choices=FORMATS, default="pth",
                        help="PyTorch model file, ONNX float32, or ONNX with INT8 weights "
                             "and activations")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR,
                        help=f"{DATA_HELP} (onnx-int8: calibration images)")
    parser.add_argument("--calibration-images", type=positive_int, default=500,
                        help="training images that calibrate the INT8 ranges")
    args = parser.parse_args(argv)
    args.out = args.out or DEFAULT_MODEL_PATH.with_suffix(FORMATS[args.format])
    return args


def main() -> None:
    args = parse_args()
    record = read_model_file(args.source)
    if "onnx" in record:
        raise UserError(f"{args.source} is an ONNX file: "
                        "give the .pth model file or the training checkpoint")
    if args.format == "pth":
        save_model(record, args.out)
    else:
        calibration = (calibration_images(record, args.data_dir, args.calibration_images)
                       if args.format == "onnx-int8" else None)
        export_onnx(record, args.out, calibration)
    metadata = record["metadata"]
    validation = (f"validation accuracy {metadata['val_accuracy']:.2%} at"
                  if "val_accuracy" in metadata else "no validation, kept")
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KB): {record['arch']}, "
          f"{validation} epoch {metadata.get('best_epoch')} of {metadata.get('epochs')}")


if __name__ == "__main__":
    run_cli(main)
