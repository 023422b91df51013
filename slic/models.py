"""Networks: 3D ResNet-18 backbones, SLIC's projection head, the classifier head, the encoder.

Backbones (`build_backbone(name=...)`), all ResNet-18 topology (BasicBlock, layers [2, 2, 2, 2],
global average pool), with the blocks of torchvision's video ResNets:
- ``r3d_18``: torchvision's R3D-18 (stem conv 3x7x7).
- ``r2plus1d_18``: torchvision's R(2+1)D-18.
- ``r3d_18_reference``: the SLIC reference's Hara et al. 3D-ResNet-18: stem conv 7x7x7, stride
  (1, 2, 2), no max-pool, shortcut type B (1x1x1 conv + BN). The paper-faithful choice.
- ``r3d_18_narrow``: R3D-18 at a quarter of the width (16..128 channels, 128-d output) for CPU
  runs and tests; same topology, about 16x fewer FLOPs.
- ``r3d_18_tiny``: R3D-18 at an eighth of the width (8..64 channels, 64-d output): the default
  for the 2-core CPU pipeline, about twice the clips/s of ``r3d_18_narrow``.
Nothing is downloaded: weights start random.

The blocks (BasicBlock, Conv3DSimple, Conv2Plus1D) follow torchvision's definitions, written here, not imported: the
same layers, parameter names and initialisation, so a network built here from a seed equals the one built from
torchvision's blocks, weights, outputs and gradients (tests/test_models.py builds both). Importing torchvision
imports torch._dynamo, 1.6 s of the 4.4 s `slic search` took to answer one query on 2 cores.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

BACKBONES = ("r3d_18", "r2plus1d_18", "r3d_18_reference", "r3d_18_narrow", "r3d_18_tiny")


class Conv3DSimple(nn.Conv3d):
    """A block's 3x3x3 convolution (R3D); `midplanes` is unused, as the (2+1)D builder's signature needs it."""

    def __init__(self, in_planes: int, out_planes: int, midplanes: int | None = None, stride: int = 1,
                 padding: int = 1) -> None:
        super().__init__(in_planes, out_planes, kernel_size=(3, 3, 3), stride=stride, padding=padding, bias=False)

    @staticmethod
    def get_downsample_stride(stride: int) -> tuple[int, int, int]:
        return stride, stride, stride


class Conv2Plus1D(nn.Sequential):
    """A block's (2+1)D convolution: 1x3x3 spatial to `midplanes`, BN, ReLU, then 3x1x1 temporal (R(2+1)D)."""

    def __init__(self, in_planes: int, out_planes: int, midplanes: int, stride: int = 1, padding: int = 1) -> None:
        super().__init__(
            nn.Conv3d(in_planes, midplanes, kernel_size=(1, 3, 3), stride=(1, stride, stride),
                      padding=(0, padding, padding), bias=False),
            nn.BatchNorm3d(midplanes), nn.ReLU(inplace=True),
            nn.Conv3d(midplanes, out_planes, kernel_size=(3, 1, 1), stride=(stride, 1, 1), padding=(padding, 0, 0),
                      bias=False))

    @staticmethod
    def get_downsample_stride(stride: int) -> tuple[int, int, int]:
        return stride, stride, stride


class BasicBlock(nn.Module):
    """Two convolutions (each with BN; ReLU between and after the sum) and the identity or `downsample` shortcut.
    `midplanes` of a (2+1)D block keeps its parameter count that of a 3x3x3 one."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, conv_builder: type, stride: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        midplanes = (inplanes * planes * 3 * 3 * 3) // (inplanes * 3 * 3 + 3 * planes)
        self.conv1 = nn.Sequential(conv_builder(inplanes, planes, midplanes, stride), nn.BatchNorm3d(planes),
                                   nn.ReLU(inplace=True))
        self.conv2 = nn.Sequential(conv_builder(planes, planes, midplanes), nn.BatchNorm3d(planes))
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv2(self.conv1(x))
        out += x if self.downsample is None else self.downsample(x)  # in place: one activation less to keep
        return self.relu(out)


def _stem(kind: str, width: int) -> nn.Sequential:
    if kind == "r2plus1d":
        mid = width * 45 // 64
        return nn.Sequential(
            nn.Conv3d(3, mid, kernel_size=(1, 7, 7), stride=(1, 2, 2), padding=(0, 3, 3), bias=False),
            nn.BatchNorm3d(mid), nn.ReLU(inplace=True),
            nn.Conv3d(mid, width, kernel_size=(3, 1, 1), padding=(1, 0, 0), bias=False),
            nn.BatchNorm3d(width), nn.ReLU(inplace=True))
    kernel, padding = ((7, 7, 7), (3, 3, 3)) if kind == "reference" else ((3, 7, 7), (1, 3, 3))
    return nn.Sequential(nn.Conv3d(3, width, kernel_size=kernel, stride=(1, 2, 2), padding=padding, bias=False),
                         nn.BatchNorm3d(width), nn.ReLU(inplace=True))


def _stage(conv: type, in_planes: int, planes: int, stride: int) -> nn.Sequential:
    """Two BasicBlocks; the first downsamples with a 1x1x1 conv + BN shortcut (type B) if needed."""
    downsample = None
    if stride != 1 or in_planes != planes:
        downsample = nn.Sequential(
            nn.Conv3d(in_planes, planes, kernel_size=1, stride=conv.get_downsample_stride(stride), bias=False),
            nn.BatchNorm3d(planes))
    return nn.Sequential(BasicBlock(in_planes, planes, conv, stride, downsample), BasicBlock(planes, planes, conv))


class VideoResNet18(nn.Module):
    """ResNet-18 over (B, 3, T, H, W) clips -> (B, feature_dim) pooled features."""

    def __init__(self, *, width: int = 64, conv: str = "3d", stem: str = "torchvision") -> None:
        super().__init__()
        block_conv = Conv2Plus1D if conv == "2plus1d" else Conv3DSimple
        widths = [width, 2 * width, 4 * width, 8 * width]
        self.stem = _stem("r2plus1d" if conv == "2plus1d" else stem, width)
        self.layer1 = _stage(block_conv, width, widths[0], 1)
        self.layer2 = _stage(block_conv, widths[0], widths[1], 2)
        self.layer3 = _stage(block_conv, widths[1], widths[2], 2)
        self.layer4 = _stage(block_conv, widths[2], widths[3], 2)
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.feature_dim = widths[3]
        for module in self.modules():  # torchvision's initialisation
            if isinstance(module, nn.Conv3d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm3d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, clips: Tensor) -> Tensor:
        if self.stem[0].weight.is_contiguous(memory_format=torch.channels_last_3d):
            clips = clips.contiguous(memory_format=torch.channels_last_3d)  # the weights' layout: no conversions
        x = self.stem(clips)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.pool(x).flatten(1)


def build_backbone(*, name: str) -> VideoResNet18:
    """One of `BACKBONES`, randomly initialised."""
    if name == "r3d_18":
        return VideoResNet18(width=64)
    if name == "r2plus1d_18":
        return VideoResNet18(width=64, conv="2plus1d")
    if name == "r3d_18_reference":
        return VideoResNet18(width=64, stem="reference")
    if name == "r3d_18_narrow":
        return VideoResNet18(width=16)
    if name == "r3d_18_tiny":
        return VideoResNet18(width=8)
    raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")


class ProjectionHead(nn.Module):
    """SLIC's head: Linear(d, 2048) -> BatchNorm1d -> ReLU -> Linear(2048, 128); not normalised.

    `output_norm` appends BatchNorm1d(128) without affine parameters (not in the paper): it removes
    the shared offset the last Linear adds to every output (W * mean(ReLU(BN(h))) + b), which
    otherwise makes all cosine distances small and holds the triplet loss at its margin.
    """

    def __init__(self, *, in_dim: int, hidden_dim: int = 2048, out_dim: int = 128, output_norm: bool = False) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(in_dim, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True),
                                   nn.Linear(hidden_dim, out_dim)]
        if output_norm:
            layers.append(nn.BatchNorm1d(out_dim, affine=False))
        self.net = nn.Sequential(*layers)

    def forward(self, features: Tensor) -> Tensor:
        return self.net(features)


class Encoder(nn.Module):
    """Backbone + projection head: clips (B, 3, T, H, W) -> embeddings (B, out_dim)."""

    def __init__(self, *, backbone: str, hidden_dim: int = 2048, out_dim: int = 128,
                 head_output_norm: bool = False) -> None:
        super().__init__()
        self.backbone_name = backbone
        self.backbone = build_backbone(name=backbone)
        self.head = ProjectionHead(in_dim=self.backbone.feature_dim, hidden_dim=hidden_dim, out_dim=out_dim,
                                   output_norm=head_output_norm)

    def forward(self, clips: Tensor) -> Tensor:
        return self.head(self.backbone(clips))


class Classifier(nn.Module):
    """Backbone without head + Dropout + Linear(d, classes), for finetuning and linear probes."""

    def __init__(self, *, backbone: nn.Module, feature_dim: int, classes: int, dropout: float = 0.9) -> None:
        super().__init__()
        self.backbone = backbone
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(feature_dim, classes)

    def forward(self, clips: Tensor) -> Tensor:
        return self.fc(self.dropout(self.backbone(clips)))


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def to_device(model: nn.Module, device: torch.device) -> nn.Module:
    """Move a video model to `device` in channels_last_3d (NDHWC), where the clips follow it.

    oneDNN's NDHWC kernels make a 2-core training step of r3d_18_tiny about 1.5x faster than NCDHW
    (bench/pretrain.py measures both); on CUDA it is cuDNN's layout for bf16 tensor cores.
    """
    return model.to(device).to(memory_format=torch.channels_last_3d)
