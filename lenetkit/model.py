"""The networks. Nothing else lives here: data, training and files are elsewhere.

A model file names its architecture by a key of ARCHITECTURES and stores the
constructor's keyword arguments, so `build_model(name, **model_args)` rebuilds
it without any other configuration. Each network's `input_shape` is the (channels, height,
width) of the images it was designed for: a dataset's must match it.

`Classifier` is what scoring and predicting need of a model: one of these networks, or an ONNX
file run by ONNX Runtime (onnxfiles.OnnxModel).
"""

from typing import Any, Protocol

import torch
from torch import Tensor, nn
from torch.nn import functional as F

# The widths train.py accepts. A step's cost grows with the width's square, and a step's backward
# pass is one call that Ctrl-C can't interrupt: the widest ResNet a batch of 256 can take on a
# small CPU still stops within seconds of a Ctrl-C (the networks' own widths are 16 to 64).
MIN_WIDTH, MAX_WIDTH = 4, 128
# The widest LeNet a recipe may ask for, in times LeNet-5's (a detector's: three bought nothing
# over two on validation, docs/photos.md).
MAX_SCALE = 4


class LeNet(nn.Module):
    """LeNet-5 as in LeCun et al. (1998), with ReLU: 61,706 parameters for 10 classes; with
    `scale`, that many times its channels and units in every layer.

    Input (N, 1, 28, 28); the 2-pixel padding of the first convolution stands in
    for the original 32x32 input. Returns logits; apply softmax for probabilities.
    """

    input_shape = (1, 28, 28)

    def __init__(self, num_classes: int = 10, scale: int = 1) -> None:
        super().__init__()
        # The shapes noted below are scale 1's; each count of channels or units is scale times it.
        first, second, hidden, last = (scale * size for size in (6, 16, 120, 84))
        self.features = nn.Sequential(
            nn.Conv2d(1, first, kernel_size=5, padding=2),  # 6 x 28 x 28
            nn.ReLU(),
            nn.AvgPool2d(2),  # 6 x 14 x 14
            nn.Conv2d(first, second, kernel_size=5),  # 16 x 10 x 10
            nn.ReLU(),
            nn.AvgPool2d(2),  # 16 x 5 x 5
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(second * 5 * 5, hidden),
            nn.ReLU(),
            nn.Linear(hidden, last),
            nn.ReLU(),
            nn.Linear(last, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


DETECTED = "lenet+detector"  # DetectedLeNet's name in model files


class DetectedLeNet(nn.Module):
    """A LeNet that reads the digit and a second LeNet that judges whether there is one at all,
    as one network of 10 outputs: log p(class | a digit) + log p(a digit). Their softmax is the
    reader's own probabilities, since adding one number to every output changes none, and their
    logsumexp (the energy score, digitscore.py) is log p(a digit): everything that takes logits
    takes these. The reader trains first, then the detector (detector.py), a LeNet of
    `detector_scale` times the channels."""

    input_shape = LeNet.input_shape

    def __init__(self, num_classes: int = 10, detector_scale: int = 1) -> None:
        super().__init__()
        self.reader = LeNet(num_classes)
        self.detector = LeNet(1, detector_scale)  # one logit: a digit or not

    def forward(self, x: Tensor) -> Tensor:
        # log sigmoid(d), written out: ONNX has no LogSigmoid, and its Log(Sigmoid(d)) is log 0,
        # -inf, for a clear non-digit, which the INT8 export can't calibrate.
        d = self.detector(x)
        return F.log_softmax(self.reader(x), dim=1) + d.clamp(max=0) - torch.log1p(
            torch.exp(-d.abs()))


def conv_bn(inputs: int, outputs: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(inputs, outputs, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(outputs)]


class ConvNet(nn.Module):
    """A stronger all-convolutional network with batch norm: two 3x3 pairs at 28x28 and 14x14,
    one more convolution at 7x7, global average pooling, one linear layer (140,458 parameters at
    width 32)."""

    input_shape = (1, 28, 28)

    def __init__(self, num_classes: int = 10, width: int = 32) -> None:
        super().__init__()

        def block(inputs: int, outputs: int) -> list[nn.Module]:
            return [*conv_bn(inputs, outputs), nn.ReLU()]

        self.features = nn.Sequential(
            *block(1, width), *block(width, width), nn.MaxPool2d(2),  # width x 14 x 14
            *block(width, 2 * width), *block(2 * width, 2 * width),
            nn.MaxPool2d(2),  # 2 width x 7 x 7
            *block(2 * width, 4 * width), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.classifier = nn.Linear(4 * width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with batch norm, added to the input (He et al., 2016's basic block); a
    strided 1x1 convolution matches the input's shape when the block halves the size or changes
    the width."""

    def __init__(self, inputs: int, outputs: int, stride: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(*conv_bn(inputs, outputs, stride), nn.ReLU(),
                                  *conv_bn(outputs, outputs))
        self.shortcut = nn.Identity() if stride == 1 and inputs == outputs else nn.Sequential(
            nn.Conv2d(inputs, outputs, 1, stride=stride, bias=False), nn.BatchNorm2d(outputs))

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


class ResNet(nn.Module):
    """A small residual network: a 3x3 convolution, then one residual block at each of 28x28, 14x14
    and 7x7 (width, 2 width, 4 width channels), global average pooling, one linear layer
    (308,074 parameters and 37 million multiply-adds an image at width 32, between the ConvNet's
    22 million at width 32 and 49 million at width 48). A second design, not a better one: see
    the README."""

    input_shape = (1, 28, 28)

    def __init__(self, num_classes: int = 10, width: int = 32) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *conv_bn(1, width), nn.ReLU(),
            ResidualBlock(width, width),  # width x 28 x 28
            ResidualBlock(width, 2 * width, stride=2),  # 2 width x 14 x 14
            ResidualBlock(2 * width, 4 * width, stride=2),  # 4 width x 7 x 7
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.classifier = nn.Linear(4 * width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


class WideNet(nn.Module):
    """More parameters per multiply-add: each of three stages pools after its first convolution,
    so its second runs on a quarter of the pixels (the layout of Keller Jordan's airbench). A 3x3
    stem, stages of width, 2 width and 4 width channels (28 -> 14 -> 7 -> 3 pixels), global max
    pooling, one linear layer: 1,165,930 parameters and 63 million multiply-adds an image at
    width 64."""

    input_shape = (1, 28, 28)

    def __init__(self, num_classes: int = 10, width: int = 64) -> None:
        super().__init__()

        def stage(inputs: int, outputs: int) -> list[nn.Module]:
            # Max pooling commutes with ReLU: pooling first gives the same values on a quarter of
            # them.
            return [*conv_bn(inputs, outputs), nn.MaxPool2d(2), nn.ReLU(),
                    *conv_bn(outputs, outputs), nn.ReLU()]

        self.features = nn.Sequential(
            *conv_bn(1, width // 2), nn.ReLU(),  # width/2 x 28 x 28
            *stage(width // 2, width),  # width x 14 x 14
            *stage(width, 2 * width),  # 2 width x 7 x 7
            *stage(2 * width, 4 * width),  # 4 width x 3 x 3
            nn.AdaptiveMaxPool2d(1), nn.Flatten(),
        )
        self.classifier = nn.Linear(4 * width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


class TwoConvNet(nn.Module):
    """A plain two-convolution network: a 5x5 convolution of `width` channels and
    a 3x3 one of 2 width, each max-pooled (28 -> 24 -> 12 -> 10 -> 5 pixels), a hidden layer, one
    linear layer: 108,874 parameters and 0.80 million multiply-adds an image at width 16. Kept as
    the baseline the FastNet was measured against (docs/fast.md)."""

    input_shape = (1, 28, 28)

    def __init__(self, num_classes: int = 10, width: int = 16, hidden: int = 128) -> None:
        super().__init__()
        # Max pooling commutes with ReLU: pooling first applies the ReLU to a quarter of the values.
        self.features = nn.Sequential(
            nn.Conv2d(1, width, kernel_size=5), nn.MaxPool2d(2), nn.ReLU(),  # width x 12 x 12
            nn.Conv2d(width, 2 * width, kernel_size=3), nn.MaxPool2d(2),
            nn.ReLU(),  # 2 width x 5 x 5
            nn.Flatten(),
        )
        self.classifier = nn.Sequential(
            nn.Linear(2 * width * 5 * 5, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


class FastNet(nn.Module):
    """A network for one pass over MNIST on a small CPU (docs/fast.md): a 5x5 convolution of
    stride 2 (28 -> 12 pixels) max-pooled to 6x6, a 3x3 convolution of 2 width channels (4x4), a
    hidden layer with batch norm, one linear layer: 72,138 parameters and 0.20 million
    multiply-adds an image at width 16. A training batch of one image is refused by the batch
    norm."""

    input_shape = (1, 28, 28)

    def __init__(self, num_classes: int = 10, width: int = 16, hidden: int = 128) -> None:
        super().__init__()
        # Cheap where the TwoConvNet is dear: the stem computes a quarter of the 28x28 positions
        # (its stride leaves out the last row and column, blank in MNIST's centred digits) and
        # the second convolution runs on 6x6, not 12x12. Batch norm on the hidden layer wins back
        # in one pass what the coarser layers lose; on the convolutions it costs more time than
        # it adds accuracy.
        self.features = nn.Sequential(
            nn.Conv2d(1, width, kernel_size=5, stride=2), nn.MaxPool2d(2),
            nn.ReLU(),  # width x 6 x 6
            nn.Conv2d(width, 2 * width, kernel_size=3), nn.ReLU(),  # 2 width x 4 x 4
            nn.Flatten(),
        )
        self.classifier = nn.Sequential(
            nn.Linear(2 * width * 4 * 4, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(),
            nn.Linear(hidden, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


class CifarNet(nn.Module):
    """A network for 32x32 colour images in the layout of Keller Jordan's airbench94: a 2x2
    convolution stem of 24 channels (32 -> 31 pixels), then three blocks of width, 4 width and
    4 width channels, each a 3x3 convolution, max pooling (31 -> 15 -> 7 -> 3), batch norm and
    GELU, then a second 3x3 convolution at the pooled size; global max pooling and one linear
    layer whose logits are multiplied by `logit_scale`: 1,972,792 parameters at width 64
    (airbench94's widths), 498,104 at width 32. Its 3x3 convolutions start as identities on their
    first channels, as airbench's do."""

    input_shape = (3, 32, 32)

    def __init__(self, num_classes: int = 10, width: int = 32, logit_scale: float = 1.0) -> None:
        super().__init__()

        def block(inputs: int, outputs: int) -> list[nn.Module]:
            # Pooling before batch norm and GELU: they run on a quarter of the values.
            return [nn.Conv2d(inputs, outputs, 3, padding=1, bias=False), nn.MaxPool2d(2),
                    nn.BatchNorm2d(outputs), nn.GELU(), *conv_bn(outputs, outputs), nn.GELU()]

        self.features = nn.Sequential(
            nn.Conv2d(3, 24, kernel_size=2), nn.GELU(),  # 24 x 31 x 31
            *block(24, width), *block(width, 4 * width), *block(4 * width, 4 * width),  # 3 x 3
            nn.AdaptiveMaxPool2d(1), nn.Flatten(),
        )
        self.classifier = nn.Linear(4 * width, num_classes, bias=False)
        self.logit_scale = logit_scale  # airbench's 1/9 keeps SGD's large steps off the logits
        with torch.no_grad():  # the input passes through from the start: SGD trains it faster
            for layer in self.features:
                if isinstance(layer, nn.Conv2d) and layer.kernel_size == (3, 3):
                    nn.init.dirac_(layer.weight[:layer.in_channels])
                if isinstance(layer, nn.BatchNorm2d):  # statistics that keep up with large steps
                    layer.momentum = 0.4

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x)) * self.logit_scale

    @torch.no_grad()
    def whiten(self, images: Tensor, eps: float = 5e-4) -> None:
        """Fix the stem as airbench does: its 24 filters whiten the 2x2 patches of `images`
        (N x 3 x 32 x 32, normalized): the 12 principal directions of the patches' (uncentred)
        second moments, each scaled to give outputs of unit second moment, and their negatives,
        so that GELU passes either sign. The filters are frozen; their biases still learn. `eps`
        keeps the faintest directions from being amplified."""
        stem = self.features[0]
        assert isinstance(stem, nn.Conv2d)
        patches = images.unfold(2, 2, 1).unfold(3, 2, 1)  # N, 3, 31, 31, 2, 2
        patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, 12).float()
        moments = (patches.T @ patches / len(patches)).cpu().double()  # eigh: on the CPU, exact
        eigenvalues, eigenvectors = torch.linalg.eigh(moments)
        filters = (eigenvectors / (eigenvalues + eps).sqrt()).T.reshape(12, 3, 2, 2)
        stem.weight.copy_(torch.cat([filters, -filters]))
        stem.weight.requires_grad_(False)


class Architecture(Protocol):
    """A network class of ARCHITECTURES: built from keyword arguments (model files store them), it
    names the (channels, height, width) of the images it takes."""

    input_shape: tuple[int, int, int]

    def __call__(self, *args: Any, **kwargs: Any) -> nn.Module: ...


class Classifier(Protocol):
    """A model in the sense of scoring and predicting: normalized images in, logits out, with a
    mode to switch (an nn.Module, or an ONNX model, always in eval mode)."""

    training: bool

    def __call__(self, images: Tensor) -> Tensor: ...

    def train(self, mode: bool = True) -> object: ...

    def eval(self) -> object: ...


ARCHITECTURES: dict[str, Architecture] = {"lenet": LeNet, "convnet": ConvNet, "resnet": ResNet,
                                          "widenet": WideNet, "twoconv": TwoConvNet,
                                          "fastnet": FastNet, "cifarnet": CifarNet,
                                          DETECTED: DetectedLeNet}
# What a training run's --arch may name: a detected LeNet is a trained LeNet given a detector.
TRAINABLE = [name for name in ARCHITECTURES if name != DETECTED]


def build_model(arch: str, **model_args: Any) -> nn.Module:
    """The network registered as `arch`, built with `model_args`."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[arch](**model_args)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

