"""The networks: the LeNet-5 of the quick start (two convolutions with ReLU and average pooling,
three fully connected layers, 10 logits) and the stronger ones the recipes name. They live in
lenetkit.model; this module re-exports them for `from model import LeNet`."""

from lenetkit.model import (
                            ARCHITECTURES,
                            CifarNet,
                            ConvNet,
                            FastNet,
                            LeNet,
                            ResNet,
                            TwoConvNet,
                            WideNet,
                            build_model,
                            count_parameters,
)

__all__ = ["ARCHITECTURES", "CifarNet", "ConvNet", "FastNet", "LeNet", "ResNet", "TwoConvNet",
           "WideNet", "build_model", "count_parameters"]
