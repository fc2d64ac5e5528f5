"""Knowledge distillation from a teacher: losses and the fine-tune loop.

Losses (selectable, combinable): ``logits`` (soft-label KL at temperature T, times T², plus
hard-label cross-entropy), ``features`` (MSE between stage outputs, the student's mapped to the
teacher's width by learned 1x1 adapters), ``attention`` (attention transfer: distance between
L2-normalised spatial attention maps). int8 layers of the student are fake-quantized during the
loop (QAT, straight-through estimator), so the distilled weights are those of the exported model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from rich.progress import Progress
from torch import nn

from autocomp.data import Dataset
from autocomp.errors import UserError

KD_KINDS = ("logits", "features", "attention")


@dataclass
class KDConfig:
    kinds: tuple[str, ...] = ("logits",)
    steps: int = 300
    batch_size: int = 128
    lr: float = 1e-3
    temperature: float = 4.0
    alpha: float = 0.7  # weight of the soft-label term (1 - alpha on the hard labels)
    feature_weight: float = 1.0
    attention_weight: float = 100.0
    seed: int = 0
    device: str = "auto"  # where the loop trains: auto | cpu | cuda (autocomp.training); the student comes back to the CPU
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        bad = [k for k in self.kinds if k not in KD_KINDS]
        if bad or not self.kinds:
            raise UserError("--kd", f"unknown distillation kind(s) {bad or '(none)'}", f"a comma-separated subset of {list(KD_KINDS)}")


def logits_kd_loss(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, temperature: float, alpha: float) -> torch.Tensor:
    """alpha * T² * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y)."""
    t = temperature
    soft = F.kl_div(F.log_softmax(student / t, 1), F.log_softmax(teacher / t, 1), reduction="batchmean", log_target=True)
    return alpha * t * t * soft + (1 - alpha) * F.cross_entropy(student, labels)


def attention_map(f: torch.Tensor) -> torch.Tensor:
    """Spatial attention of a feature map: channel-mean of squares, flattened, L2-normalised."""
    return F.normalize(f.pow(2).mean(1).flatten(1), dim=1)


def attention_loss(fs: torch.Tensor, ft: torch.Tensor) -> torch.Tensor:
    if fs.shape[-2:] != ft.shape[-2:]:
        fs = F.interpolate(fs, size=ft.shape[-2:], mode="bilinear", align_corners=False)
    return (attention_map(fs) - attention_map(ft)).pow(2).mean()


def stage_outputs(model: nn.Module) -> list[nn.Module]:
    """The modules whose outputs are the model's stage features (end of each resolution stage).

    Works for autocomp Nets (``blocks``) and for any model with a ``features`` Sequential
    (torchvision MobileNet) or ``layer1..layer4`` (torchvision ResNet).
    """
    if hasattr(model, "blocks"):
        blocks = list(model.blocks)
        ends = [i for i in range(len(blocks)) if i + 1 == len(blocks) or _stride(blocks[i + 1]) > 1]
        return [blocks[i] for i in ends]
    if all(hasattr(model, f"layer{i}") for i in range(1, 5)):
        return [getattr(model, f"layer{i}") for i in range(1, 5)]
    if hasattr(model, "features"):
        return [model.features[-1]]
    raise UserError("--kd", f"cannot find stage features in {type(model).__name__}", "an autocomp Net, a torchvision MobileNet/ResNet, or --kd logits")


def _stride(block: nn.Module) -> int:
    for m in block.modules():
        if isinstance(m, nn.Conv2d) and m.groups > 1:
            return m.stride[0]
    return 1


class _Taps:
    """Forward hooks that record a list of modules' outputs."""

    def __init__(self, modules: list[nn.Module]):
        self.out: list[torch.Tensor] = []
        self.handles = [m.register_forward_hook(lambda _m, _i, o: self.out.append(o)) for m in modules]

    def take(self) -> list[torch.Tensor]:
        out, self.out = self.out, []
        return out

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def _pair_features(fs: list[torch.Tensor], ft: list[torch.Tensor]) -> list[tuple[int, int]]:
    """Match the last len(min) stages of each (student stage i ↔ teacher stage j)."""
    n = min(len(fs), len(ft))
    return list(zip(range(len(fs) - n, len(fs)), range(len(ft) - n, len(ft))))


def distill(student: nn.Module, teacher: nn.Module, data: Dataset, cfg: KDConfig, progress: bool = True) -> dict:
    """Fine-tune ``student`` from ``teacher`` in place (on ``cfg.device``; mixed precision on CUDA
    unless the student holds fake-quantized int8 layers); returns the loss history summary."""
    from autocomp.compress.quantize import QuantLayer
    from autocomp.training import Amp, resolve_device, to

    dev = resolve_device(cfg.device)
    amp = Amp(dev, enabled=not any(isinstance(m, QuantLayer) for m in student.modules()))
    torch.manual_seed(cfg.seed)
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    use_feat = "features" in cfg.kinds or "attention" in cfg.kinds
    s_taps = _Taps(stage_outputs(student)) if use_feat else None
    t_taps = _Taps(stage_outputs(teacher)) if use_feat else None
    adapters = nn.ModuleList()
    pairs: list[tuple[int, int]] = []
    if use_feat:
        x0, _ = next(data.batches(data.train.subset(2, cfg.seed), 2))
        with torch.no_grad():
            student.eval()(x0)
            teacher(x0)
        fs, ft = s_taps.take(), t_taps.take()
        pairs = _pair_features(fs, ft)
        adapters = nn.ModuleList(nn.Conv2d(fs[i].shape[1], ft[j].shape[1], 1, bias=False) for i, j in pairs)
    # channels_last: on CPU the depthwise-conv backward is ~9x faster than in NCHW (measured)
    student.to(dev, memory_format=torch.channels_last)
    teacher.to(dev, memory_format=torch.channels_last)
    adapters.to(dev)
    params = list(student.parameters()) + list(adapters.parameters())
    opt = torch.optim.Adam(params, lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(cfg.steps, 1))
    student.train()
    losses: list[float] = []
    step, epoch = 0, 0
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task(f"distilling ({'+'.join(cfg.kinds)})", total=cfg.steps)
        while step < cfg.steps:
            for x, y in data.batches(data.train, cfg.batch_size, shuffle=True, seed=cfg.seed + 1000 + epoch):
                x, y = to(x, dev).contiguous(memory_format=torch.channels_last), to(y, dev)
                with torch.no_grad(), amp.autocast():
                    t_logits = teacher(x).float()
                with amp.autocast():
                    s_logits = student(x).float()
                if "logits" in cfg.kinds:
                    loss = logits_kd_loss(s_logits, t_logits, y, cfg.temperature, cfg.alpha)
                else:
                    loss = F.cross_entropy(s_logits, y)
                if use_feat:
                    fs, ft = s_taps.take(), t_taps.take()
                    for a, (i, j) in zip(adapters, pairs):
                        if "features" in cfg.kinds:
                            mapped = a(fs[i])
                            if mapped.shape[-2:] != ft[j].shape[-2:]:
                                mapped = F.interpolate(mapped, size=ft[j].shape[-2:], mode="bilinear", align_corners=False)
                            loss = loss + cfg.feature_weight * F.mse_loss(mapped, ft[j])
                        if "attention" in cfg.kinds:
                            loss = loss + cfg.attention_weight * attention_loss(fs[i], ft[j])
                opt.zero_grad(set_to_none=True)
                amp.backward(loss)
                amp.step(opt)
                sched.step()
                losses.append(loss.item())
                step += 1
                bar.advance(task)
                if step >= cfg.steps:
                    break
            epoch += 1
    for taps in (s_taps, t_taps):
        if taps:
            taps.close()
    student.to("cpu", memory_format=torch.contiguous_format)
    teacher.to("cpu", memory_format=torch.contiguous_format)
    student.eval()
    return {"steps": step, "loss_first": losses[0] if losses else None, "loss_last": sum(losses[-20:]) / max(len(losses[-20:]), 1)}


@torch.no_grad()
def torch_accuracy(model: nn.Module, data: Dataset, split: str = "val", batch_size: int = 500) -> float:
    model.eval()
    s = getattr(data, split)
    correct = 0
    for x, y in data.batches(s, batch_size):
        correct += int((model(x).argmax(1) == y).sum())
    return correct / max(len(s), 1)
