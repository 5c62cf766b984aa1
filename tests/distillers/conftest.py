"""Shared fixtures of the distiller tests: a teacher checkpoint for the CLI runs, tiny networks with chosen shapes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ukd.cli import main
from ukd.models import ModelOutputs

#: The CLI options of the end-to-end runs: 256 training and 256 test images, one thread, no bars.
CLI_SMALL = ["--train-subset", "256", "--set", "data.test_subset=256", "--threads", "1", "--quiet"]


@pytest.fixture(scope="session")
def cli_small() -> list[str]:
    """:data:`CLI_SMALL`."""
    return list(CLI_SMALL)


@pytest.fixture(scope="session")
def teacher_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A resnet8 teacher trained for one epoch on 256 Fashion-MNIST images (``last.pt``)."""
    out = tmp_path_factory.mktemp("distillers_teacher")
    assert main(["train-teacher", "--model", "resnet8", "--epochs", "1", "-o", str(out), *CLI_SMALL]) == 0
    return out / "last.pt"


@pytest.fixture(scope="session")
def tiny_net() -> type[nn.Module]:
    """The :class:`TinyNet` class."""
    return TinyNet


class TinyNet(nn.Module):
    """A hand-made network with the zoo's ``forward_all`` contract and chosen stage shapes.

    Stage ``i`` is ``ReLU(conv1x1(avg-pool of the input to size_i))``; a size is an ``int`` (fixed, whatever the
    input) or a ``float`` (that fraction of the input's height and width). The pooled vector is the global mean of
    the last stage, the logits a linear layer of it.

    Args:
        channels: C_i of each stage.
        sizes: the spatial size of each stage.
        in_channels: image channels; num_classes: K.
    """

    def __init__(self, channels: list[int], sizes: list[int | float], in_channels: int = 1, num_classes: int = 5):
        super().__init__()
        self.stage_channels = list(channels)
        self.pooled_channels = channels[-1]
        self.sizes = list(sizes)
        self.convs = nn.ModuleList(nn.Conv2d(in_channels, c, 1) for c in channels)
        self.fc = nn.Linear(channels[-1], num_classes)

    def forward_all(self, x: Tensor) -> ModelOutputs:
        preact, stages = [], []
        for conv, size in zip(self.convs, self.sizes):
            side = size if isinstance(size, int) else int(size * x.shape[-1])
            pre = conv(F.adaptive_avg_pool2d(x, side))
            preact.append(pre)
            stages.append(torch.relu(pre))
        pooled = stages[-1].mean(dim=(2, 3))
        return ModelOutputs(self.fc(pooled), stages, preact, pooled)

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        out = self.forward_all(x)
        return out.logits, out.stages
