"""Read model files and predict the digit (or garment, or object) in image files.

    python load_model.py [--model mnist_model.pth] [--top-k K] [--save-input DIR] IMAGE...

From other programs, with this folder on sys.path (or the package installed, as `lenetkit`):

    from load_model import predict
    prediction = predict("digit.jpg")  # or a PIL image, a numpy array, a prepared tensor, a list
    print(prediction.name, prediction.probability, prediction.top)

The library behind it: lenetkit.prediction; this script re-exports its API.
"""

from lenetkit.cli import run_cli
from lenetkit.errors import UserError
from lenetkit.modelfile import ModelFileError, read_model_file
from lenetkit.prediction import Prediction, Predictor, load_model, main, predict
from lenetkit.preprocess import ImageError

__all__ = ["ImageError", "ModelFileError", "Prediction", "Predictor", "UserError", "load_model",
           "predict", "read_model_file"]

if __name__ == "__main__":
    run_cli(main)
