"""Shared fixtures: the real MNIST written once per session, and a tiny repo to run stages in."""

from __future__ import annotations

import copy
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

from trilemma import tracking
from trilemma.params_file import with_overrides
from trilemma.registry import REGISTRY, names

ROOT = Path(__file__).resolve().parents[1]

# the tests' tiny settings: each registered family's own (its registry entry's `tiny`), and the
# shared sections'
TINY = {
    "data.train_size": 256,
    "data.test_size": 200,
    "data.offline": True,
    "classifier.epochs": 1,
    "classifier.width": 8,
    "classifier.features": 16,
    "classifier.batch_size": 64,
    **{f"{name}.{key}": value for name, entry in REGISTRY.items()
       for key, value in entry.tiny.items()},
    "sample.truncation_sweep": [1.0],
    "sample.sweep_n": 32,
    "sample.steps": 2,
    "sample.steps_sweep": [1, "ddpm"],
    "sample.guidance_sweep": [0.0],
    "sample.n": 64,
    "sample.batch_size": 32,
    "sample.grid": 16,
    "evaluate.batch_size": 100,
    "train.probes": 0,  # learning curves need the judge first: tests/test_curves.py turns them on
    "control.referee_width": 4,
    "control.per_class": 2,
    "control.steps": 3,
    "control.guidance_scales": [0.0, 2.0],
    "control.guidance_n": 20,
    "control.batch_size": 16,
}


# Under pytest-xdist (`make test`: `pytest -n logical --dist loadfile`) a worker runs whole
# groups: a test file, or all the files that share one of these session fixtures, so each is built
# once.
SHARED_FIXTURES = {
    "pipeline_chain": ("test_cli.py", "test_generate.py", "test_model_registry.py"),
    "trained": ("test_bad_input.py", "test_bad_params.py", "test_bad_samples.py", "test_faults.py",
                "test_stylegan.py"),
}
# the files that take longest (`pytest --durations`), handed out first so the workers end together
SLOWEST_FIRST = ("test_e2e.py", "test_parallel_experiments.py", "test_distributed.py",
                 "test_cli.py", "test_reproducibility.py", "test_resume.py", "test_repro.py")


def xdist_group(file_name: str) -> str:
    """The group a test file runs in under pytest-xdist: its shared fixture's, or its own."""
    return next((fixture for fixture, files in SHARED_FIXTURES.items() if file_name in files),
                file_name)


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist: without it (`-p no:xdist`), unused
def pytest_xdist_make_scheduler(config, log):
    """`--dist loadfile`, with the files of one shared session fixture kept together (xdist's
    `loadgroup` marks do not reach the scheduler under pytest 9: it renames tests by a field that
    pytest 9 no longer reads), in the workers' order: the slowest groups first."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ByFileAndSharedFixture(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return xdist_group(Path(nodeid.split("::", 1)[0]).name)

    config.option.loadscopereorder = False  # keep the collection's order (below)
    return ByFileAndSharedFixture(config, log)


def pytest_collection_modifyitems(config, items):
    if not hasattr(config, "workerinput"):  # not an xdist worker: run in the usual order
        return
    for item in items:
        for fixture, files in SHARED_FIXTURES.items():
            if fixture in item.fixturenames and item.path.name not in files:
                # a failing test says it (an error raised here only crashes the worker)
                item.runtest = lambda f=fixture, n=item.path.name: pytest.fail(
                    f"{n} uses the session fixture {f}: list it in conftest.py's "
                    "SHARED_FIXTURES", pytrace=False)
    place = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    rank: dict[str, int] = {}  # a group's place: its earliest file's in SLOWEST_FIRST
    for item in items:
        group, last = xdist_group(item.path.name), len(SLOWEST_FIRST)
        rank[group] = min(rank.get(group, last), place.get(item.path.name, last))
    items.sort(key=lambda item: rank[xdist_group(item.path.name)])  # stable: files keep order


# every family of the registry (params.yaml lists them in this order) (control has stage tests
# of its own, and so has evaluate-i2i; test_e2e runs every stage template under DVC)
FAMILIES = names("generator")
I2I = names("translator")  # the translators, trained in the chain for their models
CHAIN = [["download"], ["train-classifier"],
         *[[stage, family] for family in FAMILIES for stage in ("train", "sample", "evaluate")],
         *[["train-i2i", name] for name in I2I], ["report"]]


def base_params() -> dict[str, Any]:
    """The project's params.yaml as a plain mapping."""
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def every_section(raw: dict[str, Any]):
    """Params parsed from `raw` with every listed family's section validated by its Config (as
    each family's stage does when it starts)."""
    from trilemma import loader
    from trilemma.config import parse_params

    p = parse_params(raw)
    for kind, listed in (("generator", p.families), ("translator", p.i2i_families)):
        for name in listed:
            loader.config(p, name, kind)
    return p


def write_params(path: Path, overrides: dict[str, Any] | None = None,
                 base: dict[str, Any] | None = None) -> Path:
    """Write params.yaml = project params + TINY + `overrides` (dotted keys) to `path`."""
    raw = with_overrides(base if base is not None else base_params(), {**TINY, **(overrides or {})})
    if "families" in (overrides or {}) and "control.families" not in overrides \
            and isinstance(raw["families"], list):  # control steers trained families only
        raw["control"]["families"] = [f for f in raw["control"]["families"]
                                      if f in raw["families"]]
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """Tiny models run fastest on one thread, and do not slow to a crawl when the 2 cores are busy."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session", autouse=True)
def mlflow_in_process():
    """Stages run in-process log their MLflow runs themselves, as any process that has MLflow
    loaded does (tracking.Run.close), instead of starting a tracker that imports it again each
    time; real commands (test_tracking, test_e2e, test_parallel_experiments) use trackers."""
    import mlflow  # noqa: F401


@pytest.fixture(autouse=True)
def trackers_done():
    """Each test ends with its stages' MLflow runs in their stores: no tracker process of one
    test writes while the next one runs."""
    yield
    tracking.wait_for_trackers()


@pytest.fixture(scope="session")
def mnist():
    """The packaged MNIST, loaded once (a few seconds)."""
    from trilemma.data import load_packaged

    return load_packaged()


@pytest.fixture(scope="session")
def mnist_npz(tmp_path_factory, mnist) -> Path:
    """The real data set as a verified npz, written once per session."""
    from trilemma.data import save_npz

    path = tmp_path_factory.mktemp("data") / "images.npz"
    save_npz(mnist, path)
    return path


def make_repo(root: Path, npz: Path) -> Path:
    """A repo layout under `root`: data/images.npz linked to `npz`, tiny params.yaml."""
    (root / "data").mkdir(parents=True, exist_ok=True)
    os.symlink(npz, root / "data" / "images.npz")
    write_params(root / "params.yaml")
    return root


@pytest.fixture(scope="session")
def pipeline_chain(tmp_path_factory):
    """The whole pipeline (CHAIN) run once per session, in order, in a fresh repo without data:
    (root, {"stage [family]": result}). Stops at the first failing stage. Shared by the stage
    tests (test_cli) and the tests of what the trained models give (test_generate,
    test_model_registry)."""
    from typer.testing import CliRunner

    from pipeline.cli import app

    root = tmp_path_factory.mktemp("repo")
    write_params(root / "params.yaml", {"families": FAMILIES, "i2i_families": I2I})
    results = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.setenv("TRILEMMA_DEVICE", "cpu")
        for args in CHAIN:
            results[" ".join(args)] = result = CliRunner().invoke(app, args)
            if result.exit_code != 0:
                break
        tracking.wait_for_trackers()
    return root, results


@pytest.fixture
def tiny_repo(tmp_path, mnist_npz, monkeypatch) -> Path:
    """A fresh working directory with the data in place and tiny params; MLflow writes into it."""
    make_repo(tmp_path, mnist_npz)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("TRILEMMA_DEVICE", "cpu")
    return tmp_path


@pytest.fixture
def set_params(tiny_repo) -> Callable[..., Path]:
    """set_params({'vae.epochs': 2}) rewrites the tiny repo's params.yaml with those overrides."""

    def write(overrides: dict[str, Any] | None = None) -> Path:
        return write_params(tiny_repo / "params.yaml", overrides)

    return write


def params_of(model) -> dict[str, Any]:
    """Every tensor of a model's nets (`model.nets`), detached copies keyed net.name."""
    return {f"{net}.{k}": v.detach().clone() for net, module in model.nets.items()
            for k, v in module.state_dict().items()}


def same_params(a: dict[str, Any], b: dict[str, Any]) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def assert_saved_model_loads_only_with_its_config(model, save: Callable[[Any, Path], None],
                                                 load: Callable[[Any, Path], Any], cfg, other_cfg,
                                                 folder: Path, missing: str) -> None:
    """`save(cfg, path)` then `load(cfg, path)` gives back the same parameters; `load` under
    `other_cfg` is refused ("other settings"), and a missing file with a message matching
    `missing`."""
    from trilemma.errors import DataError

    save(cfg, folder / "m.pt")
    assert same_params(params_of(load(cfg, folder / "m.pt")), params_of(model))
    with pytest.raises(DataError, match="other settings"):
        load(other_cfg, folder / "m.pt")
    with pytest.raises(DataError, match=missing):
        load(cfg, folder / "absent.pt")


def assert_resume_repeats_the_next_step(build: Callable[..., Any], batch, steps: int) -> None:
    """After `steps` train steps, a model rebuilt from another seed, given the state dict and the
    RNG state, takes the next step exactly as the original: the same losses, the same weights.
    `build(seed)` makes a model."""
    import torch

    model = build(0)
    for _ in range(steps):
        model.train_step(*batch)
    state, rng = copy.deepcopy(model.state_dict()), torch.get_rng_state()
    losses = model.train_step(*batch)
    expected = params_of(model)
    resumed = build(1)
    resumed.load_state_dict(state)
    torch.set_rng_state(rng)
    again = resumed.train_step(*batch)
    assert again.keys() == losses.keys() and all(torch.equal(again[k], losses[k]) for k in losses)
    assert same_params(params_of(resumed), expected)


@pytest.fixture(scope="session")
def trained(tmp_path_factory, mnist_npz) -> Path:
    """A tiny repo after train-classifier, train vae, sample vae and evaluate vae: the bad-input
    and fault tests each start from a copy (`repo`)."""
    from typer.testing import CliRunner

    from pipeline.cli import app

    root = make_repo(tmp_path_factory.mktemp("trained"), mnist_npz)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.setenv("TRILEMMA_DEVICE", "cpu")
        for args in (["train-classifier"], ["train", "vae"], ["sample", "vae"],
                     ["evaluate", "vae"]):
            result = CliRunner().invoke(app, args)
            assert result.exit_code == 0, (args, result.output)
        tracking.wait_for_trackers()  # the copies (`repo`) get a store that nobody writes
    for path in ("models/classifier.pt", "models/vae.pt", "samples/vae.npz",
                 "reports/train/vae/metrics.json", "reports/eval/vae/metrics.json"):
        assert (root / path).is_file(), path
    return root


@pytest.fixture
def repo(trained, tmp_path, monkeypatch) -> Path:
    """A fresh copy of the trained repo as the working directory (data/ stays a symlink)."""
    root = tmp_path / "repo"
    shutil.copytree(trained, root, symlinks=True)
    monkeypatch.chdir(root)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("TRILEMMA_DEVICE", "cpu")
    return root
