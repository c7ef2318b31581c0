"""ONNX export and INT8 quantization (save_model.py --format), run by load_model.py and
evaluate.py."""

import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from test_model_file import CLASSES, NORMALIZATION

from lenetkit.datasets import DATASETS, load_dataset, normalize
from lenetkit.detector import detected
from lenetkit.environment import PRETRAINED_MODEL_PATH
from lenetkit.errors import UserError
from lenetkit.evaluation import evaluate
from lenetkit.model import DETECTED, LeNet
from lenetkit.modelfile import ModelFileError, model_record, read_model_file
from lenetkit.negatives import HELD_OUT_FONTS, letter_image
from lenetkit.onnxfiles import export_onnx
from lenetkit.prediction import Predictor, load_model

from conftest import PROJECT_DIR, REAL_DATA_DIR, TINY_TRAINING, needs_real_mnist, run_main

DEPLOYMENT = "the deployment packages: pip install -r requirements-deploy.txt"
onnx = pytest.importorskip("onnx", reason=DEPLOYMENT)
pytest.importorskip("onnxruntime", reason=DEPLOYMENT)


@pytest.fixture(scope="module")
def exported(tiny_model, tiny_data, tmp_path_factory):
    """The tiny model as ONNX float32 and INT8 files, made by save_model.py."""
    folder = tmp_path_factory.mktemp("onnx")
    fp32, int8 = folder / "model.onnx", folder / "model.int8.onnx"
    run_main("save_model.py", tiny_model, "--format", "onnx", "--out", fp32)
    run_main("save_model.py", tiny_model, "--format", "onnx-int8", "--out", int8, "--data-dir",
             tiny_data, "--calibration-images", "200")
    return fp32, int8


def test_onnx_gives_pytorchs_logits_for_any_batch_size(tiny_model, exported):
    original, onnx_model = load_model(tiny_model), load_model(exported[0])
    for batch in (1, 7, 64):
        images = torch.randn(batch, 1, 28, 28)
        assert torch.allclose(onnx_model(images), original(images), atol=1e-4)


def test_the_onnx_file_is_valid_and_carries_the_models_description(tiny_model, exported):
    proto = onnx.load(str(exported[0]))
    onnx.checker.check_model(proto)
    assert [node.name for node in proto.graph.input] == ["image"]
    assert [output.name for output in proto.graph.output] == ["logits"]
    # the batch axis is symbolic
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param
    record, original = read_model_file(exported[0]), read_model_file(tiny_model)
    for key in ("arch", "model_args", "normalization", "classes", "metadata"):
        assert record[key] == original[key]
    assert record["precision"] == "float32" and read_model_file(exported[1])["precision"] == "int8"


def test_int8_is_a_third_of_the_size_and_agrees_with_float32(tiny_data, exported):
    fp32, int8 = exported
    assert int8.stat().st_size <= fp32.stat().st_size / 3
    images, labels = load_dataset(tiny_data, train=False, download=False)
    x = normalize(images, **DATASETS["mnist"].normalization)
    exact, quantized = load_model(fp32)(x), load_model(int8)(x)
    # The tiny model leaves near-ties, which INT8 rounding may flip (how often depends on the CPU's
    # integer kernels): agreement is required where float32's choice is clear.
    top2 = exact.topk(2).values
    clear = top2[:, 0] - top2[:, 1] > 1.0
    assert clear.float().mean() >= 0.25
    agreement = (quantized.argmax(1) == exact.argmax(1))[clear].float().mean().item()
    assert agreement >= 0.98


def test_evaluate_and_load_model_run_onnx_files(exported, tiny_data, tmp_path):
    report = json.loads(run_main("evaluate.py", "--model", *exported, "--data-dir", tiny_data,
                                 "--out-dir", tmp_path, "--no-download", "--json").stdout)
    assert [model["parameters"] for model in report["models"]] == [61_706, 61_706]
    blank = tmp_path / "blank.png"
    Image.fromarray(np.full((40, 40), 255, np.uint8)).save(blank)
    seven = PROJECT_DIR / "examples" / "seven.png"
    result = run_main("load_model.py", "--model", exported[1], "--top-k", "2", seven, blank,
                      check=False)
    assert result.stdout.startswith(f"{seven}: ") and result.stdout.count("%") == 2
    assert "blank.png: error: no digit found" in result.stderr and result.returncode == 1


def test_a_missing_runtime_is_a_clear_error(exported, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    with pytest.raises(UserError, match="needs the onnxruntime package: "
                                        "pip install -r requirements-deploy.txt"):
        load_model(exported[0])


def test_a_bad_format_name_is_refused_by_argparse(tiny_model, tmp_path):
    result = run_main("save_model.py", tiny_model, "--format", "tflite", "--out", tmp_path / "m",
                      check=False)
    assert result.returncode == 2 and "invalid choice: 'tflite'" in result.stderr


def test_damaged_and_foreign_onnx_files_are_refused(exported, tmp_path):
    damaged = tmp_path / "damaged.onnx"
    damaged.write_bytes(exported[0].read_bytes()[:1000])
    with pytest.raises(ModelFileError, match="damaged or not an ONNX model"):
        load_model(damaged)
    proto = onnx.load(str(exported[0]))
    del proto.metadata_props[:]
    foreign = tmp_path / "foreign.onnx"
    onnx.save(proto, str(foreign))
    with pytest.raises(ModelFileError, match="not one of this project"):
        load_model(foreign)


def test_an_onnx_file_cannot_be_turned_back_into_a_pth(exported, tmp_path):
    result = run_main("save_model.py", exported[0], "--out", tmp_path / "m.pth", check=False)
    assert result.returncode == 1 and "is an ONNX file" in result.stderr


def test_a_detected_lenet_sure_of_no_digit_gives_finite_outputs_in_onnx_as_in_pytorch(tmp_path):
    """ONNX has no LogSigmoid: log(sigmoid(d)) was -inf for a clear non-digit, which the INT8
    export can't calibrate (its ranges became NaN)."""
    torch.manual_seed(0)
    detector = LeNet(1).eval()
    with torch.no_grad():
        detector.classifier[-1].bias.fill_(-200.0)  # no digit, whatever it is shown
    model = detected(LeNet().state_dict(), {"num_classes": 10}, detector)
    path = tmp_path / "sure.onnx"
    export_onnx(model_record(model, DETECTED, {"num_classes": 10}, "mnist", NORMALIZATION,
                             CLASSES, {}), path)
    images = torch.randn(4, 1, 28, 28)
    outputs = load_model(path)(images)
    assert torch.isfinite(outputs).all()
    assert torch.allclose(outputs, model(images), atol=1e-3)


@pytest.mark.slow
@needs_real_mnist
def test_on_real_mnist_onnx_matches_pytorch_and_int8_keeps_the_accuracy_and_digit_score(tmp_path):
    fp32, int8 = tmp_path / "mnist_model.onnx", tmp_path / "mnist_model.int8.onnx"
    run_main("save_model.py", PRETRAINED_MODEL_PATH, "--format", "onnx", "--out", fp32)
    run_main("save_model.py", PRETRAINED_MODEL_PATH, "--format", "onnx-int8", "--out", int8,
             "--data-dir", REAL_DATA_DIR)
    images, labels = load_dataset(REAL_DATA_DIR, train=False, download=False)
    x = normalize(images, **DATASETS["mnist"].normalization)
    original, onnx_model = load_model(PRETRAINED_MODEL_PATH), load_model(fp32)
    with torch.no_grad():
        assert (onnx_model(x) - original(x)).abs().max().item() <= 1e-4
    accuracy = {path: evaluate(load_model(path), x, labels).accuracy
                for path in (PRETRAINED_MODEL_PATH, fp32, int8)}
    assert accuracy[fp32] == accuracy[PRETRAINED_MODEL_PATH]
    assert abs(accuracy[int8] - accuracy[PRETRAINED_MODEL_PATH]) <= 0.0015
    # about a third
    assert int8.stat().st_size <= 0.35 * fp32.stat().st_size
    # the digit score survives both exports: a letter is still no digit, a digit still one
    letter = letter_image("A", HELD_OUT_FONTS[0])
    for path in (fp32, int8):
        assert not Predictor(path)(letter).is_digit
        assert Predictor(path)(PROJECT_DIR / "examples" / "seven.png").is_digit


def with_description(proto, text: str):
    """A copy of `proto` whose project metadata is `text`."""
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    for entry in copy.metadata_props:
        if entry.key == "mnist_pipeline":
            entry.value = text
    return copy


def described(proto, **changes) -> str:
    metadata = {entry.key: entry.value for entry in proto.metadata_props}
    description = json.loads(metadata["mnist_pipeline"])
    description.update(changes)
    return json.dumps({key: value for key, value in description.items() if value is not None})


@pytest.mark.parametrize("case, message", [
    ("not JSON", "metadata is not JSON"),
    ("a list", "metadata is a list, not a model description"),
    ("no classes", "lacks classes"),
    ("5 classes for 10 outputs", r"output must be logits \(N x 5"),
    ("normalization strings", "normalization.mean must be a finite number, not str"),
    ("parameters a string", "parameters must be a positive whole number"),
])
def test_onnx_metadata_with_wrong_fields_is_refused_naming_the_field(exported, tmp_path, case,
                                                                     message):
    proto = onnx.load(str(exported[0]))
    text = {"not JSON": "{classes: [0, 1", "a list": "[1, 2]",
            "no classes": described(proto, classes=None),
            "5 classes for 10 outputs": described(proto, classes=list("01234")),
            "normalization strings": described(proto, normalization={"mean": "a", "std": "b"}),
            "parameters a string": described(proto, parameters="many")}[case]
    path = tmp_path / "wrong.onnx"
    onnx.save(with_description(proto, text), str(path))
    with pytest.raises(ModelFileError, match=message) as error:
        load_model(path)
    assert "\n" not in str(error.value)


def test_an_onnx_graph_with_a_custom_operator_is_refused(exported, tmp_path):
    proto = onnx.load(str(exported[0]))
    output = proto.graph.output[0].name
    last = next(node for node in proto.graph.node if output in node.output)
    last.output[list(last.output).index(output)] = "before_backdoor"
    proto.graph.node.append(onnx.helper.make_node("Backdoor", ["before_backdoor"], [output],
                                                  domain="com.attacker"))
    proto.opset_import.append(onnx.helper.make_opsetid("com.attacker", 1))
    path = tmp_path / "custom.onnx"
    onnx.save(proto, str(path))
    with pytest.raises(ModelFileError, match="outside ONNX's standard set: com.attacker.Backdoor"):
        load_model(path)


@pytest.mark.slow
def test_the_fast_recipes_model_file_is_read_by_evaluate_load_model_and_onnx(tiny_data, tmp_path):
    out, exported = tmp_path / "fast.pth", tmp_path / "fast.onnx"
    recipe = PROJECT_DIR / "configs" / "fast.json"
    run_main("train.py", "--config", recipe, "--data-dir", tiny_data, "--out", out,
             *TINY_TRAINING)
    run_main("save_model.py", out, "--format", "onnx", "--out", exported)
    assert read_model_file(exported)["arch"] == read_model_file(out)["arch"] == "fastnet"
    images = torch.randn(7, 1, 28, 28)
    assert torch.allclose(load_model(exported)(images), load_model(out)(images), atol=1e-4)
    report = json.loads(run_main("evaluate.py", "--model", out, exported, "--data-dir", tiny_data,
                                 "--out-dir", tmp_path, "--no-download", "--json").stdout)
    assert [model["parameters"] for model in report["models"]] == [72_138, 72_138]
    seven = PROJECT_DIR / "examples" / "seven.png"
    assert run_main("load_model.py", "--model", exported, seven).stdout.count("%") == 1
