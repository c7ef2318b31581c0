"""Train the detector again beside the shipped model's reader, with fine-pen digits among its
training digits, and write the model file for `bench.py --photos --split val --model` to weigh
(docs/photos.md, "A fine pen"). Validation only: the shipped model is not touched.

    python tools/pen_trial.py --share 0.1 --out runs/pen-0.1.pth
    python tools/pen_trial.py --share 0.25 --detector-scale 2 --out runs/pen-s2-0.25.pth

On a random `--share` of each batch, digits and non-digits alike (so that the pen's width does
not tell them apart), the strokes are thinned to their middle lines and drawn again with a fine
pen (detector.with_fine_pen): a fine pen's digit as the preprocessing frames it.
`--detector-scale` widens the detector (its channels and units, model.LeNet's `scale`). The rest
is the shipped recipe's detector training (detector.py).
"""

import argparse
import time

import torch

from lenetkit.cli import add_data_dir, epoch_count, make_parser, run_cli, writable_file
from lenetkit.config import TrainConfig, read_recipe
from lenetkit.datasets import DATASETS, black
from lenetkit.detector import FRAMED_PEN, detected, detector_args, train_detector, with_fine_pen
from lenetkit.environment import PRETRAINED_MODEL_PATH, PROJECT_DIR
from lenetkit.model import DETECTED
from lenetkit.modelchoice import is_default_model
from lenetkit.modelfile import model_record, read_model_file, save_model
from lenetkit.threads import use_threads
from lenetkit.training import calibrated_score, load_negatives, load_splits, setup_training

RECIPE = PROJECT_DIR / "configs" / "robust.json"  # the shipped model's


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = make_parser(__doc__.split("\n\n")[0])
    add_data_dir(parser)
    parser.add_argument("--share", type=float, default=None,
                        help="share of each batch redrawn with a fine pen (0: none; default: "
                             "the recipe's detector_pen)")
    parser.add_argument("--detector-scale", type=int, choices=range(1, 5), default=None,
                        metavar="1-4", help="the detector's channels, in times LeNet-5's "
                                            "(default: the recipe's)")
    parser.add_argument("--epochs", type=epoch_count, default=None,
                        help="detector epochs (default: the recipe's)")
    parser.add_argument("--out", type=writable_file, required=True, help="model file to write")
    args = parser.parse_args(argv)
    if args.share is not None and not 0 <= args.share <= 1:
        parser.error(f"argument --share: {args.share} is not in [0, 1]")
    if is_default_model(args.out):
        parser.error("argument --out: a trial is weighed, not used: give it a name of its own")
    return args


def main() -> None:
    args = parse_args()
    use_threads(None)
    config = TrainConfig(**read_recipe(RECIPE))
    share = config.detector_pen if args.share is None else args.share
    scale = args.detector_scale or config.detector_scale
    options = argparse.Namespace(data_dir=args.data_dir, download=False, dry_run=False,
                                 channels_last=True)
    device = torch.device("cpu")
    x_train, _, x_val, _ = load_splits(config, options, device)
    training = setup_training(config, 1, device, images=x_train)
    negatives = load_negatives(config, options, device)
    background = float(black(DATASETS["mnist"]).flatten()[0])
    assert training.distort is not None, "the shipped recipe augments"
    distort = with_fine_pen(training.distort, share, training.generator, background)
    shipped = read_model_file(PRETRAINED_MODEL_PATH)
    reader = {name.removeprefix("reader."): weights
              for name, weights in shipped["state_dict"].items() if name.startswith("reader.")}
    started = time.perf_counter()
    epochs = args.epochs or config.detector_epochs
    detector = train_detector(x_train, negatives, epochs, config.batch_size, training.generator,
                              distort, scale=scale)
    print(f"detector: {time.perf_counter() - started:.1f}s")
    trial = {"pen_trial": {"share": share, "pen": FRAMED_PEN, "epochs": epochs,
                           "detector_scale": scale}}
    reader_args = {name: value for name, value in shipped["model_args"].items()
                   if name != "detector_scale"}
    model_args = {**reader_args, **detector_args(scale)}
    record = {**shipped, **model_record(detected(reader, model_args, detector),
                                        DETECTED, model_args, shipped["dataset"],
                                        shipped["normalization"], shipped["classes"],
                                        {**shipped["metadata"], **trial})}
    record["digit_score"] = calibrated_score(record, x_val, args.data_dir, device)
    save_model(record, args.out)
    print(f"digit score: {record['digit_score']}; written to {args.out}")


if __name__ == "__main__":
    run_cli(main)
