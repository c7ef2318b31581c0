"""Sweep learning rates, epochs and batch sizes over seeds on the validation split.

    python tune.py --lr 0.01 0.02 --epochs 8 16 --seed 0 1 [train.py's flags]

The library behind it: lenetkit.tuning."""

from lenetkit.commands import tune as main  # the thread policy, then the script's main

if __name__ == "__main__":
    main()
