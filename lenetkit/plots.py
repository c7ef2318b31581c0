"""PNG figures: training curves, confusion matrix, misclassified digits
(matplotlib, no display needed)."""

from pathlib import Path
from types import ModuleType

import numpy as np
from torch import Tensor

from lenetkit.outputs import save_figure


def _pyplot() -> ModuleType:
    import matplotlib

    matplotlib.use("Agg")  # files only; chosen here so that importing this module changes nothing
    import matplotlib.pyplot as plt

    return plt


def plot_history(history: list[dict], path: Path) -> None:
    """Loss and accuracy per epoch, training against validation (when the run held some out)."""
    plt = _pyplot()
    epochs = [row["epoch"] for row in history]
    figure, (loss_axes, accuracy_axes) = plt.subplots(1, 2, figsize=(10, 4))
    for split in ("train", "val") if "val_loss" in history[0] else ("train",):
        loss_axes.plot(epochs, [row[f"{split}_loss"] for row in history], marker="o", label=split)
        accuracy_axes.plot(epochs, [100 * row[f"{split}_accuracy"] for row in history],
                           marker="o", label=split)
    loss_axes.set(xlabel="epoch", ylabel="cross-entropy", title="loss", yscale="log")
    accuracy_axes.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for axes in (loss_axes, accuracy_axes):
        axes.grid(alpha=0.3)
        axes.legend()
    figure.tight_layout()
    save_figure(figure, path)
    plt.close(figure)


def plot_confusion(confusion: Tensor, classes: list[str], path: Path) -> None:
    """The confusion matrix (rows: true class, columns: predicted), counts in each cell."""
    plt = _pyplot()
    counts = confusion.numpy()
    figure, axes = plt.subplots(figsize=(7, 6))
    # A log scale keeps the few errors visible beside the thousands on the diagonal.
    image = axes.imshow(np.log1p(counts), cmap="Blues")
    for (row, col), count in np.ndenumerate(counts):
        if count:
            axes.text(col, row, str(count), ha="center", va="center", fontsize=8,
                      color="white" if image.norm(np.log1p(count)) > 0.6 else "black")
    axes.set(xticks=range(len(classes)), yticks=range(len(classes)), xticklabels=classes,
             yticklabels=classes, xlabel="predicted", ylabel="true", title="confusion matrix")
    if max(map(len, classes)) > 2:  # names, not digits: slanted so that they don't overlap
        plt.setp(axes.get_xticklabels(), rotation=45, ha="right", rotation_mode="anchor")
    figure.tight_layout()
    save_figure(figure, path)
    plt.close(figure)


def plot_errors(images: Tensor, true: list[str], predicted: list[str], probability: list[float],
                path: Path, columns: int = 10) -> None:
    """A grid of misclassified uint8 images, gray (N, H, W) or colour (N, 3, H, W), each titled
    true -> predicted (probability)."""
    plt = _pyplot()
    rows = max(1, -(-len(images) // columns))
    figure, grid = plt.subplots(rows, columns, figsize=(columns * 1.2, rows * 1.45), squeeze=False)
    for index, axes in enumerate(grid.flat):
        axes.axis("off")
        if index < len(images):
            image = images[index]
            if image.dim() == 3:  # colour, channels first: as it is
                axes.imshow(image.permute(1, 2, 0).numpy())
            else:  # MNIST's white ink on black, shown as ink on paper
                axes.imshow(image.numpy(), cmap="gray_r")
            axes.set_title(f"{true[index]}→{predicted[index]} {probability[index]:.0%}",
                           fontsize=8)
    figure.suptitle("misclassified: true → predicted (probability)", fontsize=10)
    figure.tight_layout()
    save_figure(figure, path)
    plt.close(figure)


def plot_sweep(rows: list[dict], path: Path) -> None:
    """Validation accuracy (mean over seeds) against learning rate: one line per batch size and
    epoch count."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(6, 4))
    for batch_size, epochs in sorted({(row["batch_size"], row["epochs"]) for row in rows}):
        line = sorted((row["lr"], 100 * row["val_accuracy"]) for row in rows
                      if (row["batch_size"], row["epochs"]) == (batch_size, epochs))
        axes.plot(*zip(*line), marker="o", label=f"batch {batch_size}, {epochs} epochs")
    rates = sorted({row["lr"] for row in rows})
    axes.set(xscale="log", xlabel="peak learning rate", ylabel="validation accuracy (%)",
             title="validation accuracy (mean over seeds)")
    axes.set_xticks(rates, [f"{rate:g}" for rate in rates])
    axes.minorticks_off()
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    save_figure(figure, path)
    plt.close(figure)
