"""Search learning rate, epochs and batch size on the validation split;
write the winner as a recipe.

    python tune.py --lr 0.005 0.01 0.02 0.04 --batch-size 128 256 --epochs 8 --seed 0 1
    python tune.py --arch convnet --augment --lr 0.002 0.004 --epochs 15 --out-dir runs/tune/convnet

Every combination of the three lists is trained once per seed by train.py, with any other train.py
flag given here held fixed; each run scores its best epoch's validation accuracy and the mean over
seeds ranks the combinations. The test set is never read. Writes into --out-dir: every run's files,
results.json (all combinations), lr.png (validation accuracy against learning rate) and best.json,
the winning settings: `python train.py --config OUT_DIR/best.json` trains that recipe. A run whose
metrics are already in --out-dir with the same settings is not trained again, so an interrupted
sweep goes on where it stopped.
"""

import argparse
import itertools
import json
import statistics
from dataclasses import asdict, replace
from pathlib import Path

from lenetkit.cli import (
    epoch_count,
    make_parser,
    positive_float,
    positive_int,
    seed,
    writable_folder,
)
from lenetkit.config import SETTINGS, TrainConfig, output_paths
from lenetkit.config import parse_args as training_args
from lenetkit.environment import PROJECT_DIR
from lenetkit.errors import UserError
from lenetkit.outputs import check_output_file, write_json
from lenetkit.plots import plot_sweep
from lenetkit.threads import use_threads
from lenetkit.training import train


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, TrainConfig,
                                                      argparse.Namespace]:
    """tune.py's own arguments, and the settings and options of train.py's flags given here."""
    parser = make_parser(__doc__.split("\n\n")[0], epilog="Other flags go to train.py.")
    parser.add_argument("--lr", type=positive_float, nargs="+", default=[0.005, 0.01, 0.02, 0.04],
                        help="peak learning rates to try")
    parser.add_argument("--batch-size", type=positive_int, nargs="+", default=[128, 256],
                        help="batch sizes to try")
    parser.add_argument("--epochs", type=epoch_count, nargs="+", default=[8],
                        help="epoch counts to try")
    parser.add_argument("--seed", type=seed, nargs="+", default=[0, 1], dest="seeds",
                        metavar="SEED",
                        help="seeds each combination runs with")
    parser.add_argument("--out-dir", type=writable_folder, default=PROJECT_DIR / "runs" / "tune",
                        help="folder for the runs, results.json, lr.png and best.json")
    args, fixed = parser.parse_known_args(argv)
    for name in ("lr", "batch_size", "epochs", "seeds"):  # a value given twice runs once
        setattr(args, name, list(dict.fromkeys(getattr(args, name))))
    for flag in ("--out", "--resume", "--dry-run"):
        if any(token == flag or token.startswith(flag + "=") for token in fixed):
            parser.error(f"{flag} is not for a sweep: "
                         "tune.py trains each run in full into --out-dir")
    # train.py's flags, checked before any work: the settings every run of the sweep shares.
    config, options = training_args(fixed + ["--out", str(args.out_dir / "check.pth")])
    if config.val_size == 0:
        parser.error("a validation size of 0 holds nothing out, and tune.py scores by "
                     "validation accuracy")
    return args, config, options


def run_once(config: TrainConfig, options: argparse.Namespace, out_dir: Path) -> dict:
    """The metrics of one training run, read back from its folder when an earlier sweep already
    made it."""
    out = (out_dir / f"lr{config.lr:g}-batch{config.batch_size}-epochs{config.epochs}"
           / f"seed{config.seed}" / "model.pth")
    metrics = finished_run(output_paths(out)["metrics"])
    if metrics is not None and metrics["settings"] == asdict(config):
        print(f"{out.parent}: done before, val acc {metrics['val_accuracy']:.2%}")
        return metrics
    print(f"--- {out.parent}")
    options = argparse.Namespace(**{**vars(options), "out": check_output_file(out)})
    return train(config, options, report_test=False)


def finished_run(metrics_file: Path) -> dict | None:
    """The metrics an earlier run left in `metrics_file`, if there is one; a damaged file is an
    error that says what to do, never a traceback."""
    if not metrics_file.exists():
        return None
    try:
        metrics = json.loads(metrics_file.read_text())
        number = (int, float)
        fields: dict[str, type | tuple[type, ...]] = {
            "settings": dict, "val_accuracy": number, "best_epoch": int, "train_seconds": number}
        wrong = [name for name, kind in fields.items() if not isinstance(metrics.get(name), kind)]
    except (OSError, ValueError, AttributeError) as error:  # not JSON, not UTF-8, not a JSON object
        wrong = [f"{type(error).__name__}: {error}"]
    if wrong:
        raise UserError(f"{metrics_file} is damaged (bad or missing: {', '.join(wrong)}); "
                        "delete it and tune.py trains that run again")
    return metrics


def sweep(args: argparse.Namespace, config: TrainConfig,
          options: argparse.Namespace) -> list[dict]:
    """One row per combination, best first: its settings, the mean and spread of validation
    accuracy over seeds."""
    rows = []
    for lr, batch_size, epochs in itertools.product(args.lr, args.batch_size, args.epochs):
        runs = [run_once(replace(config, lr=lr, batch_size=batch_size, epochs=epochs, seed=seed),
                         options, args.out_dir) for seed in args.seeds]
        accuracies = [run["val_accuracy"] for run in runs]
        settings = {name: value for name, value in runs[0]["settings"].items() if name != "seed"}
        rows.append({**settings, "val_accuracy": statistics.mean(accuracies),
                     "val_std": statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0,
                     "per_seed": accuracies, "best_epochs": [run["best_epoch"] for run in runs],
                     "train_seconds": statistics.mean(run["train_seconds"] for run in runs)})
    return sorted(rows, key=lambda row: -row["val_accuracy"])


def format_table(rows: list[dict]) -> str:
    lines = ["rank  peak lr  batch  epochs  validation (mean ± std)  "
             "per seed               best epochs  seconds"]
    for rank, row in enumerate(rows, 1):
        per_seed = " ".join(f"{accuracy:.2%}" for accuracy in row["per_seed"])
        lines.append(f"{rank:4d}  {row['lr']:7g}  {row['batch_size']:5d}  {row['epochs']:6d}  "
                     f"{row['val_accuracy']:7.2%} ± {row['val_std']:.2%}{'':9}  {per_seed:21}  "
                     f"{' '.join(map(str, row['best_epochs'])):11}  {row['train_seconds']:7.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args, config, options = parse_args(argv)
    use_threads(options.threads)
    rows = sweep(args, config, options)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    write_json(args.out_dir / "results.json", {"seeds": args.seeds, "rows": rows})
    plot_sweep(rows, args.out_dir / "lr.png")
    recipe = {name: rows[0][name] for name in SETTINGS if name != "seed"}
    write_json(args.out_dir / "best.json", recipe)
    print(format_table(rows))
    print(f"wrote {args.out_dir / 'results.json'}, {args.out_dir / 'lr.png'} and "
          f"{args.out_dir / 'best.json'} "
          f"(train it: python train.py --config {args.out_dir / 'best.json'})")
