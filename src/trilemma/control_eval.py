"""The control stage's evaluation: which kind of control a family takes, latent steering of
every class, and classifier(-free) guidance at each scale, each scored by the judge and by the
referee (the per-class rows, the metrics, the figure's rows, the time)."""

from __future__ import annotations

import time

import numpy as np
import torch

from trilemma import data, latent, paths, registry
from trilemma.config import Params
from trilemma.control import steer, x0_guide
from trilemma.errors import ConfigError
from trilemma.runtime import generator
from trilemma.torchrun import log

STEER_COLUMNS = ["digit", "class", "n", "judge_before", "judge_after", "referee_before",
                 "referee_after", "z_change"]
GUIDANCE_COLUMNS = ["method", "scale", "digit", "class", "n", "judge_accuracy",
                    "referee_accuracy"]
SHOWN = 8  # images per row of the figures


def kind_of(family: str) -> str:
    """How the family is steered, as its registry entry declares: "steer" (an unconditional
    family with a differentiable `decode`), "classifier" (an unconditional pixel diffusion:
    classifier guidance), "classifier-free" (a conditional family with a `guidance` knob: its own
    guidance, for comparison); ConfigError otherwise."""
    kind = registry.entry(family).control
    if kind is None:
        raise ConfigError(f"control.families: {family!r} cannot be steered (only unconditional "
                          "latent families with `decode`, pixel diffusion and guided conditional "
                          "families can)")
    return kind


def predictions(net: torch.nn.Module, images: np.ndarray, dev: torch.device, bs: int) -> np.ndarray:
    from trilemma import metrics

    return metrics.embed(net, images, dev, bs).predictions


def steering(model, judge, referee, p: Params, dev: torch.device):
    """Latent steering of every class from `control.per_class` prior latents each: the metrics,
    per-class rows, the figure's rows and the steering time."""
    c, k = p.control, model.image.num_classes
    classes = model.image.classes
    target = torch.arange(k).repeat_interleave(c.per_class)  # (k*n,) class of each latent
    z0 = latent.noise(len(target), model.latent_dim, generator(p.seed))  # (k*n,L) the prior
    t0 = time.perf_counter()
    z = torch.cat([steer(model.decode, judge, z0[s:s + c.batch_size],
                         target[s:s + c.batch_size].to(dev), c.steps, c.lr, c.prior_weight).cpu()
                   for s in range(0, len(target), c.batch_size)])
    seconds = time.perf_counter() - t0
    before, after = model.generate(z0).cpu(), model.generate(z).cpu()  # uint8 (k*n,C,S,S)
    y, bs = target.numpy(), p.evaluate.batch_size
    hits = {f"{who}_{when}": predictions(net, x.numpy(), dev, bs) == y
            for who, net in (("judge", judge), ("referee", referee))
            for when, x in (("before", before), ("after", after))}
    change = (z - z0).norm(dim=1).numpy()  # (k*n,)
    rows = [{"digit": d, "class": classes[d], "n": c.per_class,
             **{key: round(float(hit[y == d].mean()), 6) for key, hit in hits.items()},
             "z_change": round(float(change[y == d].mean()), 4)} for d in range(k)]
    result = {f"{key}_success": round(float(hit.mean()), 6) for key, hit in hits.items()}
    result.update(mean_z_change=round(float(change.mean()), 4),
                  mean_z_norm_before=round(float(z0.norm(dim=1).mean()), 4),
                  mean_z_norm_after=round(float(z.norm(dim=1).mean()), 4),
                  per_class=c.per_class, steps=c.steps, lr=c.lr, prior_weight=c.prior_weight,
                  referee_per_class={classes[r["digit"]]: r["referee_after"] for r in rows})
    log(f"steering {len(y)} latents ({c.steps} steps) took {seconds:.1f} s: judge success "
        f"{result['judge_before_success']:.3f} -> {result['judge_after_success']:.3f}, referee "
        f"{result['referee_before_success']:.3f} -> {result['referee_after_success']:.3f}, "
        f"|z| {result['mean_z_norm_before']:.2f} -> {result['mean_z_norm_after']:.2f}")
    m = min(SHOWN, c.per_class)
    shown = [(f"{classes[d]} {when}", x[y == d][:m]) for d in range(k)
             for when, x in (("before", before), ("after", after))]
    return result, rows, shown, {"seconds": round(seconds, 3)}


def guidance(model, kind: str, judge, referee, images: data.ImageData, p: Params,
             dev: torch.device):
    """Balanced requested labels sampled at each guidance scale from the same noise: per scale
    label accuracy by the judge and the referee and FID against the test set in the judge's
    features (the results), and images/s (the timing)."""
    from trilemma.generation import batch_generator
    from trilemma import metrics

    real = metrics.load_embedded(paths.TEST_EMBEDDING, len(images.x_test))  # by train-classifier
    s, c, k = p.sample, p.control, model.image.num_classes
    if kind == "classifier-free":
        scales = sorted({*s.guidance_sweep, s.guidance})
    else:
        scales = sorted(set(c.guidance_scales))
    labels = torch.arange(c.guidance_n) % k  # (n,) balanced requests
    knobs = {"sampler": s.sampler, "steps": s.steps, "eta": s.eta}

    def draw(scale: float, n: int) -> np.ndarray:
        out = []
        for b, start in enumerate(range(0, n, c.batch_size)):
            lab = labels[start:start + c.batch_size][:n - start]
            gen = batch_generator(p.seed, b)  # the same noise at every scale
            if kind == "classifier-free":
                x = model.sample(len(lab), lab, gen, guidance=scale, **knobs)
            else:
                x = model.sample(len(lab), None, gen, **knobs,
                                 guide=x0_guide(judge, model.alpha_bar, lab.to(dev), scale))
            out.append(x.cpu())
        return torch.cat(out).numpy()

    draw(scales[-1], min(16, c.guidance_n))  # untimed warm-up: lazy initialisation, kernels
    table, rows, shown, rates = [], [], [], {}
    y, bs = labels.numpy(), p.evaluate.batch_size
    method = "classifier guidance (judge on x0)" if kind == "classifier" \
        else "classifier-free guidance"
    for scale in scales:
        t0 = time.perf_counter()
        x = draw(scale, c.guidance_n)
        secs = time.perf_counter() - t0
        rates[f"{scale:g}"] = round(len(y) / secs, 2)
        judged = metrics.embed(judge, x, dev, bs)
        hit_j, hit_r = judged.predictions == y, predictions(referee, x, dev, bs) == y
        table.append({"method": method, "scale": scale, "n": len(y),
                      "judge_accuracy": round(float(hit_j.mean()), 6),
                      "referee_accuracy": round(float(hit_r.mean()), 6),
                      "fid_classifier": round(metrics.fid(real.features, judged.features), 4)})
        rows += [{"method": method, "scale": scale, "digit": d, "class": model.image.classes[d],
                  "n": int((y == d).sum()), "judge_accuracy": round(float(hit_j[y == d].mean()), 6),
                  "referee_accuracy": round(float(hit_r[y == d].mean()), 6)} for d in range(k)]
        shown.append((f"scale {scale:g}", torch.from_numpy(x[:min(len(x), 2 * k, 2 * SHOWN)])))
        log(f"{method} {scale:g}: judge accuracy {table[-1]['judge_accuracy']:.3f}, referee "
            f"{table[-1]['referee_accuracy']:.3f}, FID {table[-1]['fid_classifier']:.2f}, "
            f"{rates[f'{scale:g}']:.0f} images/s")
    result = {"method": method, "guidance": table, "n": len(y), "sampler": s.sampler,
              "steps": s.steps}
    return result, rows, shown, {"images_per_second": rates}
