"""The judge: a small CNN trained on the data set's classes whose features and softmax score every
generator. Images without labels get no judge: `load_judge` then says why, and the scores fall
back to Inception-V3 where its weights are present."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trilemma import distributed
from trilemma.config import ClassifierConfig
from trilemma.data import MNIST_SPEC, ImageSpec
from trilemma.errors import DataError, NoJudge, brief
from trilemma.io import atomic_path
from trilemma.train import adam, planned_steps

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


def _conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class Judge(nn.Module):
    """Three conv stages and a dense feature layer; `features` is the space FID is computed in.
    Inputs are standardised with the training images' pixel `mean` and `std` (MNIST's by default)."""

    def __init__(self, width: int = 32, features: int = 128, image: ImageSpec = MNIST_SPEC,
                 mean: float = MNIST_MEAN, std: float = MNIST_STD):
        super().__init__()
        w, self.mean, self.std = width, mean, std
        grid = image.size // 8  # after three 2x2 poolings (28 -> 3)
        last_pool: nn.Module = nn.MaxPool2d(2)
        if grid > 4:  # large images: average down to 4x4 so the dense layer stays small
            last_pool, grid = nn.Sequential(nn.MaxPool2d(2), nn.AdaptiveAvgPool2d(4)), 4
        self.body = nn.Sequential(
            _conv_block(image.channels, w), nn.MaxPool2d(2),  # (B,w,S/2,S/2)
            _conv_block(w, 2 * w), nn.MaxPool2d(2),  # (B,2w,S/4,S/4)
            _conv_block(2 * w, 4 * w), last_pool,  # (B,4w,g,g): 3x3 for 28x28
            nn.Flatten(), nn.Linear(4 * w * grid * grid, features), nn.ReLU(inplace=True),  # (B,F)
        )
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(features, image.num_classes))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """x (B,C,S,S) in [0,1] -> (B,F)."""
        x = ((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last)
        return self.body(x)  # channels_last: ~1.4x faster convolutions on CPU

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # (B,K) logits


def random_shift(x: torch.Tensor, max_shift: int = 2) -> torch.Tensor:
    """Translate each image by up to `max_shift` pixels (zero fill): x (B,C,S,S)."""
    b, _, h, w = x.shape
    shift = distributed.randint(-max_shift, max_shift + 1, b, 2, device=x.device).float()
    theta = torch.zeros(b, 2, 3, device=x.device)
    theta[:, 0, 0] = theta[:, 1, 1] = 1
    theta[:, 0, 2] = -2 * shift[:, 0] / w
    theta[:, 1, 2] = -2 * shift[:, 1] / h
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


class ClassifierTrainee:
    """The judge as a trainee of the generic loop; one-cycle LR over all the steps it will take."""

    def __init__(self, cfg: ClassifierConfig, device: torch.device, n_train: int,
                 image: ImageSpec = MNIST_SPEC, mean: float = MNIST_MEAN, std: float = MNIST_STD):
        total_steps = planned_steps(cfg, n_train)
        self.cfg = cfg
        self.net = Judge(cfg.width, cfg.features, image, mean, std).to(
            device, memory_format=torch.channels_last)
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


def pixel_stats(images: np.ndarray, source: str) -> tuple[float, float]:
    """The judge's input standardisation: MNIST's customary constants, else the training
    images' own pixel mean and std (on a [0,1] scale)."""
    if source == "mnist":
        return MNIST_MEAN, MNIST_STD
    scaled = images.astype(np.float64) / 255
    return float(scaled.mean()), max(float(scaled.std()), 1e-3)


def save_judge(net: Judge, cfg: ClassifierConfig, image: ImageSpec, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        torch.save({"config": cfg.model_dump(), "state": net.state_dict(), "image": image.as_dict(),
                    "mean": net.mean, "std": net.std}, tmp)


def save_no_judge(reason: str, image: ImageSpec, path: str | Path) -> None:
    """The classifier stage's output when no judge can be trained: why, for every later stage."""
    with atomic_path(path) as tmp:
        torch.save({"state": None, "reason": reason, "image": image.as_dict()}, tmp)


def load_judge(path: str | Path, device: torch.device) -> Judge:
    """The trained judge; NoJudge (with the reason) when the data set has none."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: classifier not found; run `trilemma train-classifier` first")
    again = "run `trilemma train-classifier` again"
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise DataError(f"{path}: not a trilemma classifier checkpoint ({brief(err)}); "
                        f"{again}") from None
    if isinstance(blob, dict) and blob.get("state") is None and "reason" in blob:
        raise NoJudge(blob["reason"])
    try:
        cfg = ClassifierConfig(**blob["config"])
        net = Judge(cfg.width, cfg.features, ImageSpec.from_dict(blob["image"]), blob["mean"],
                    blob["std"])
        net.load_state_dict(blob["state"])
    except Exception as err:
        raise DataError(f"{path}: not a trilemma classifier checkpoint ({brief(err)}); "
                        f"{again}") from None
    return fold_batch_norms(net.eval()).to(device, memory_format=torch.channels_last)


def fold_batch_norms(judge: Judge) -> Judge:
    """The judge for inference only: each eval-mode BatchNorm folded into the convolution before
    it (the same function up to rounding; ~25 % faster on the CPU)."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for block in judge.body:
        if isinstance(block, nn.Sequential) and isinstance(block[0], nn.Conv2d):
            block[0], block[1] = fuse_conv_bn_eval(block[0], block[1]), nn.Identity()
    return judge


def judge_for(family: str, device: torch.device) -> Judge | None:
    """The frozen judge for a translator whose loss uses it (its entry `needs_judge`); None for
    the others."""
    from trilemma import paths, registry

    if not registry.entry(family).needs_judge:
        return None

    return load_judge(paths.CLASSIFIER, device)
