"""Report saved models' accuracy on the test set (or the validation split), with per-class
scores, a confusion matrix and the most confident mistakes.

    python evaluate.py [--model mnist_model.pth ...] [--split test|val] [--tta] [--json]

The library behind it: lenetkit.evaluation."""

from lenetkit.commands import evaluate as main  # the thread policy, then the script's main

if __name__ == "__main__":
    main()
