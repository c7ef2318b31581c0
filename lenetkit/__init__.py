"""lenetkit: train and use small image classifiers (MNIST digits, Fashion-MNIST, CIFAR-10).

    from lenetkit import predict
    print(predict("digit.png"))          # 7 (99.9%)

The API (`predict`, `Predictor`, `load_model`, `UserError`, ...) is imported on first use, so
that `import lenetkit.training` does not load the image preprocessing, nor this the networks.
"""

import importlib
from typing import TYPE_CHECKING

__version__ = "1.0.0"

_API = {"predict": "prediction", "Predictor": "prediction", "Prediction": "prediction",
        "Number": "prediction", "read_number": "prediction",
        "load_model": "prediction", "read_model_file": "modelfile",
        "ModelFileError": "modelfile", "ImageError": "preprocess", "UserError": "errors"}
__all__ = ["ImageError", "ModelFileError", "Number", "Prediction", "Predictor", "UserError",
           "__version__", "load_model", "predict", "read_model_file", "read_number"]

if TYPE_CHECKING:
    from lenetkit.errors import UserError
    from lenetkit.modelfile import ModelFileError, read_model_file
    from lenetkit.prediction import Number, Prediction, Predictor, load_model, predict, read_number
    from lenetkit.preprocess import ImageError


def __getattr__(name: str) -> object:
    if name not in _API:
        raise AttributeError(f"module 'lenetkit' has no attribute {name!r}")
    return getattr(importlib.import_module(f"lenetkit.{_API[name]}"), name)
