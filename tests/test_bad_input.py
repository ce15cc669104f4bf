"""Bad input to every stage: one `error: ...` line naming the bad key or file, exit code 2, no
traceback, and whatever an earlier run produced is still there, byte for byte.

Most cases run `pipeline.cli.app` through Typer's CliRunner in a copy of a repo where the
classifier and the VAE were trained, sampled and evaluated once (tiny settings); three run the
real `trilemma` executable to show that its stderr carries no traceback either.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from trilemma import families

from badinput import (fails, invoke, params_raw, proc_fails, refused, run_cli,
                      snapshot, unchanged, write_raw)
from conftest import write_params

# ---------------------------------------------------------------------------------------------
# params.yaml: each problem is caught before anything runs, and nothing is written


PARAMS_CASES = [
    # id, overrides (dotted keys), command, names the error line must hold
    ("unknown-top-level-key", {"bogus": 1}, ["train", "vae"], ["bogus", "unknown key"]),
    ("unknown-key-in-family-section", {"vae.bogus": 1}, ["train", "vae"], ["vae.bogus"]),
    ("unknown-key-in-sample-section", {"sample.bogus": 1}, ["sample", "vae"], ["sample.bogus"]),
    ("wrong-type-int", {"vae.epochs": "three"}, ["train", "vae"], ["vae.epochs", "three"]),
    ("wrong-type-bool", {"data.offline": "maybe"}, ["train", "vae"], ["data.offline"]),
    ("wrong-type-families-not-a-list", {"families": "vae"}, ["train", "vae"], ["families"]),
    ("negative-lr", {"vae.lr": -0.001}, ["train", "vae"], ["vae.lr", "-0.001"]),
    ("zero-batch-size", {"vae.batch_size": 0}, ["train", "vae"], ["vae.batch_size"]),
    ("zero-classifier-batch-size", {"classifier.batch_size": 0}, ["train-classifier"],
     ["classifier.batch_size"]),
    ("zero-evaluate-batch-size", {"evaluate.batch_size": 0}, ["evaluate", "vae"],
     ["evaluate.batch_size"]),
    ("unknown-family-in-families", {"families": ["vae", "nosuch"]}, ["train", "vae"],
     ["families", "nosuch"]),
    ("family-listed-twice", {"families": ["vae", "vae"]}, ["train", "vae"], ["families"]),
    ("profile-not-quick-or-full", {"profile": "medium"}, ["train", "vae"], ["profile", "medium"]),
    ("bad-steps-sweep-entry-zero", {"sample.steps_sweep": [1, 0]}, ["sample", "vae"],
     ["sample.steps_sweep"]),
    ("bad-steps-sweep-entry-name", {"sample.steps_sweep": ["ddim"]}, ["sample", "vae"],
     ["sample.steps_sweep"]),
    ("negative-guidance", {"sample.guidance": -1.0}, ["sample", "vae"], ["sample.guidance"]),
    ("negative-guidance-sweep-entry", {"sample.guidance_sweep": [0.0, -2.0]}, ["sample", "vae"],
     ["sample.guidance_sweep"]),
    ("zero-truncation-sweep-entry", {"sample.truncation_sweep": [1.0, 0.0]}, ["sample", "vae"],
     ["sample.truncation_sweep"]),
    ("diffusion-width-below-4", {"ddpm.widths": [2, 8]}, ["train", "ddpm"], ["ddpm.widths"]),
]


@pytest.mark.parametrize("overrides, command, names", [c[1:] for c in PARAMS_CASES],
                         ids=[c[0] for c in PARAMS_CASES])
def test_bad_params_value_names_the_key(repo, overrides, command, names):
    write_params(repo / "params.yaml", overrides)
    refused(repo, command, "params.yaml", *names)


def _drop_vae_section(raw):
    del raw["vae"]
    return raw


def _vae_section_a_list(raw):
    raw["vae"] = [1, 2]
    return raw


def _families_nested_list(raw):
    raw["families"] = [["vae"]]
    return raw


RAW_CASES = [
    # the params mapping from the tiny one, names
    pytest.param(_drop_vae_section, ["families", "vae", "no section"],
                 id="family-in-families-without-section"),
    pytest.param(_vae_section_a_list, ["vae"], id="family-section-not-a-mapping"),
    pytest.param(_families_nested_list, ["families"], id="families-entry-not-a-name"),
]


@pytest.mark.parametrize("edit, names", RAW_CASES)
def test_bad_params_structure_names_the_key(repo, edit, names):
    write_raw(repo, edit(params_raw()))
    refused(repo, ["train", "vae"], "params.yaml", *names)


FILE_CASES = [
    # params.yaml contents (bytes), names
    pytest.param(b"profile: quick\nvae: [unclosed\n", ["params.yaml", "not valid YAML"],
                 id="not-valid-yaml"),
    pytest.param(b"- vae\n- dcgan\n", ["params.yaml", "list"], id="yaml-list"),
    pytest.param(b"", ["params.yaml", "mapping"], id="empty-file"),
    pytest.param(b"profile: \xff\xfe quick\n", ["params.yaml"], id="not-utf8"),
]


@pytest.mark.parametrize("content, names", FILE_CASES)
def test_unreadable_params_file_names_it(repo, content, names):
    (repo / "params.yaml").write_bytes(content)
    refused(repo, ["train", "vae"], *names)


def test_params_file_missing_names_it(repo):
    refused(repo, ["train", "vae", "--params", "nothere.yaml"],
            "nothere.yaml", "no such params file")


def test_params_path_is_a_directory_names_it(repo):
    (repo / "conf").mkdir()
    refused(repo, ["train", "vae", "--params", "conf"], "conf")


# ---------------------------------------------------------------------------------------------
# the command line and the environment


@pytest.mark.parametrize("command", ["train", "sample", "evaluate"])
def test_unknown_family_on_the_command_line(repo, command):
    refused(repo, [command, "nosuch"], "nosuch", "families")


def test_unknown_device_option(repo):
    refused(repo, ["train", "vae", "--device", "tpu"], "device", "tpu")


def test_unknown_device_in_environment(repo, monkeypatch):
    monkeypatch.setenv("TRILEMMA_DEVICE", "gpu0")
    refused(repo, ["sample", "vae"], "device", "gpu0")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is visible here")
def test_device_cuda_without_a_gpu(repo):
    refused(repo, ["train", "vae", "--device", "cuda"], "device", "cuda")


# ---------------------------------------------------------------------------------------------
# data/images.npz


def _flip_middle(blob: bytes) -> bytes:
    mid = len(blob) // 2
    return blob[:mid] + bytes(b ^ 0xFF for b in blob[mid:mid + 64]) + blob[mid + 64:]


def _first_half(blob: bytes) -> bytes:
    return blob[:len(blob) // 2]


def _npz_without_x_test(blob: bytes) -> bytes:
    import io

    with np.load(io.BytesIO(blob)) as npz:
        arrays = {k: npz[k] for k in npz.files if k != "x_test"}
    out = io.BytesIO()
    np.savez(out, **arrays)
    return out.getvalue()


@pytest.mark.parametrize("damage", [_flip_middle, _first_half, _npz_without_x_test],
                         ids=["bytes-flipped", "truncated", "array-missing"])
def test_damaged_data_file_names_it(repo, mnist_npz, damage):
    data = repo / "data" / "images.npz"
    data.unlink()  # the symlink to the session's copy: never damage that one
    data.write_bytes(damage(mnist_npz.read_bytes()))
    refused(repo, ["train", "vae"], "data/images.npz")


@pytest.mark.parametrize("command", [["train", "vae"], ["train-classifier"], ["evaluate", "vae"]],
                         ids=["train", "train-classifier", "evaluate"])
def test_data_file_missing_says_run_download(repo, command):
    (repo / "data" / "images.npz").unlink()
    refused(repo, command, "data/images.npz", "trilemma download")


# ---------------------------------------------------------------------------------------------
# model files


@pytest.mark.parametrize("command, missing, says", [
    (["evaluate", "vae"], "models/classifier.pt", "trilemma train-classifier"),
    (["evaluate", "vae"], "models/test_embedding.pt", "trilemma train-classifier"),
    (["sample", "vae"], "models/vae.pt", "trilemma train vae")],
    ids=["evaluate-classifier", "evaluate-test-embedding", "sample-model"])
def test_a_missing_model_file_says_which_stage_writes_it(repo, command, missing, says):
    (repo / missing).unlink()
    refused(repo, command, missing, says)


def test_classifier_file_corrupted(repo):
    (repo / "models" / "classifier.pt").write_bytes(b"not a checkpoint at all\n" * 10)
    refused(repo, ["evaluate", "vae"], "models/classifier.pt")


def test_test_embedding_corrupted_or_for_another_test_set(repo):
    path = repo / "models" / "test_embedding.pt"
    good = path.read_bytes()
    path.write_bytes(b"\x00" * 100)
    refused(repo, ["evaluate", "vae"], "models/test_embedding.pt", "not a readable embedding")
    path.write_bytes(good)
    write_params(repo / "params.yaml", {"data.test_size": 150})  # the embedding holds 200
    refused(repo, ["evaluate", "vae"], "models/test_embedding.pt", "the test set has 150")


def test_model_written_by_other_settings(repo):
    write_params(repo / "params.yaml", {"vae.lr": 0.005})
    refused(repo, ["sample", "vae"], "models/vae.pt", "trilemma train vae",
            "other settings than the params' `vae` (vae.lr: ", " in the file, 0.005 in the params)")


def test_model_saved_before_a_setting_existed_loads_with_its_default(repo):
    """A setting added to a family's Config later (as `ema_decay` was to the plain GANs) is not
    in older files; the file was trained with its default, so it still loads. A setting the
    Config no longer has is another matter: refused."""
    model = repo / "models" / "vae.pt"
    saved = torch.load(model, weights_only=True)
    config = families.REGISTRY["vae"].Config(**saved["config"])
    added = next(name for name, field in type(config).model_fields.items()
                 if getattr(config, name) == field.default)  # saved at its default
    torch.save({**saved, "config": {k: v for k, v in saved["config"].items() if k != added}}, model)
    result = invoke("sample", "vae")
    assert result.exit_code == 0, result.output
    torch.save({**saved, "config": {**saved["config"], "retired": 1}}, model)
    refused(repo, ["sample", "vae"], "models/vae.pt", "trilemma train vae",
            "trained with settings this version does not accept (vae.retired: unknown key)")


def _edited(edit):
    """A model file whose weights were changed by `edit(state)`: it loads, but does not fit."""
    def damage(blob: bytes) -> bytes:
        import io

        saved = torch.load(io.BytesIO(blob), weights_only=True)
        edit(saved["state"]["vae"])
        out = io.BytesIO()
        torch.save(saved, out)
        return out.getvalue()
    return damage


def _garbage(blob: bytes) -> bytes:
    return b"not a model file\n" * 20


def _list_checkpoint(blob: bytes) -> bytes:
    import io

    out = io.BytesIO()
    torch.save([1, 2, 3], out)
    return out.getvalue()


@pytest.mark.parametrize("damage", [
    pytest.param(_garbage),
    _first_half,
    pytest.param(_list_checkpoint),
], ids=["garbage", "truncated", "holds-a-list"])
def test_model_file_corrupted(repo, damage):
    model = repo / "models" / "vae.pt"
    model.write_bytes(damage(model.read_bytes()))
    refused(repo, ["sample", "vae"], "models/vae.pt")


@pytest.mark.parametrize("edit, says", [
    (lambda weights: weights.pop(next(iter(weights))), "Missing key(s)"),
    (lambda weights: weights.update({next(iter(weights)): torch.zeros(3)}), "size mismatch"),
], ids=["a-weight-missing", "a-weight-of-another-shape"])
def test_model_file_whose_weights_do_not_fit_the_network(repo, edit, says):
    model = repo / "models" / "vae.pt"
    model.write_bytes(_edited(edit)(model.read_bytes()))
    line = refused(repo, ["sample", "vae"], "models/vae.pt", "trilemma train vae")
    assert "its weights do not fit the vae network" in line and says in line


def _nan(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.clone().view(-1).index_fill(0, torch.tensor([1]), math.nan).view(tensor.shape)


@pytest.mark.parametrize("change, says", [
    (_nan, "holds NaN or infinite values"),
    (lambda tensor: tensor.long(), "is torch.int64, not torch.float32"),  # would load, cast
], ids=["a-nan-weight", "an-integer-weight"])
def test_model_file_with_a_damaged_weight_is_refused_before_it_samples(repo, change, says):
    def damage(weights):
        key = next(k for k, v in weights.items() if v.is_floating_point() and v.numel() > 1)
        weights[key] = change(weights[key])
        damage.key = key
    model = repo / "models" / "vae.pt"
    model.write_bytes(_edited(damage)(model.read_bytes()))
    line = refused(repo, ["sample", "vae"], "models/vae.pt", "trilemma train vae")
    assert f"vae.{damage.key} {says}" in line


def test_another_familys_model_file_is_named_as_such(repo):
    model = repo / "models" / "vae.pt"
    saved = torch.load(model, weights_only=True)
    torch.save({**saved, "family": "ddpm"}, model)  # as if ddpm's model were copied there
    line = refused(repo, ["sample", "vae"], "models/vae.pt", "trilemma train vae")
    assert "a model of 'ddpm', not of 'vae'" in line
    torch.save({k: v for k, v in saved.items() if k != "family"}, model)  # no family at all
    line = refused(repo, ["sample", "vae"], "models/vae.pt", "trilemma train vae")
    assert "not a trilemma" in line and "None" not in line


# ---------------------------------------------------------------------------------------------
# outputs that cannot be written: `reports` is a file (root ignores chmod, so no permissions)


def _reports_a_file(root: Path) -> dict[str, str]:
    shutil.rmtree(root / "reports")
    (root / "reports").write_text("not a directory\n")
    return snapshot(root)


def test_train_with_unwritable_reports(repo):
    before = _reports_a_file(repo)
    assert "models/vae.pt" in before
    fails(invoke("train", "vae"), "reports")
    unchanged(repo, before)  # models/vae.pt untouched: the stage stopped before saving
    assert (repo / "reports").read_text() == "not a directory\n"


def test_evaluate_with_unwritable_reports(repo):
    before = _reports_a_file(repo)
    fails(invoke("evaluate", "vae"), "reports")
    unchanged(repo, before)


def test_sample_with_unwritable_samples_dir(repo):
    (repo / "samples" / "vae.npz").unlink()
    (repo / "samples").rmdir()
    (repo / "samples").write_text("not a directory\n")
    refused(repo, ["sample", "vae"], "samples")


# ---------------------------------------------------------------------------------------------
# the real executable: the error line and nothing like a traceback on the process's stderr


def test_subprocess_unknown_params_key(repo):
    write_params(repo / "params.yaml", {"vae.bogus": 1})
    before = snapshot(repo)
    proc_fails(run_cli(repo, "train", "vae"), "params.yaml", "vae.bogus")
    unchanged(repo, before)


def test_subprocess_truncated_data_file(repo, mnist_npz):
    data = repo / "data" / "images.npz"
    data.unlink()
    data.write_bytes(_first_half(mnist_npz.read_bytes()))
    before = snapshot(repo)
    proc_fails(run_cli(repo, "train", "vae"), "data/images.npz")
    unchanged(repo, before)


def test_subprocess_truncated_model_file(repo):
    model = repo / "models" / "vae.pt"
    model.write_bytes(_first_half(model.read_bytes()))
    before = snapshot(repo)
    proc_fails(run_cli(repo, "sample", "vae"), "models/vae.pt")
    unchanged(repo, before)
