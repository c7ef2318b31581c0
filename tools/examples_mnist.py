"""The PyTorch examples' MNIST recipe (github.com/pytorch/examples, mnist/main.py), rebuilt as a
function, so that this project's recipes can be timed against it on the same machine.

    python examples_mnist.py [--epochs 14] [--data-dir data]

What it keeps from main.py: its network (two 3x3 convolutions of 32 and 64 channels, one max
pooling, dropout 0.25, a 9216 -> 128 -> 10 classifier with dropout 0.5, log-softmax), its data
path (torchvision's MNIST through a DataLoader, ToTensor + Normalize((0.1307,), (0.3081,)) per
image, batches of 64, test batches of 1,000), Adadelta at lr 1.0, StepLR(step_size=1, gamma=0.7)
stepped after each epoch's test, nll_loss, seed 1, and 14 epochs by default. What differs: the
test set is scored after each epoch as main.py does, but returned rather than printed, and
training is timed apart from it. main.py shuffles the training images only on an accelerator
(its CPU DataLoader keeps the file's order); here `shuffle` is on by default everywhere, as
DataLoader recipes usually are, and `shuffle=False` gives main.py's CPU behaviour.
"""

import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim.lr_scheduler import StepLR
from torch.utils.data import DataLoader, Subset
from torchvision import datasets, transforms

from lenetkit.cli import make_parser, positive_int, run_cli
from lenetkit.environment import DEFAULT_DATA_DIR

MEAN, STD = 0.1307, 0.3081  # main.py's constants (this project's MNIST statistics too)


class ExampleNet(nn.Module):
    """main.py's Net: 1,199,882 parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(9216, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.conv2(F.relu(self.conv1(x))))  # 64 x 24 x 24
        x = torch.flatten(self.dropout1(F.max_pool2d(x, 2)), 1)  # 64 x 12 x 12 = 9216
        x = self.dropout2(F.relu(self.fc1(x)))
        return F.log_softmax(self.fc2(x), dim=1)


def loaders(data_dir: Path, batch_size: int, test_batch_size: int, shuffle: bool,
            train_size: int | None = None) -> tuple[DataLoader, DataLoader]:
    """main.py's data path: torchvision's MNIST, each image through ToTensor and Normalize;
    with `train_size`, only the first that many training images (a quick check)."""
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((MEAN,), (STD,))])
    train_set = datasets.MNIST(str(data_dir), train=True, download=True, transform=transform)
    if train_size is not None:
        train_set = Subset(train_set, range(train_size))
    test_set = datasets.MNIST(str(data_dir), train=False, transform=transform)
    return (DataLoader(train_set, batch_size=batch_size, shuffle=shuffle),
            DataLoader(test_set, batch_size=test_batch_size))


def train_epoch(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer) -> None:
    """main.py's train(), without its logging."""
    model.train()
    for data, target in loader:
        optimizer.zero_grad()
        loss = F.nll_loss(model(data), target)
        loss.backward()
        optimizer.step()


@torch.no_grad()
def test(model: nn.Module, loader: DataLoader) -> tuple[float, float]:
    """main.py's test(): the mean loss and the accuracy on the test set."""
    model.eval()
    loss, correct = 0.0, 0
    for data, target in loader:
        output = model(data)
        loss += F.nll_loss(output, target, reduction="sum").item()
        correct += (output.argmax(1) == target).sum().item()
    return loss / len(loader.dataset), correct / len(loader.dataset)


def train_examples_recipe(data_dir: str | Path = DEFAULT_DATA_DIR, epochs: int = 14, seed: int = 1,
                          shuffle: bool = True, batch_size: int = 64, test_batch_size: int = 1000,
                          on_epoch: Callable[[dict], None] | None = None,
                          train_size: int | None = None,
                          stop_at: float | None = None) -> list[dict]:
    """Trains main.py's recipe for `epochs` epochs on the CPU; after each, scores the test set as
    main.py does and calls `on_epoch` with the row it appends: the epoch, the training seconds so
    far (the DataLoader's time included, the tests' not) and the test loss and accuracy. With
    `stop_at`, it stops after the first epoch whose test accuracy reaches it."""
    torch.manual_seed(seed)
    train_loader, test_loader = loaders(Path(data_dir), batch_size, test_batch_size, shuffle,
                                        train_size)
    model = ExampleNet()
    optimizer = torch.optim.Adadelta(model.parameters(), lr=1.0)
    scheduler = StepLR(optimizer, step_size=1, gamma=0.7)
    rows, seconds = [], 0.0
    for epoch in range(1, epochs + 1):
        started = time.perf_counter()
        train_epoch(model, train_loader, optimizer)
        seconds += time.perf_counter() - started
        test_loss, test_accuracy = test(model, test_loader)
        scheduler.step()
        rows.append({"epoch": epoch, "train_seconds": seconds, "test_loss": test_loss,
                     "test_accuracy": test_accuracy})
        if on_epoch is not None:
            on_epoch(rows[-1])
        if stop_at is not None and test_accuracy >= stop_at:
            break
    return rows


def main() -> None:
    parser = make_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=positive_int, default=14, help="main.py's default: 14")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR,
                        help="dataset root holding MNIST/raw/")
    parser.add_argument("--no-shuffle", action="store_true",
                        help="keep the file's order, as main.py does on the CPU")
    args = parser.parse_args()
    show = lambda row: print(f"epoch {row['epoch']:2d}  {row['train_seconds']:7.1f}s of training  "
                             f"test loss {row['test_loss']:.4f} acc {row['test_accuracy']:.2%}",
                             flush=True)
    train_examples_recipe(args.data_dir, args.epochs, shuffle=not args.no_shuffle, on_epoch=show)


if __name__ == "__main__":
    run_cli(main)
