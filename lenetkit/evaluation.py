"""Report how saved models do on the 10,000 test images of their dataset
(or on the validation split).

    python evaluate.py [--model mnist_model.pth ...] [--data-dir data] [--tta] [--split val]
                       [--writer-shift] [--json]

Prints loss, accuracy, errors, per-class precision/recall/F1 and the confusion
matrix, and writes two PNGs beside each model: the confusion matrix and the
misclassified images. Given several models, it also reports their accuracy's
mean and standard deviation, and their ensemble (the mean of their probabilities).
With --writer-shift, a digit model's accuracy on the writer-shift benchmark too
(writershift.py: thicker, thinner and slanted strokes, low-resolution scans, a wobbly hand).

`evaluate()`, the one scoring of a model on normalized images (with test-time augmentation if
asked), lives here: train.py validates with it and bench.py measures with it.
"""

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lenetkit.cli import MODEL_DEFAULT, add_data_dir, add_device, make_parser, non_negative_int
from lenetkit.datasets import (
    DATASETS,
    DEFAULT_VAL_SIZE,
    PerChannel,
    load_dataset,
    normalize,
    split_indices,
    standardize,
)
from lenetkit.environment import PACKAGE_DIR, PROJECT_DIR, default_model_path, pick_device
from lenetkit.errors import UserError
from lenetkit.model import Classifier, count_parameters
from lenetkit.modelfile import build_from_record, read_model_file
from lenetkit.outputs import check_output_file
from lenetkit.plots import plot_confusion, plot_errors
from lenetkit.threads import use_threads
from lenetkit.writershift import KINDS, shifted


@dataclass
class Evaluation:
    loss: float  # mean cross-entropy
    accuracy: float  # fraction correct, 0..1
    probabilities: Tensor  # (N, classes), on the CPU
    views: int  # of each image, whose probabilities were averaged: 1 without TTA


@torch.no_grad()
def evaluate(model: Classifier, images: Tensor, labels: Tensor, batch_size: int = 1000,
             tta: bool = False, mirror: bool = False, amp: bool = False) -> Evaluation:
    """Loss, accuracy and class probabilities of `model` on normalized images; leaves the model's
    mode as it was. With `tta`, the probabilities are the mean over the image and its four
    one-pixel shifts, and with `mirror` the mirror images of those five too (`mirror` alone does
    nothing); with `amp`, the forward pass runs in bfloat16 autocast, as in training."""
    was_training = model.training
    model.eval()
    batches = []
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        views = tta_views(batch, mirror) if tta else [batch]
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=amp):
            logits = [model(view) for view in views]
        per_view = torch.stack([view_logits.float().log_softmax(1) for view_logits in logits])
        # The log of the mean probability over the views.
        batches.append(per_view.logsumexp(0) - math.log(len(views)))
    model.train(was_training)
    log_probabilities = torch.cat(batches)
    loss = F.nll_loss(log_probabilities, labels).item()
    accuracy = (log_probabilities.argmax(1) == labels).float().mean().item()
    return Evaluation(loss, accuracy, log_probabilities.exp().cpu(), views=len(views))


def tta_views(images: Tensor, mirror: bool = False, shift: int = 1) -> list[Tensor]:
    """The images and their copies moved by `shift` pixels left, right, up and down (edges
    repeated), and with `mirror` the mirror images of those five: the views that test-time
    augmentation averages over."""
    padded = F.pad(images, (shift,) * 4, mode="replicate")
    height, width = images.shape[-2:]
    offsets = [(shift, shift), (shift, 0), (shift, 2 * shift), (0, shift), (2 * shift, shift)]
    views = [padded[..., top:top + height, left:left + width] for top, left in offsets]
    return (views + [view.flip(-1) for view in views]) if mirror else views


def learned_mirrors(record: dict) -> bool:
    """Whether the model learned from mirror images (its recipe flipped them, as CIFAR-10's and
    Fashion-MNIST's WideNet and ConvNet recipes do), so that test-time augmentation shows it
    them too. The metadata comes from the file: anything but train.py's text means no."""
    augment = record["metadata"].get("augment")
    return isinstance(augment, str) and "flip" in augment.split(",")


def writer_shift(model: Classifier, images: Tensor, labels: Tensor, mean: PerChannel,
                 std: PerChannel, device: torch.device | str = "cpu") -> dict:
    """The accuracy of `model` on each kind of writer shift (writershift.py) of uint8 digits
    (N, H, W) with their `labels`, its inputs standardized by `mean` and `std` (a model file's
    normalization), and the mean over the kinds."""
    pixels = images.float().div(255).unsqueeze(1)
    accuracies = {}
    for kind in KINDS:  # one kind at a time: a copy of the images each
        inputs = standardize(shifted(pixels, kind), mean, std).to(device)
        accuracies[kind] = evaluate(model, inputs, labels.to(device)).accuracy
    return {"kinds": accuracies, "mean": sum(accuracies.values()) / len(accuracies)}


def format_shift(split: str, result: dict) -> str:
    """The writer-shift accuracies: their mean, then each kind's, on one line."""
    kinds = "  ".join(f"{kind} {accuracy:.2%}" for kind, accuracy in result["kinds"].items())
    return f"writer shift ({split}, a proxy made from MNIST): mean {result['mean']:.2%}  {kinds}"


def confusion_matrix(true: Tensor, predicted: Tensor, num_classes: int) -> Tensor:
    """Counts (num_classes, num_classes): rows are true classes, columns predicted ones."""
    return torch.bincount(true * num_classes + predicted,
                          minlength=num_classes ** 2).view(num_classes, num_classes)


def per_class_scores(confusion: Tensor) -> list[dict]:
    """Precision, recall, F1 and support of each class, from a confusion matrix."""
    hits = confusion.diag().double()
    precision = hits / confusion.sum(0).clamp(min=1)
    recall = hits / confusion.sum(1).clamp(min=1)
    f1 = 2 * precision * recall / (precision + recall).clamp(min=1e-12)
    return [{"precision": p, "recall": r, "f1": f, "support": s}
            for p, r, f, s in zip(precision.tolist(), recall.tolist(), f1.tolist(),
                                  confusion.sum(1).tolist())]


def summarize(probabilities: Tensor, labels: Tensor, classes: list[str]) -> dict:
    """Loss, accuracy, errors, per-class scores and confusion matrix of predicted probabilities."""
    loss = F.nll_loss(probabilities.clamp_min(1e-12).log(), labels).item()
    predicted = probabilities.argmax(1)
    confusion = confusion_matrix(labels, predicted, len(classes))
    return {"images": len(labels), "loss": loss,
            "accuracy": (predicted == labels).float().mean().item(),
            "errors": int((predicted != labels).sum()), "per_class": per_class_scores(confusion),
            "confusion": confusion.tolist()}


def draw_figures(report: dict, probabilities: Tensor, images: Tensor, labels: Tensor,
                 classes: list[str], stem: Path, errors_shown: int) -> None:
    """The confusion matrix and the most confident mistakes, as `stem`.confusion.png and
    `stem`.errors.png."""
    confidence, predicted = probabilities.max(1)
    wrong = (predicted != labels).nonzero().squeeze(1)
    wrong = wrong[confidence[wrong].argsort(descending=True)][:errors_shown]
    report["confusion_png"], report["errors_png"] = map(str, figure_paths(stem))
    plot_confusion(torch.tensor(report["confusion"]), classes, Path(report["confusion_png"]))
    plot_errors(images[wrong], [classes[i] for i in labels[wrong]],
                [classes[i] for i in predicted[wrong]], confidence[wrong].tolist(),
                Path(report["errors_png"]))


def figure_paths(stem: Path) -> tuple[Path, Path]:
    """The confusion matrix's and the mistakes' PNG of the figures named `stem`."""
    return stem.with_name(f"{stem.name}.confusion.png"), stem.with_name(f"{stem.name}.errors.png")


def figure_folder(model: Path) -> Path:
    """Where a model's figures go unless --out-dir says: beside it, except for the shipped model,
    whose folder holds the package's own files (and may not be writable)."""
    if model.resolve().is_relative_to(PACKAGE_DIR):
        return PROJECT_DIR / "runs" / model.parent.name
    return model.parent


def figure_stems(models: list[Path], out_dir: Path | None, variant: str) -> list[Path]:
    """One distinct stem for each model's figures (then the ensemble's, given several models), every
    figure's path checked before any work: beside each model, or in `out_dir`, named after the model
    file without its suffix; after the whole file name where two would share one (m.pth and m.onnx);
    numbered where even those agree (two model.pth from different folders into one `out_dir`)."""
    namings = (lambda index, path: path.stem, lambda index, path: path.name,
               lambda index, path: f"{path.stem}-{index}")
    folders = [out_dir or figure_folder(path) for path in models]
    ensemble = [folders[0] / f"ensemble{variant}"] if len(models) > 1 else []
    for naming in namings:
        stems = [folder / (naming(index, path) + variant)
                 for index, (folder, path) in enumerate(zip(folders, models))] + ensemble
        if len(set(stems)) == len(stems):
            break
    for figure in (path for stem in stems for path in figure_paths(stem)):
        check_output_file(figure)
    return stems


def format_report(name: str, report: dict, classes: list[str]) -> str:
    longest_name = max(map(len, classes))
    label_width = max(5, longest_name)  # "T-shirt/top" sets the column on Fashion-MNIST
    lines = [f"{name}: {report['images']:,} images  loss {report['loss']:.4f}  "
             f"accuracy {report['accuracy']:.2%}  errors {report['errors']}",
             "",
             f"{'class':>{label_width}}  precision   recall       f1  support"]
    for label, scores in zip(classes, report["per_class"]):
        lines.append(f"{label:>{label_width}}  {scores['precision']:9.2%}  "
                     f"{scores['recall']:7.2%}  {scores['f1']:7.2%}  {scores['support']:7d}")
    width = max(len(str(max(map(max, report["confusion"])))), longest_name) + 1
    lines += ["", "confusion matrix (rows: true, columns: predicted)",
              " " * (label_width + 1) + "".join(f"{label:>{width}}" for label in classes)]
    lines += [f"{label:>{label_width}} " + "".join(f"{count:>{width}}" for count in row)
              for label, row in zip(classes, report["confusion"])]
    lines += ["", f"wrote {report['confusion_png']} and {report['errors_png']}"]
    return "\n".join(lines)


def check_datasets(paths: list[Path], records: list[dict], asked: str | None) -> None:
    """All the models must have learned `asked` (by default, the first model's dataset)."""
    wanted = asked or records[0]["dataset"]
    for path, record in zip(paths, records):
        if record["dataset"] == wanted:
            continue
        if asked:
            raise UserError(f"{path} is a {record['dataset']} model; it can't be scored on {asked}")
        # the user named no dataset: the models disagree
        raise UserError(f"{paths[0]} is a {wanted} model and {path} a {record['dataset']} one: "
                        "models scored together must have learned the same dataset")


def load_split(data_dir: Path, split: str, models: dict[Path, dict],
               download: bool) -> tuple[Tensor, Tensor]:
    """The test images and labels of the models' dataset, or the validation images that every
    one of their training runs held out: the smallest of their splits, which the others contain
    (each split is the start of one fixed order)."""
    dataset = next(iter(models.values()))["dataset"]
    if split == "test":
        return load_dataset(data_dir, train=False, download=download, dataset=dataset)
    sizes = {path: record["metadata"].get("val_size", DEFAULT_VAL_SIZE)
             for path, record in models.items()}
    for path, size in sizes.items():
        if size == 0:
            raise UserError(f"{path} was trained on every training image (--val-size 0): "
                            "it has no validation split to score")
    images, labels = load_dataset(data_dir, train=True, download=download, dataset=dataset)
    _, val_indices = split_indices(len(images), min(sizes.values()))
    return images[val_indices], labels[val_indices]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = make_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, nargs="+",
                        help="model files (.pth, training checkpoints or .onnx); several are also "
                             f"scored as an ensemble {MODEL_DEFAULT}")
    parser.add_argument("--dataset", choices=sorted(DATASETS),
                        help="the dataset to score on (default: the one the models learned; "
                             "another is an error)")
    add_data_dir(parser)
    parser.add_argument("--download", action=argparse.BooleanOptionalAction, default=True,
                        help="fetch missing dataset files from the internet")
    parser.add_argument("--split", choices=["test", "val"], default="test",
                        help="the test set, or the validation split train.py held out "
                             "(to choose on, e.g. --tta)")
    parser.add_argument("--tta", action="store_true",
                        help="test-time augmentation: average each image's probabilities "
                             "with those of its four 1-pixel shifts and, for a model whose recipe "
                             "flipped its images (CIFAR-10's, say), the mirror images of all five")
    parser.add_argument("--out-dir", type=Path,
                        help="folder for the PNGs (default: each model file's folder; for the "
                             "shipped model, runs/pretrained/ in the project folder)")
    parser.add_argument("--errors-shown", type=non_negative_int, default=50,
                        help="most confident mistakes drawn in the grid")
    add_device(parser)
    parser.add_argument("--writer-shift", action="store_true",
                        help="also score digit models on the same images redrawn as other "
                             "writers and scanners would have them (writershift.py): the "
                             "accuracy of each kind of shift and their mean")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    args.model = args.model or [default_model_path()]
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    use_threads(args.threads)
    device = pick_device(args.device)
    # The figures of the test set (no TTA) are the model's own; others get their own names.
    variant = "".join(f".{name}" for name, used in (("val", args.split == "val"), ("tta", args.tta))
                      if used)
    stems = figure_stems(args.model, args.out_dir, variant)
    records = [read_model_file(path) for path in args.model]
    check_datasets(args.model, records, args.dataset)
    if args.writer_shift and records[0]["dataset"] != "mnist":
        raise UserError(f"--writer-shift redraws handwritten digits: {args.model[0]} is a "
                        f"{records[0]['dataset']} model")
    images, labels = load_split(args.data_dir, args.split, dict(zip(args.model, records)),
                                args.download)
    classes = records[0]["classes"]
    reports, all_probabilities = [], []
    for path, record, stem in zip(args.model, records, stems):
        model = build_from_record(record, device, path)
        scored = evaluate(model, normalize(images, **record["normalization"]).to(device),
                          labels.to(device), tta=args.tta, mirror=learned_mirrors(record))
        probabilities = scored.probabilities
        parameters = (count_parameters(model) if isinstance(model, nn.Module)
                      else record["parameters"])
        report = {"model": str(path), "arch": record["arch"], "parameters": parameters,
                  "views": scored.views, **summarize(probabilities, labels, classes)}
        if args.writer_shift:
            report["writer_shift"] = writer_shift(model, images, labels, device=device,
                                                  **record["normalization"])
        draw_figures(report, probabilities, images, labels, classes, stem, args.errors_shown)
        reports.append(report)
        all_probabilities.append(probabilities)
    result: dict[str, Any] = {"models": reports}
    if len(reports) > 1:
        accuracies = torch.tensor([report["accuracy"] for report in reports], dtype=torch.float64)
        result["accuracy_mean"], result["accuracy_std"] = (accuracies.mean().item(),
                                                           accuracies.std().item())
        ensemble = torch.stack(all_probabilities).mean(0)  # the mean of the models' probabilities
        result["ensemble"] = summarize(ensemble, labels, classes)
        draw_figures(result["ensemble"], ensemble, images, labels, classes, stems[-1],
                     args.errors_shown)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    for report in reports:
        print(f"model: {report['model']} ({report['arch']}, {report['parameters']:,} parameters)")
        tta = f" with TTA ({report['views']} views)" if args.tta else ""
        print(format_report(args.split + tta, report, classes) + "\n")
        if "writer_shift" in report:
            print(format_shift(args.split, report["writer_shift"]) + "\n")
    if len(reports) > 1:
        print(f"{len(reports)} models: accuracy {result['accuracy_mean']:.2%} mean, "
              f"{result['accuracy_std']:.2%} standard deviation")
        print(format_report(f"ensemble of {len(reports)} (mean probability)", result["ensemble"],
                            classes))
