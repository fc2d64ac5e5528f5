"""The standalone network of a candidate: a MobileNetV2-style stack of inverted-residual blocks.

``build(candidate, space)`` returns a plain ``nn.Module`` (no supernet machinery) at full width
(keep ratio 1, full rank, fp32); the compression operators in ``autocomp.compress`` then shrink
it physically and set per-layer precision. The module names are stable so that weights can be
inherited by name (``stem``, ``blocks.<i>``, ``head``, ``classifier``).
"""

from __future__ import annotations

import torch
from torch import nn

from autocomp.space import Candidate, SearchSpace


class ConvBNAct(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True):
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
        ]
        if act:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class InvertedResidual(nn.Module):
    """1x1 expand -> kxk depthwise -> 1x1 project, with a residual when shapes allow.

    ``hidden`` is the number of expanded channels: the dimension that structured pruning removes.
    """

    def __init__(self, cin: int, cout: int, stride: int, kernel: int, expand: int):
        super().__init__()
        hidden = cin * expand
        self.expand = ConvBNAct(cin, hidden, 1) if expand != 1 else nn.Identity()
        self.dw = ConvBNAct(hidden, hidden, kernel, stride, groups=hidden)
        self.project = ConvBNAct(hidden, cout, 1, act=False)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.dw(self.expand(x)))
        return x + y if self.residual else y


class Net(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, stem_width: int, blocks: list[tuple[int, int, int, int, int]], head_width: int):
        super().__init__()
        self.stem = ConvBNAct(in_channels, stem_width, 3)
        self.blocks = nn.Sequential(*(InvertedResidual(*b) for b in blocks))
        last = blocks[-1][1] if blocks else stem_width
        self.head = ConvBNAct(last, head_width, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(head_width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(x)))
        return self.classifier(torch.flatten(self.pool(x), 1))


def block_specs(candidate: Candidate, space: SearchSpace) -> list[tuple[int, int, int, int, int]]:
    """(cin, cout, stride, kernel, expand) of every block, in order."""
    specs = []
    cin = candidate.stem_width
    for st_spec, st in zip(space.stages, candidate.stages):
        for i, b in enumerate(st.blocks):
            specs.append((cin, st.width, st_spec.stride if i == 0 else 1, b.kernel, b.expand))
            cin = st.width
    return specs


def build(candidate: Candidate, space: SearchSpace, num_classes: int | None = None) -> Net:
    """The uncompressed network of ``candidate`` (random init)."""
    return Net(space.input.channels, num_classes or space.num_classes, candidate.stem_width, block_specs(candidate, space), candidate.head_width)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_macs(model: nn.Module, input_shape: tuple[int, int, int]) -> int:
    """Multiply-accumulates of one forward pass at batch 1 (convolutions and linear layers)."""
    macs = 0

    def hook(m: nn.Module, _inp, out: torch.Tensor) -> None:
        nonlocal macs
        w = m.weight
        if isinstance(m, nn.Conv2d):
            macs += out.numel() * (w.shape[1] * w.shape[2] * w.shape[3])
        else:
            macs += out.numel() * w.shape[1]

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        was_training = model.training
        model.eval()
        dtype = next(model.parameters()).dtype
        model(torch.zeros(1, *input_shape, dtype=torch.float32 if dtype == torch.float16 else dtype))
        model.train(was_training)
    finally:
        for h in handles:
            h.remove()
    return int(macs)
