"""How well a digit model's score tells digits from non-digits (docs/nondigits.md).

    python tools/nondigits.py MODEL [MODEL ...] [--split val|bench] [--json out.json]

For each model and each raw score (digitscore.SCORES), the threshold is calibrated on the
validation digits (the highest that keeps digitscore.KEEP_DIGITS of them), as training does;
then, on `--split` (val: for choosing; bench: the held-out sets, reported only), the share of
each kind of non-digit refused (by the preprocessing, as blank or a speck, or by the score) and
of their MIXED set, and of MNIST's digits (validation, or test) and photographed digits
(photos.py) still read.
"""

import argparse
from pathlib import Path

import torch
from torch import Tensor

from lenetkit.cli import add_data_dir, make_parser, run_cli, writable_file
from lenetkit.digitscore import SCORES, calibrate, judge
from lenetkit.modelfile import build_from_record, read_model_file
from lenetkit.negatives import framed, negative_images
from lenetkit.outputs import write_json
from lenetkit.prediction import model_logits

import photos  # tools/, beside this file
from measurements import BLANK_PAGE_SEEDS, mnist_split

# Each kind's count in a split: letters cycle through the characters, then the split's fonts.
COUNTS = {"letters": 552, "scribbles": 500, "textures": 200, "fashion": 500}
BLANK_PAGES = 30  # of each photo condition
PHOTO_DIGITS = 100  # the first test digits, under each photo condition
# The mixed set: what a person may hand in instead of a digit, each image counted once.
MIXED = ("blank pages", "letters", "scribbles", "fashion")


def blank_pages(split: str) -> tuple[Tensor, int]:
    """Photos of pages with no digit (photos.py's paper and light): inputs and refusals."""
    offset = BLANK_PAGE_SEEDS["val" if split == "val" else "bench"]
    return framed(photos.blank_pages(BLANK_PAGES, offset))


def photographed_digits(data_dir: Path, split: str) -> tuple[Tensor, Tensor, int]:
    """Digits photographed under photos.CONDITIONS: validation digits for val, test for bench."""
    images, labels = mnist_split(data_dir, split)
    pictures, kept = [], []
    for condition in photos.CONDITIONS:
        for index in range(PHOTO_DIGITS):
            pictures.append(photos.photo(images[index].numpy(), condition, seed=index))
            kept.append(labels[index])
    inputs, refused = framed(pictures)
    return inputs, torch.stack(kept), refused  # labels of refused pictures are ignored below


def mnist_digits(data_dir: Path, split: str) -> tuple[Tensor, Tensor]:
    """MNIST's validation digits (for val) or test digits (for bench), in [0, 1]."""
    images, labels = mnist_split(data_dir, split)
    return images.float() / 255, labels


def refusals(record: dict, logits: Tensor) -> Tensor:
    judged = judge(record, logits)
    assert judged is not None, "the record holds a digit score"
    return judged[1]


def test_sets(data_dir: Path, split: str) -> dict[str, tuple[Tensor, int]]:
    """Each kind of non-digit of `split`: its inputs, and how many the preprocessing refused."""
    sets = {kind: framed(negative_images(kind, split, count, data_dir))
            for kind, count in COUNTS.items()}
    sets["blank pages"] = blank_pages(split)
    return sets


def measure(path: Path, sets: dict, digits: tuple, photographed: tuple, val_digits: Tensor,
            calibration: Tensor) -> list[dict]:
    """One row for each raw score, calibrated on `val_digits` and the `calibration` non-digits,
    and one for the file's own setting when it has one."""
    record = read_model_file(path)
    model = build_from_record(record)
    val_logits = model_logits(model, record, val_digits)
    settings = {name: calibrate(name, val_logits, model_logits(model, record, calibration))
                for name in SCORES}
    if "digit_score" in record:
        settings["file"] = record["digit_score"]
    logits = {kind: model_logits(model, record, inputs) for kind, (inputs, _) in sets.items()}
    digit_logits = model_logits(model, record, digits[0])
    photo_logits = model_logits(model, record, photographed[0])
    rows = []
    for name, setting in settings.items():
        scored = {**record, "digit_score": setting}
        row: dict = {"model": str(path), "score": name, **setting}
        counts = {kind: (refused + int(refusals(scored, logits[kind]).sum()), len(inputs) + refused)
                  for kind, (inputs, refused) in sets.items()}
        row |= {kind: no / count for kind, (no, count) in counts.items()}
        row["mixed"] = (sum(counts[kind][0] for kind in MIXED)
                        / sum(counts[kind][1] for kind in MIXED))
        read = ~refusals(scored, digit_logits)
        right = digit_logits.argmax(1) == digits[1]
        row["digits read"] = float(read.float().mean())
        row["accuracy"] = float(right.float().mean())
        row["right and read"] = float((right & read).float().mean())
        photo_count = len(photographed[0]) + photographed[2]
        row["photos read"] = int((~refusals(scored, photo_logits)).sum()) / photo_count
        rows.append(row)
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = make_parser(__doc__.splitlines()[0])
    parser.add_argument("models", type=Path, nargs="+", metavar="MODEL", help="model files")
    parser.add_argument("--split", choices=["val", "bench"], default="val",
                        help="val: to choose on; bench: the held-out sets, to report")
    add_data_dir(parser)
    parser.add_argument("--json", type=writable_file, help="also write the rows as JSON here")
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    sets = test_sets(args.data_dir, args.split)
    calibration = torch.cat([inputs for inputs, _ in
                             (sets if args.split == "val" else test_sets(args.data_dir, "val"))
                             .values()])
    digits = mnist_digits(args.data_dir, args.split)
    val_digits = digits[0] if args.split == "val" else mnist_digits(args.data_dir, "val")[0]
    photographed = photographed_digits(args.data_dir, args.split)
    rows = [row for path in args.models for row in
            measure(path, sets, digits, photographed, val_digits, calibration)]
    columns = [*sets, "mixed", "digits read", "accuracy", "photos read"]
    print(f"{'model':<28} {'score':<7} {'thresh':>8} " + " ".join(f"{c[:11]:>11}" for c in columns))
    for row in rows:
        print(f"{Path(row['model']).name[-28:]:<28} {row['score']:<7} {row['threshold']:8.4g} "
              + " ".join(f"{row[c]:11.2%}" for c in columns))
    if args.json:
        write_json(args.json, rows)


if __name__ == "__main__":
    run_cli(main)
