"""Report how a saved model does on the 10,000 MNIST test images.

    python evaluate.py [--model mnist_model.pth] [--data-dir data] [--json]

Prints loss, accuracy, errors, per-class precision/recall/F1 and the confusion
matrix, and writes two PNGs beside the model: the confusion matrix and the
misclassified digits.
"""

import argparse
import json
from pathlib import Path

import torch
from torch import Tensor

from common import DEFAULT_DATA_DIR, DEFAULT_MODEL_PATH, evaluate, load_mnist, normalize, pick_device, run_cli
from load_model import build_from_record, read_model_file
from model import count_parameters
from plots import plot_confusion, plot_errors


def confusion_matrix(true: Tensor, predicted: Tensor, num_classes: int) -> Tensor:
    """Counts (num_classes, num_classes): rows are true classes, columns predicted ones."""
    return torch.bincount(true * num_classes + predicted, minlength=num_classes ** 2).view(num_classes, num_classes)


def per_class_scores(confusion: Tensor) -> list[dict]:
    """Precision, recall, F1 and support of each class, from a confusion matrix."""
    hits = confusion.diag().double()
    precision = hits / confusion.sum(0).clamp(min=1)
    recall = hits / confusion.sum(1).clamp(min=1)
    f1 = 2 * precision * recall / (precision + recall).clamp(min=1e-12)
    return [{"precision": p, "recall": r, "f1": f, "support": s}
            for p, r, f, s in zip(precision.tolist(), recall.tolist(), f1.tolist(), confusion.sum(1).tolist())]


def format_report(report: dict, classes: list[str], confusion: Tensor) -> str:
    lines = [f"model: {report['model']} ({report['arch']}, {report['parameters']:,} parameters)",
             f"test: {report['images']:,} images  loss {report['loss']:.4f}  accuracy {report['accuracy']:.2%}  "
             f"errors {report['errors']}",
             "",
             "class  precision  recall      f1  support"]
    for name, scores in zip(classes, report["per_class"]):
        lines.append(f"{name:>5}  {scores['precision']:9.2%}  {scores['recall']:6.2%}  {scores['f1']:6.2%}  "
                     f"{scores['support']:7d}")
    width = max(len(str(int(confusion.max()))), max(map(len, classes))) + 1
    lines += ["", "confusion matrix (rows: true, columns: predicted)",
              " " * 6 + "".join(f"{name:>{width}}" for name in classes)]
    lines += [f"{name:>5} " + "".join(f"{count:>{width}}" for count in row)
              for name, row in zip(classes, confusion.tolist())]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL_PATH, help="model file (or training checkpoint)")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="dataset root holding MNIST/raw/")
    parser.add_argument("--download", action=argparse.BooleanOptionalAction, default=True,
                        help="fetch missing MNIST files from the internet")
    parser.add_argument("--out-dir", type=Path, help="folder for the PNGs (default: the model file's folder)")
    parser.add_argument("--errors-shown", type=int, default=50, help="most confident mistakes drawn in the grid")
    parser.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cuda, mps or cpu")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    device = pick_device(args.device)
    record = read_model_file(args.model)
    model = build_from_record(record, device)
    classes, normalization = record["classes"], record["normalization"]
    images, labels = load_mnist(args.data_dir, train=False, download=args.download)
    result = evaluate(model, normalize(images, **normalization).to(device), labels.to(device))

    confidence, predicted = result.probabilities.max(1)
    confusion = confusion_matrix(labels, predicted, len(classes))
    wrong = (predicted != labels).nonzero().squeeze(1)
    wrong = wrong[confidence[wrong].argsort(descending=True)][:args.errors_shown]
    out_dir = args.out_dir or args.model.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = {"confusion_png": out_dir / f"{args.model.stem}.confusion.png",
               "errors_png": out_dir / f"{args.model.stem}.errors.png"}
    plot_confusion(confusion, classes, figures["confusion_png"])
    plot_errors(images[wrong], [classes[i] for i in labels[wrong]], [classes[i] for i in predicted[wrong]],
                confidence[wrong].tolist(), figures["errors_png"])

    report = {"model": str(args.model), "arch": record["arch"], "parameters": count_parameters(model),
              "images": len(labels), "loss": result.loss, "accuracy": result.accuracy,
              "errors": int((predicted != labels).sum()),
              "per_class": per_class_scores(confusion), "confusion": confusion.tolist(),
              **{name: str(path) for name, path in figures.items()}}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_report(report, classes, confusion))
        print(f"\nwrote {figures['confusion_png']} and {figures['errors_png']}")


if __name__ == "__main__":
    run_cli(main)
