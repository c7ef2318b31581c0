"""examples_mnist.py: the PyTorch examples' MNIST recipe, rebuilt to be timed beside ours."""

import torch

from lenetkit.model import count_parameters

from examples_mnist import ExampleNet, train_examples_recipe


def test_the_examples_network_has_main_pys_layers_and_1199882_parameters():
    model = ExampleNet()
    assert count_parameters(model) == 1_199_882
    output = model.eval()(torch.randn(3, 1, 28, 28))
    assert output.shape == (3, 10)
    assert torch.allclose(output.exp().sum(1), torch.ones(3))  # log-probabilities, as main.py's


def test_the_recipe_trains_epoch_by_epoch_reporting_test_accuracy_and_cumulative_seconds(tiny_data):
    seen = []
    rows = train_examples_recipe(tiny_data, epochs=2, batch_size=50, on_epoch=seen.append)
    assert seen == rows and [row["epoch"] for row in rows] == [1, 2]
    assert 0 < rows[0]["train_seconds"] < rows[1]["train_seconds"]
    assert rows[-1]["test_accuracy"] > 0.5  # the tiny task learned (chance: 0.1)


def test_the_recipe_stops_after_the_first_epoch_that_reaches_stop_at(tiny_data):
    rows = train_examples_recipe(tiny_data, epochs=3, batch_size=50, stop_at=0.0)
    assert [row["epoch"] for row in rows] == [1]
