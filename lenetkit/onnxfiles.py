"""ONNX model files: written from a model record (float32, or INT8 calibrated on training
images), read back with their description checked, and run in ONNX Runtime."""

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from lenetkit.environment import require
from lenetkit.inputs import check_input_file, parse_json
from lenetkit.model import count_parameters
from lenetkit.modelfile import (
    FORMAT_VERSION,
    MAX_MODEL_FILE_BYTES,
    MODEL_FORMAT,
    MODEL_KEYS,
    ONNX_DOMAINS,
    ONNX_INPUT,
    ONNX_METADATA_KEY,
    ONNX_OUTPUT,
    OPTIONAL_KEYS,
    ModelFileError,
    build_from_record,
    check_format,
    check_record,
    show,
    with_dataset,
)
from lenetkit.outputs import write_atomic

# A model's description (its record less the weights) nests a few levels; far deeper is no
# description of this project, and is refused before the JSON parser recurses into it.
DESCRIPTION_NESTING = 16

if TYPE_CHECKING:  # for the annotations only: ONNX is optional
    from onnx import ModelProto


def read_onnx_file(path: Path) -> dict[str, Any]:
    onnx = require("onnx")
    check_input_file(path, MAX_MODEL_FILE_BYTES, "a model file", ModelFileError)
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
        record = parse_json(description, most_nesting=DESCRIPTION_NESTING)
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


def check_onnx_graph(proto: "ModelProto", record: dict, source: str | Path) -> None:
    """An ONNX graph must take `image` (N x the record's input_shape, float) and give `logits`
    (N x classes), with standard operators only (a custom one would need code this project does
    not ship)."""
    classes, input_shape = len(record["classes"]), record["input_shape"]
    shape = lambda value: [dim.dim_value or dim.dim_param or "?"
                           for dim in value.type.tensor_type.shape.dim]
    inputs = [(value.name, shape(value)) for value in proto.graph.input]
    outputs = [(value.name, shape(value)) for value in proto.graph.output]
    if len(inputs) != 1 or inputs[0][0] != ONNX_INPUT or inputs[0][1][1:] != input_shape:
        raise ModelFileError(f"{source}: the graph's input must be {ONNX_INPUT} (N x "
                             f"{' x '.join(map(str, input_shape))}), not {show(inputs)}")
    if len(outputs) != 1 or outputs[0][0] != ONNX_OUTPUT or outputs[0][1][1:] != [classes]:
        raise ModelFileError(f"{source}: the graph's output must be {ONNX_OUTPUT} (N x {classes}, "
                             f"one score a class), not {show(outputs)}")
    nodes = [*proto.graph.node, *(node for function in proto.functions for node in function.node)]
    foreign = sorted({f"{node.domain}.{node.op_type}" for node in nodes
                      if node.domain not in ONNX_DOMAINS})
    if foreign:
        raise ModelFileError(f"{source} uses operators outside ONNX's standard set: "
                             + ", ".join(foreign))


def export_onnx(record: dict, path: str | Path, calibration: np.ndarray | None = None) -> None:
    """Writes the model as an ONNX file with a dynamic batch axis, input `image` (normalized,
    N x the record's input_shape) and output `logits`; with `calibration` images, statically
    quantized to INT8 (QDQ, per channel)."""
    onnx = require("onnx")
    require("onnxscript")  # the exporter's own dependency
    model = build_from_record(record)
    assert isinstance(model, nn.Module), "an ONNX file is exported from a .pth model record"
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
    description = {key: record[key] for key in (*MODEL_KEYS, *OPTIONAL_KEYS)
                   if key in record and key != "state_dict"}
    description.update(format=MODEL_FORMAT, version=FORMAT_VERSION,
                       parameters=count_parameters(model),
                       precision="int8" if calibration is not None else "float32")
    entry = proto.metadata_props.add()
    entry.key, entry.value = ONNX_METADATA_KEY, json.dumps(description)
    onnx.checker.check_model(proto)
    write_atomic(path, lambda file: file.write(proto.SerializeToString()))


def _quantize_int8(source: Path, calibration: np.ndarray) -> Path:
    require("onnxruntime.quantization")
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared, quantized = source.with_suffix(".prepared.onnx"), source.with_suffix(".int8.onnx")
    # ONNX Runtime's symbolic shape inference does not know every operator (GELU); ONNX's own does.
    quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(np.array_split(calibration, max(1, len(calibration) // 50)))

        def get_next(self) -> dict | None:
            return next(({ONNX_INPUT: batch} for batch in self.batches), None)

    quantize_static(str(prepared), str(quantized), Batches(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    per_channel=True)
    return quantized
