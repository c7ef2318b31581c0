"""model.py: the LeNet and the registry that model files name."""

import pytest
import torch

from lenetkit.model import ARCHITECTURES, DetectedLeNet, LeNet, build_model, count_parameters


def test_lenet_maps_a_batch_of_28x28_images_to_10_logits():
    logits = LeNet()(torch.randn(7, 1, 28, 28))
    assert logits.shape == (7, 10)


def test_lenet_has_the_61706_parameters_of_lenet5():
    assert count_parameters(LeNet()) == 61_706


def test_lenet_layers_are_two_convolutions_with_average_pooling_then_three_linear_layers():
    layers = [type(layer).__name__ for layer in LeNet().modules() if not list(layer.children())]
    assert layers == ["Conv2d", "ReLU", "AvgPool2d", "Conv2d", "ReLU", "AvgPool2d",
                      "Flatten", "Linear", "ReLU", "Linear", "ReLU", "Linear"]


def test_the_number_of_classes_is_a_constructor_argument():
    assert LeNet(num_classes=3)(torch.randn(2, 1, 28, 28)).shape == (2, 3)


def test_build_model_rebuilds_a_registered_architecture_from_its_name_and_arguments():
    assert "lenet" in ARCHITECTURES
    model = build_model("lenet", num_classes=10)
    assert isinstance(model, LeNet)


def test_a_detected_lenet_gives_its_readers_probabilities_and_its_chance_of_a_digit():
    torch.manual_seed(0)
    model, images = DetectedLeNet(), torch.randn(5, 1, 28, 28)
    outputs = model(images)
    assert outputs.shape == (5, 10)
    torch.testing.assert_close(torch.softmax(outputs, 1), torch.softmax(model.reader(images), 1))
    torch.testing.assert_close(torch.logsumexp(outputs, 1),
                               torch.sigmoid(model.detector(images)).log().squeeze(1))


def test_a_scaled_lenet_has_that_many_times_the_channels_and_units_in_every_layer():
    widths = lambda model: [layer.weight.shape[0] for layer in model.modules()  # noqa: E731
                            if isinstance(layer, (torch.nn.Conv2d, torch.nn.Linear))]
    assert widths(LeNet(num_classes=1)) == [6, 16, 120, 84, 1]
    assert widths(LeNet(num_classes=1, scale=2)) == [12, 32, 240, 168, 1]
    assert LeNet(scale=3)(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_a_detected_lenets_detector_can_be_wider_than_its_reader():
    model = DetectedLeNet(detector_scale=2)
    assert count_parameters(model.reader) == 61_706
    assert count_parameters(model.detector) == count_parameters(LeNet(1, scale=2))
    assert model(torch.randn(3, 1, 28, 28)).shape == (3, 10)


def test_build_model_rejects_an_unknown_architecture_by_name():
    with pytest.raises(ValueError, match="unknown architecture 'resnet9000'"):
        build_model("resnet9000")


def test_the_stronger_convnet_maps_images_to_logits_with_140458_parameters():
    model = build_model("convnet", num_classes=10)
    assert count_parameters(model) == 140_458
    assert model(torch.randn(3, 1, 28, 28)).shape == (3, 10)
    assert count_parameters(build_model("convnet", num_classes=10, width=16)) < 140_458 / 3


def test_the_resnet_maps_images_to_logits_through_three_residual_stages():
    model = build_model("resnet", num_classes=10)
    assert count_parameters(model) == 308_074
    assert model(torch.randn(3, 1, 28, 28)).shape == (3, 10)
    assert model.features(torch.randn(1, 1, 28, 28)).shape == (1, 128)  # 4 x width channels, pooled
    assert count_parameters(build_model("resnet", num_classes=10, width=16)) < 308_074 / 3


def test_the_widenet_pools_inside_each_stage_down_to_3x3():
    model = build_model("widenet", num_classes=10)
    assert count_parameters(model) == 1_165_930
    assert model(torch.randn(3, 1, 28, 28)).shape == (3, 10)
    # 4 x width channels
    assert model.features[:-2](torch.randn(1, 1, 28, 28)).shape == (1, 256, 3, 3)
    assert count_parameters(build_model("widenet", num_classes=10, width=16)) < 1_165_930 / 10


def test_the_two_convolution_net_of_the_probe_has_108874_parameters():
    model = build_model("twoconv", num_classes=10)
    assert count_parameters(model) == 108_874
    assert model(torch.randn(3, 1, 28, 28)).shape == (3, 10)
    assert model.features(torch.randn(1, 1, 28, 28)).shape == (1, 32 * 5 * 5)  # 2 width x 5 x 5
    layers = [type(layer).__name__ for layer in model.modules() if not list(layer.children())]
    assert layers == ["Conv2d", "MaxPool2d", "ReLU", "Conv2d", "MaxPool2d", "ReLU", "Flatten",
                      "Linear", "ReLU", "Linear"]


def test_pooling_before_the_relu_gives_what_the_usual_order_gives():
    torch.manual_seed(0)
    model, images = build_model("twoconv"), torch.randn(4, 1, 28, 28)
    conv1, _, _, conv2, _, _, flatten = model.features
    pool, relu = torch.nn.functional.max_pool2d, torch.relu
    usual = flatten(pool(relu(conv2(pool(relu(conv1(images)), 2))), 2))
    assert torch.allclose(model.features(images), usual)


def test_the_fastnet_has_a_stride_2_stem_and_a_batch_normed_hidden_layer():
    model = build_model("fastnet", num_classes=10)
    assert count_parameters(model) == 72_138
    assert model(torch.randn(3, 1, 28, 28)).shape == (3, 10)
    stem = model.features[0]
    assert stem(torch.randn(1, 1, 28, 28)).shape == (1, 16, 12, 12)  # stride 2
    assert model.features(torch.randn(1, 1, 28, 28)).shape == (1, 32 * 4 * 4)
    norms = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)
    assert [type(layer) for layer in model.modules() if isinstance(layer, norms)] == [
        torch.nn.BatchNorm1d]
    assert count_parameters(build_model("fastnet", num_classes=10, width=24)) > 72_138
    assert model.eval()(torch.randn(1, 1, 28, 28)).shape == (1, 10)  # one image: running statistics


def test_whitening_fixes_the_cifarnet_stem_to_decorrelate_the_images_2x2_patches():
    noise = torch.randn(64, 3, 8, 16, generator=torch.Generator().manual_seed(0))
    smooth = torch.nn.functional.interpolate(noise, size=32, mode="bilinear")  # rows smoother
    images = smooth + 0.5 * smooth.mean(1, keepdim=True)  # neighbours and colours correlated
    model = build_model("cifarnet", num_classes=10, width=8)
    model.whiten(images, eps=1e-9)
    stem = model.features[0]
    assert torch.equal(stem.weight[12:], -stem.weight[:12])  # each direction and its opposite
    outputs = torch.nn.functional.conv2d(images, stem.weight[:12]).permute(0, 2, 3, 1)
    outputs = outputs.reshape(-1, 12)
    covariance = outputs.T @ outputs / len(outputs)
    assert torch.allclose(covariance, torch.eye(12), atol=1e-3)
    assert not stem.weight.requires_grad and stem.bias.requires_grad  # fixed; its bias learns


def test_the_cifarnets_3x3_convolutions_start_as_identities_and_its_logits_are_scaled():
    model = build_model("cifarnet", num_classes=10, width=8, logit_scale=0.5)
    convolutions = [m for m in model.features if isinstance(m, torch.nn.Conv2d)
                    and m.kernel_size == (3, 3)]
    assert len(convolutions) == 6
    for conv in convolutions:
        passed = min(conv.in_channels, conv.out_channels)  # the first filters copy their channel
        identity = torch.zeros(passed, conv.in_channels, 3, 3)
        identity[range(passed), range(passed), 1, 1] = 1
        assert torch.equal(conv.weight[:passed], identity)
    images = torch.randn(2, 3, 32, 32)
    model.eval()
    plain = model.classifier(model.features(images))
    assert torch.allclose(model(images), 0.5 * plain)
