"""Train a model on MNIST, Fashion-MNIST or CIFAR-10, keeping the best weights by validation.

    python train.py [--epochs N] [--seed S] [--data-dir data] [--out mnist_model.pth]
    python train.py --config configs/convnet.json   # a recipe; flags given beside it win
    torchrun --nproc_per_node=N train.py ...       # the run on N processes

The library behind it: lenetkit.training (the loop) and lenetkit.config (the settings)."""

from lenetkit.commands import train as main  # the thread policy, then the script's main

if __name__ == "__main__":
    main()
