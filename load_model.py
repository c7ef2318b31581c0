"""Read model files and predict the digit (or garment, or object) in image files.

    python load_model.py [--model mnist_model.pth] [--top-k K] [--out-dir DIR] IMAGE...

From other programs, with this folder on sys.path (or the package installed, as `lenetkit`):

    from load_model import predict
    prediction = predict("digit.jpg")  # or a PIL image, a numpy array, a prepared tensor, a list
    print(prediction.name, prediction.probability, prediction.top)
    print(read_number("year.jpg").text)  # several digits side by side, left to right: "2026"

The library behind it: lenetkit.prediction; this script re-exports its API.
"""

from typing import TYPE_CHECKING

import lenetkit
from lenetkit.commands import predict as main  # the thread policy, then the script's main

__all__ = ["ImageError", "ModelFileError", "Number", "Prediction", "Predictor", "UserError",
           "load_model", "predict", "read_model_file", "read_number"]

if TYPE_CHECKING:
    from lenetkit import (
        ImageError,
        ModelFileError,
        Number,
        Prediction,
        Predictor,
        UserError,
        load_model,
        predict,
        read_model_file,
        read_number,
    )


def __getattr__(name: str) -> object:
    # The API is the package's, imported on first use: running this script sets the thread
    # policy before anything imports torch.
    if name not in __all__:
        raise AttributeError(f"module 'load_model' has no attribute {name!r}")
    return getattr(lenetkit, name)


if __name__ == "__main__":
    main()
