"""Data parallelism in process (`trilemma.distributed`): every function is the identity in one
process; a real 2-process gloo group (spawned here, no torchrun, no CLI) checks the share/draw
contract the equivalence rests on, and trains the diffusion family and the others whose training
differs in what DDP must carry through `fit` on both ranks against one process. The torchrun runs
of the CLI are in test_distributed.py.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from conftest import base_params
from equivalence import DEADLINE, close, flat, scaled_diffs
from trilemma import distributed, families, i2i
from trilemma.config import parse_params
from trilemma.errors import ConfigError
from trilemma.runtime import seed_everything
from trilemma.train import fit
from trilemma.params_file import with_overrides

CPU = torch.device("cpu")
# The diffusion U-Net is compared by its outputs (see its test): max |diff| below 1e-4 of their
# largest entry (observed 1.3e-6); the same noise drawn on both ranks moves them by 8e-2.
OUTPUT_TOL = 1e-4


# --- one process: the identity -------------------------------------------------------------------

def test_single_process_is_the_identity(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert not distributed.active() and not distributed.launched()
    assert (distributed.rank(), distributed.world_size(), distributed.is_rank0()) == (0, 1, True)
    assert distributed.start(CPU) == CPU and not distributed.active()  # joins no group

    rows = torch.arange(12).reshape(6, 2)
    shared = distributed.share(rows)
    assert torch.equal(shared, rows) and shared.data_ptr() == rows.data_ptr()  # a view, no copy

    for draw, plain in (
            (lambda: distributed.randn(5, 3), lambda: torch.randn(5, 3)),
            (lambda: distributed.randn(5, 3, dtype=torch.float64),
             lambda: torch.randn(5, 3, dtype=torch.float64)),
            (lambda: distributed.randn_like(torch.empty(4, 1, 2, 2)),
             lambda: torch.randn(4, 1, 2, 2)),
            (lambda: distributed.rand(7, 1), lambda: torch.rand(7, 1)),
            (lambda: distributed.randint(0, 20, 9), lambda: torch.randint(0, 20, (9,)))):
        torch.manual_seed(123)
        ours = draw()
        torch.manual_seed(123)
        theirs = plain()
        assert ours.dtype == theirs.dtype and torch.equal(ours, theirs)

    distributed.check_batch(7, "x")  # one process: any batch splits
    values = {"loss": torch.tensor(1.5), "kl": torch.tensor(0.25)}
    assert distributed.average(values) is values
    assert distributed.gather_dict({3: "a"}) == {3: "a"}
    assert torch.equal(distributed.gather_rows(rows), rows)
    assert distributed.contiguous_share(10) == slice(0, 10)
    net = torch.nn.Linear(2, 2)
    assert distributed.wrap({"net": net}, CPU) == {"net": net}
    with distributed.no_sync(net):
        pass
    distributed.barrier()
    distributed.stop()  # no group: nothing to leave


def test_launched_reads_torchruns_world_size(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert not distributed.launched()
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert distributed.launched()


# --- a real 2-process gloo group, spawned here ---------------------------------------------------

GLOBAL = 6  # rows of the global batch in the contract check
DRAW_SEED = 7
# the diffusion family in `fit`: 256 images, global batches of 64, 2 epochs (8 steps); no dropout,
# whose masks are drawn per process
DDPM = {"epochs": 2, "batch_size": 64, "lr": 2e-3, "widths": [8, 16], "patch": 2,
        "timesteps": 20, "dropout": 0.0, "max_steps": None}
DDPM_SEED = 3


def train_ddpm(x: torch.Tensor, y: torch.Tensor, checkpoint: Path) -> tuple[dict, list[dict]]:
    """The diffusion family trained by `fit` in this process (one rank of a group, or alone);
    the model's state and the history."""
    cfg = families.REGISTRY["ddpm"].Config(**DDPM)
    seed_everything(DDPM_SEED)  # as the stages do: the same initial weights on every rank
    model = families.build("ddpm", cfg, CPU)
    history = fit(model, x, y, cfg, name="ddpm", device=CPU, seed=DDPM_SEED,
                  checkpoint=checkpoint, fingerprint="test")
    return model.state_dict(), history


PROGAN = {"epochs": 1, "batch_size": 32, "lr": 1e-3, "width": 4, "max_width": 8,
          "latent_dim": 8, "resolution_steps": 2, "fade_steps": 1, "max_steps": 6}


def train_progan(x: torch.Tensor, y: torch.Tensor, checkpoint: Path) -> dict:
    """ProGAN through `fit` across its growth (7, then 14 fading in, 28 fading in): each level
    leaves the other levels' blocks without a gradient, which DDP must be told to allow."""
    cfg = families.REGISTRY["progan"].Config(**PROGAN)
    seed_everything(DDPM_SEED)
    model = families.build("progan", cfg, CPU)
    fit(model, x, y, cfg, name="progan", device=CPU, seed=DDPM_SEED, checkpoint=checkpoint,
        fingerprint="test")
    return model.state_dict()


# The other families whose training differs in what DDP must carry: StyleGAN (mapping network,
# w average buffer, R1's gradient of D w.r.t. its input), latent diffusion (two phases, a frozen
# autoencoder), and the image-to-image families (paired, two generator/discriminator pairs, a
# judge's content loss)
OTHERS = {
    "stylegan": {"epochs": 1, "batch_size": 32, "width": 8, "latent_dim": 8, "w_dim": 16,
                 "mapping_layers": 2, "max_steps": 4},
    "latent_diffusion": {"epochs": 1, "batch_size": 32, "width": 8, "widths": [8, 16],
                         "timesteps": 20, "dropout": 0.0, "ae_steps": 2, "max_steps": 4},
    **{name: {"epochs": 1, "batch_size": 32, "width": 8, "max_steps": 3}
       for name in ("pix2pix", "cyclegan")},
    "srgan": {"epochs": 1, "batch_size": 32, "width": 8, "max_steps": 3, "blocks": 1},
}


def train_other(name: str, x: torch.Tensor, y: torch.Tensor, checkpoint: Path) -> dict:
    """One of OTHERS through `fit` (the project's params with OTHERS' settings)."""
    p = parse_params(with_overrides(base_params(), {f"{name}.{key}": value
                                                    for key, value in OTHERS[name].items()}))
    seed_everything(DDPM_SEED)
    if name in families.REGISTRY:
        cfg = families.config(p, name)
        model = families.build(name, cfg, CPU)
    else:
        from trilemma.classifier import Judge
        from trilemma.data import MNIST_SPEC

        cfg = i2i.config(p, name)
        judge = Judge(width=4, features=8).eval().requires_grad_(False)  # untrained will do
        model = i2i.build(name, cfg, CPU, MNIST_SPEC, judge)
    fit(model, x, y, cfg, name=name, device=CPU, seed=DDPM_SEED, checkpoint=checkpoint,
        fingerprint="test")
    return model.state_dict()


def _rank(rank: int, folder: str) -> None:
    """One of two ranks: the distributed functions inside a gloo group, then `fit` on the
    diffusion family; results to folder/<rank>.pt."""
    import torch.distributed as dist

    out = Path(folder)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{out / 'store'}", rank=rank,
                            world_size=2)
    try:
        assert distributed.active() and distributed.world_size() == 2
        assert distributed.rank() == rank and distributed.is_rank0() == (rank == 0)
        distributed.check_batch(GLOBAL, "vae")
        local = GLOBAL // 2
        try:
            distributed.check_batch(GLOBAL + 1, "vae")
            raise AssertionError("an odd global batch split over 2 processes")
        except ConfigError as err:
            assert "vae.batch_size" in str(err)

        def seeded(draw):
            torch.manual_seed(DRAW_SEED)  # the same seed on every rank, as the stages do
            return draw()

        results = {
            "local": local,
            "share": distributed.share(torch.arange(GLOBAL)),
            "randn": seeded(lambda: distributed.randn(local, 3)),
            "randn_like": seeded(lambda: distributed.randn_like(torch.empty(local, 1, 2, 2))),
            "rand": seeded(lambda: distributed.rand(local, 2)),
            "randint": seeded(lambda: distributed.randint(0, 1000, local)),
            "average": distributed.average({"a": torch.tensor(float(rank)),
                                            "b": torch.tensor(10.0 * (rank + 1))}),
            "gather_rows": distributed.gather_rows(torch.full((rank + 1, 2), rank)),
            "gather_dict": distributed.gather_dict({f"r{rank}": rank}),
            "contiguous": [distributed.contiguous_share(n) for n in (4, 5)],
        }
        data = torch.load(out / "data.pt")
        results["ddpm"] = train_ddpm(data["x"], data["y"], out / "ddpm_checkpoint.pt")
        results["progan"] = train_progan(data["x"], data["y"], out / "progan_checkpoint.pt")
        results["others"] = {name: train_other(name, data["x"], data["y"],
                                               out / f"{name}_checkpoint.pt") for name in OTHERS}
        torch.save(results, out / f"{rank}.pt")
        distributed.stop()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory, mnist) -> tuple[Path, list[dict]]:
    """The results of both ranks of a spawned 2-process gloo group, and its folder."""
    folder = tmp_path_factory.mktemp("gloo")
    torch.save({"x": torch.from_numpy(mnist.x_train[:256]),
                "y": torch.from_numpy(mnist.y_train[:256])}, folder / "data.pt")
    context = mp.spawn(_rank, args=(str(folder),), nprocs=2, join=False)
    deadline = time.monotonic() + DEADLINE
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"the 2-process gloo group still ran after {DEADLINE} s")
    return folder, [torch.load(folder / f"{r}.pt", weights_only=False) for r in (0, 1)]


def test_two_ranks_share_the_draws_of_one_process(two_ranks):
    """Interleaving rank 0's and rank 1's rows (0, 2, 4 / 1, 3, 5) gives back the one-process
    draw for the global batch: the same numbers reach the same examples."""
    ranks = two_ranks[1]

    def interleave(key: str) -> torch.Tensor:
        a, b = ranks[0][key], ranks[1][key]
        assert a.shape == b.shape and len(a) == GLOBAL // 2, key
        return torch.stack([a, b], dim=1).flatten(0, 1)  # rows a0, b0, a1, b1, ...

    assert [r["local"] for r in ranks] == [GLOBAL // 2] * 2
    assert torch.equal(interleave("share"), torch.arange(GLOBAL))
    for key, draw in (("randn", lambda: torch.randn(GLOBAL, 3)),
                      ("randn_like", lambda: torch.randn(GLOBAL, 1, 2, 2)),
                      ("rand", lambda: torch.rand(GLOBAL, 2)),
                      ("randint", lambda: torch.randint(0, 1000, (GLOBAL,)))):
        torch.manual_seed(DRAW_SEED)
        assert torch.equal(interleave(key), draw()), key
    for r in ranks:
        assert {k: float(v) for k, v in r["average"].items()} == {"a": 0.5, "b": 15.0}
        assert torch.equal(r["gather_rows"], torch.tensor([[0, 0], [1, 1], [1, 1]]))
        assert r["gather_dict"] == {"r0": 0, "r1": 1}
    for n, first, second in zip((4, 5), ranks[0]["contiguous"], ranks[1]["contiguous"]):
        assert list(range(n))[first] + list(range(n))[second] == list(range(n))


def test_two_ranks_train_the_ddpm_of_one_process(two_ranks, mnist, tmp_path):
    """Compared by what the networks compute, not weight by weight: the U-Net has biases the loss
    cannot see (added just before a GroupNorm of one channel per group, e.g. `up.3.skip` and
    `up.3.block2.3` before `head`), whose gradients are float noise (1e-11); Adam scales that
    noise to steps of the learning rate, so those weights land up to 1e-3 apart between any two
    summation orders, while every output agrees to 1e-5."""
    folder, ranks = two_ranks
    state_one, history_one = train_ddpm(torch.from_numpy(mnist.x_train[:256]),
                                        torch.from_numpy(mnist.y_train[:256]),
                                        tmp_path / "checkpoint.pt")
    (state_0, history_0), (state_1, history_1) = ranks[0]["ddpm"], ranks[1]["ddpm"]
    assert state_one["steps"] == state_0["steps"] == state_1["steps"] == 8
    for rank_state in (state_0, state_1):
        scaled_diffs(state_one, rank_state)  # same structure and settings, same step counts
    # the ranks hold one model: DDP keeps their weights identical, bit for bit
    assert all(torch.equal(a, b) for a, b in zip(flat(state_0).values(), flat(state_1).values())
               if isinstance(a, torch.Tensor))
    assert (folder / "ddpm_checkpoint.pt").exists()  # rank 0 wrote it
    for history in (history_0, history_1):  # every rank has the averaged losses
        assert len(history) == len(history_one) == 2
        for row, row_one in zip(history, history_one):
            assert row["epoch"] == row_one["epoch"]
            assert close(row["loss"], row_one["loss"]), (row, row_one)

    cfg = families.REGISTRY["ddpm"].Config(**DDPM)
    models = []
    for state in (state_one, state_0):
        model = families.build("ddpm", cfg, CPU)
        model.load_state_dict(state)
        models.append(model)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 1, 28, 28, generator=gen)  # x_t at random steps
    t = torch.randint(0, DDPM["timesteps"], (64,), generator=gen)
    with torch.no_grad():
        for name in ("net", "ema"):  # the trained U-Net and the average that samples
            out_one, out_two = ((model.net if name == "net" else model.ema.net)(x, t)
                                for model in models)
            assert out_two.abs().max() > 0.1  # a trained net, not the zero-initialised head
            diff = (out_one - out_two).abs().max().item() / max(1.0, out_one.abs().max().item())
            print(f"ddpm {name}: max output diff {diff:.3g}")
            assert diff < OUTPUT_TOL, f"ddpm {name}: 2 ranks vs 1 process differ by {diff}"


def test_two_ranks_grow_one_progan(two_ranks):
    """Past two level changes, both ranks hold the same weights and the same step count."""
    (_, ranks) = two_ranks
    state_0, state_1 = ranks[0]["progan"], ranks[1]["progan"]
    assert flat(state_0).keys() == flat(state_1).keys()
    assert all(torch.equal(a, b) for a, b in zip(flat(state_0).values(), flat(state_1).values())
               if isinstance(a, torch.Tensor))
    assert state_0["steps"] == state_1["steps"] == PROGAN["max_steps"]


@pytest.mark.parametrize("name", list(OTHERS))
def test_two_ranks_train_one_model_of_every_other_family(two_ranks, name):
    """DDP keeps the ranks' weights, buffers and optimiser states identical, bit for bit."""
    state_0, state_1 = (ranks["others"][name] for ranks in two_ranks[1])
    flat_0, flat_1 = flat(state_0), flat(state_1)
    assert flat_0.keys() == flat_1.keys()
    tensors = [k for k, v in flat_0.items() if isinstance(v, torch.Tensor)]
    assert len(tensors) > 10
    assert all(torch.equal(flat_0[k], flat_1[k]) for k in tensors), name
    if "steps" in state_0:
        assert state_0["steps"] == state_1["steps"] == OTHERS[name]["max_steps"]

