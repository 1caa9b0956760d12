"""The CAM++ network (Wang et al. 2023, arXiv 2303.00332) in torch, with the module names of
3D-Speaker's checkpoints so that their state dicts load as they are.

A 2-D convolutional front end (FCM) over (frequency, time), then a densely connected TDNN
whose layers are gated by context-aware masking (CAM: utterance mean + 100-frame segment
means), statistics pooling, and a linear layer to the embedding. Inference only.
Imported lazily (it imports torch) by campplus.py.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

SEG_FRAMES = 100  # CAM's segment pooling length


def _bn_relu(channels: int) -> nn.Sequential:
    return nn.Sequential(OrderedDict(batchnorm=nn.BatchNorm1d(channels), relu=nn.ReLU()))


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=(stride, 1), padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=(stride, 1), bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(out + self.shortcut(x))


class FCM(nn.Module):
    """Front end: 80 bands -> 32 channels x 10 bands per frame."""

    def __init__(self, ch: int = 32) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, ch, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(ch)
        self.layer1 = nn.Sequential(ResBlock(ch, ch, 2), ResBlock(ch, ch, 1))
        self.layer2 = nn.Sequential(ResBlock(ch, ch, 2), ResBlock(ch, ch, 1))
        self.conv2 = nn.Conv2d(ch, ch, 3, stride=(2, 1), padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x.unsqueeze(1))))
        out = torch.relu(self.bn2(self.conv2(self.layer2(self.layer1(out)))))
        return out.reshape(out.shape[0], out.shape[1] * out.shape[2], out.shape[3])


class CAMLayer(nn.Module):
    """A local convolution gated by utterance- and segment-level context."""

    def __init__(self, cin: int, cout: int, kernel: int, dilation: int) -> None:
        super().__init__()
        pad = (kernel - 1) // 2 * dilation
        self.linear_local = nn.Conv1d(cin, cout, kernel, padding=pad, dilation=dilation, bias=False)
        self.linear1 = nn.Conv1d(cin, cin // 2, 1)
        self.linear2 = nn.Conv1d(cin // 2, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seg = nn.functional.avg_pool1d(x, SEG_FRAMES, SEG_FRAMES, ceil_mode=True)
        seg = seg.repeat_interleave(SEG_FRAMES, dim=-1)[..., : x.shape[-1]]
        context = x.mean(-1, keepdim=True) + seg
        return self.linear_local(x) * torch.sigmoid(self.linear2(torch.relu(self.linear1(context))))


class DenseTDNNLayer(nn.Module):
    def __init__(self, cin: int, growth: int, bottleneck: int, dilation: int) -> None:
        super().__init__()
        self.nonlinear1 = _bn_relu(cin)
        self.linear1 = nn.Conv1d(cin, bottleneck, 1, bias=False)
        self.nonlinear2 = _bn_relu(bottleneck)
        self.cam_layer = CAMLayer(bottleneck, growth, 3, dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.cam_layer(self.nonlinear2(self.linear1(self.nonlinear1(x))))], 1)


class Transit(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.nonlinear = _bn_relu(cin)
        self.linear = nn.Conv1d(cin, cout, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.nonlinear(x))


class TDNN(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.linear = nn.Conv1d(cin, cout, 5, stride=2, padding=2, bias=False)
        self.nonlinear = _bn_relu(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.nonlinear(self.linear(x))


class StatsPool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.mean(-1), x.std(-1, unbiased=True)], -1)


class Dense(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.linear = nn.Conv1d(cin, cout, 1, bias=False)
        self.nonlinear = nn.Sequential(OrderedDict(batchnorm=nn.BatchNorm1d(cout, affine=False)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.nonlinear(self.linear(x.unsqueeze(-1)).squeeze(-1))


class CAMPPlus(nn.Module):
    def __init__(self, embedding_dim: int = 192, growth: int = 32, bottleneck: int = 128) -> None:
        super().__init__()
        self.head = FCM()
        layers: OrderedDict[str, nn.Module] = OrderedDict(tdnn=TDNN(32 * 10, 128))
        channels = 128
        for i, (num, dilation) in enumerate([(12, 1), (24, 2), (16, 2)], start=1):
            layers[f"block{i}"] = nn.Sequential(OrderedDict(
                (f"tdnnd{j + 1}", DenseTDNNLayer(channels + j * growth, growth, bottleneck, dilation))
                for j in range(num)))
            channels += num * growth
            layers[f"transit{i}"] = Transit(channels, channels // 2)
            channels //= 2
        layers["out_nonlinear"] = _bn_relu(channels)
        layers["stats"] = StatsPool()
        layers["dense"] = Dense(channels * 2, embedding_dim)
        self.xvector = nn.Sequential(layers)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """(batch, frames, 80) mean-normalised fbank -> (batch, embedding_dim)."""
        return self.xvector(self.head(feats.permute(0, 2, 1)))
