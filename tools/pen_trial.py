"""Train the detector again beside the shipped model's reader, with fine-pen digits among its
training digits, and write the model file for `bench.py --photos --split val --model` to weigh
(docs/photos.md, "A fine pen"). It never writes the shipped model: the shipped detector is the
first command's file, chosen on validation and copied into place.

    python tools/pen_trial.py --out runs/shipped-detector.pth  # the recipe's detector settings
    python tools/pen_trial.py --share 0.1 --detector-scale 1 --out runs/pen-0.1.pth

On a random `--share` of each batch, digits and non-digits alike (so that the pen's width does
not tell them apart), the strokes are thinned to their middle lines and drawn again with a fine
pen (detector.with_fine_pen): a fine pen's digit as the preprocessing frames it.
`--detector-scale` widens the detector (its channels and units, model.LeNet's `scale`). The rest
is the shipped recipe's detector training (detector.py).
"""

import argparse
import time
from dataclasses import replace

import torch

from lenetkit.cli import (
    add_data_dir,
    epoch_count,
    fraction,
    int_in_range,
    make_parser,
    run_cli,
    writable_file,
)
from lenetkit.config import DETECTOR_SETTINGS, TrainConfig, read_recipe
from lenetkit.detector import recipe_detector
from lenetkit.environment import PRETRAINED_MODEL_PATH, PROJECT_DIR
from lenetkit.model import MAX_SCALE
from lenetkit.modelchoice import is_default_model
from lenetkit.modelfile import read_model_file, save_model
from lenetkit.outputs import run_metadata
from lenetkit.threads import use_threads
from lenetkit.training import (
    calibrated_score,
    load_negatives,
    load_splits,
    setup_training,
    with_detector,
)

RECIPE = PROJECT_DIR / "configs" / "robust.json"  # the shipped model's


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = make_parser(__doc__.split("\n\n")[0])
    add_data_dir(parser)
    parser.add_argument("--share", type=fraction, default=None,
                        help="share of each batch redrawn with a fine pen (0: none; default: "
                             "the recipe's detector_pen)")
    parser.add_argument("--detector-scale", default=None, metavar=f"1-{MAX_SCALE}",
                        type=lambda text: int_in_range(text, 1, MAX_SCALE),
                        help="the detector's channels, in times LeNet-5's (default: the recipe's)")
    parser.add_argument("--epochs", type=epoch_count, default=None,
                        help="detector epochs (default: the recipe's)")
    parser.add_argument("--out", type=writable_file, required=True, help="model file to write")
    args = parser.parse_args(argv)
    if is_default_model(args.out):
        parser.error("argument --out: a trial is weighed, not used: give it a name of its own")
    return args


def main() -> None:
    args = parse_args()
    use_threads(None)
    recipe = TrainConfig(**read_recipe(RECIPE))
    config = replace(recipe, detector_pen=recipe.detector_pen if args.share is None else args.share,
                     detector_scale=args.detector_scale or recipe.detector_scale,
                     detector_epochs=args.epochs or recipe.detector_epochs)
    options = argparse.Namespace(data_dir=args.data_dir, download=False, dry_run=False,
                                 channels_last=True)
    device = torch.device("cpu")
    x_train, _, x_val, _ = load_splits(config, options, device)
    training = setup_training(config, 1, device, images=x_train)
    negatives = load_negatives(config, options, device)
    assert training.distort is not None, "the shipped recipe augments"
    shipped = read_model_file(PRETRAINED_MODEL_PATH)
    reader = {name.removeprefix("reader."): weights
              for name, weights in shipped["state_dict"].items() if name.startswith("reader.")}
    started = time.perf_counter()
    detector = recipe_detector(x_train, negatives, config, training.generator, training.distort)
    seconds = time.perf_counter() - started
    print(f"detector: {seconds:.1f}s")
    # The reader's run as it was; the detector's own settings, time and command beside it.
    run = {name: getattr(config, name) for name in ("detector_epochs", *DETECTOR_SETTINGS)}
    run |= {"detector_seconds": seconds, "detector_run": run_metadata()}
    record = with_detector({**shipped, "metadata": shipped["metadata"] | run}, reader, detector,
                           config.detector_scale)
    record["digit_score"] = calibrated_score(record, x_val, args.data_dir, device)
    save_model(record, args.out)
    print(f"digit score: {record['digit_score']}; written to {args.out}")


if __name__ == "__main__":
    run_cli(main)
