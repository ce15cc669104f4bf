"""The judge: a small CNN trained on MNIST whose features and softmax score every generator."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from trilemma import distributed
from trilemma.config import ClassifierConfig
from trilemma.errors import DataError, brief
from trilemma.io import atomic_path
from trilemma.train import adam

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


def _conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class Judge(nn.Module):
    """Three conv stages and a dense feature layer; `features` is the space FID is computed in."""

    def __init__(self, width: int = 32, features: int = 128):
        super().__init__()
        w = width
        self.body = nn.Sequential(
            _conv_block(1, w), nn.MaxPool2d(2),  # (B,w,14,14)
            _conv_block(w, 2 * w), nn.MaxPool2d(2),  # (B,2w,7,7)
            _conv_block(2 * w, 4 * w), nn.MaxPool2d(2),  # (B,4w,3,3)
            nn.Flatten(), nn.Linear(4 * w * 9, features), nn.ReLU(inplace=True),  # (B,F)
        )
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(features, 10))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """x (B,1,28,28) in [0,1] -> (B,F)."""
        x = ((x - MNIST_MEAN) / MNIST_STD).contiguous(memory_format=torch.channels_last)
        return self.body(x)  # channels_last: ~1.4x faster convolutions on CPU

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # (B,10) logits


def random_shift(x: torch.Tensor, max_shift: int = 2) -> torch.Tensor:
    """Translate each image by up to `max_shift` pixels (zero fill): x (B,1,28,28)."""
    b, _, h, w = x.shape
    shift = distributed.randint(-max_shift, max_shift + 1, b, 2, device=x.device).float()
    theta = torch.zeros(b, 2, 3, device=x.device)
    theta[:, 0, 0] = theta[:, 1, 1] = 1
    theta[:, 0, 2] = -2 * shift[:, 0] / w
    theta[:, 1, 2] = -2 * shift[:, 1] / h
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


class ClassifierTrainee:
    """The judge as a trainee of the generic loop; one-cycle LR over all `total_steps`."""

    def __init__(self, cfg: ClassifierConfig, device: torch.device, total_steps: int):
        self.cfg = cfg
        self.net = Judge(cfg.width, cfg.features).to(device, memory_format=torch.channels_last)
        self.nets = {"judge": self.net}
        self.opt = adam(self.net.parameters(), cfg.lr, weight_decay=cfg.weight_decay)
        self.schedule = torch.optim.lr_scheduler.OneCycleLR(self.opt, cfg.lr, total_steps=total_steps)

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.cfg.augment:
            x = random_shift(x)
        logits = self.nets["judge"](x)
        loss = F.cross_entropy(logits, y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.schedule.step()
        accuracy = (logits.argmax(1) == y).float().mean()
        return {"loss": loss.detach(), "accuracy": accuracy.detach()}

    def state_dict(self) -> dict[str, Any]:
        return {"judge": self.net.state_dict(), "opt": self.opt.state_dict(),
                "schedule": self.schedule.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["judge"])
        self.opt.load_state_dict(state["opt"])
        self.schedule.load_state_dict(state["schedule"])


def save_judge(net: Judge, cfg: ClassifierConfig, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        torch.save({"config": cfg.model_dump(), "state": net.state_dict()}, tmp)


def load_judge(path: str | Path, device: torch.device) -> Judge:
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: classifier not found; run `trilemma train-classifier` first")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        cfg = ClassifierConfig(**blob["config"])
        net = Judge(cfg.width, cfg.features)
        net.load_state_dict(blob["state"])
    except Exception as err:
        raise DataError(f"{path}: not a trilemma classifier checkpoint ({brief(err)})") from None
    return net.to(device, memory_format=torch.channels_last).eval()
