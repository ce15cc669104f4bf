"""params.yaml validation: every mistake is one ConfigError line naming the key."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from conftest import base_params, every_section, write_params
from trilemma import families, i2i
from trilemma.config import load_params, parse_params
from trilemma.errors import ConfigError
from trilemma.params_file import with_overrides
from trilemma.registry import names


def test_project_params_file_is_valid():
    p = parse_params(base_params())
    assert p.families == names("generator")  # every registered generator, in registry order
    for name in p.families:
        assert families.config(p, name).epochs >= 1, name
    assert p.i2i_families == names("translator")
    for name in p.i2i_families:
        assert i2i.config(p, name).epochs >= 1, name
    assert set(p.control.families) <= set(p.families)


def test_full_profile_of_the_project_params_is_valid():
    p = parse_params({**base_params(), "profile": "full"})
    ddpm = families.config(p, "ddpm")
    assert ddpm.widths == [64, 128, 128] and ddpm.max_steps is None
    assert p.sample.steps_sweep[-1] == "ddpm" and p.sample.sweep_size() == 5000


@pytest.mark.parametrize("overrides, key", [
    ({"colour": "blue"}, "colour"),
    ({"classifier.depth": 3}, "classifier.depth"),
    ({"vae.epochs": "ten"}, "vae.epochs"),
    ({"classifier.lr": -0.1}, "classifier.lr"),
    ({"vae.lr": -1e-3}, "vae.lr"),
    ({"vae.batch_size": 0}, "vae.batch_size"),
    ({"evaluate.batch_size": 0}, "evaluate.batch_size"),
    ({"families": ["vae", "nosuch"]}, "nosuch"),
    ({"profile": "fast"}, "profile"),
    ({"data.train_size": 0}, "data.train_size"),
    ({"ddpm.widths": [2, 4]}, "ddpm.widths"),
    ({"ddpm.patch": 3}, "ddpm.patch"),
    ({"ddpm.max_steps": 0}, "ddpm.max_steps"),
    ({"cfg_diffusion.label_dropout": 1.5}, "cfg_diffusion.label_dropout"),
    ({"sample.steps_sweep": [10, "ddim"]}, "sample.steps_sweep.1"),
    ({"sample.guidance": -1}, "sample.guidance"),
    ({"sample.sampler": "euler"}, "sample.sampler"),
], ids=["unknown-top-level", "unknown-in-classifier", "wrong-type", "negative-lr",
        "negative-family-lr", "zero-batch-size", "zero-eval-batch", "unknown-family",
        "bad-profile", "train-size-zero", "tiny-unet-width", "bad-patch", "zero-max-steps",
        "label-dropout-above-one", "steps-sweep-entry", "negative-guidance", "unknown-sampler"])
def test_bad_value_raises_config_error_naming_the_key(overrides, key):
    raw = with_overrides(base_params(), overrides)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as err:
        every_section(raw)  # a family's section: when its stage loads it
    assert "\n" not in str(err.value)


def test_family_listed_without_section_is_rejected():
    raw = base_params()
    del raw["vae"]
    with pytest.raises(ConfigError, match="vae") as err:
        parse_params(raw)
    assert "section" in str(err.value)


def test_family_listed_twice_is_rejected():
    with pytest.raises(ConfigError, match="twice"):
        parse_params(with_overrides(base_params(), {"families": ["vae", "vae"]}))


def test_non_mapping_params_is_rejected():
    with pytest.raises(ConfigError, match="mapping"):
        parse_params(["vae"])


def test_invalid_yaml_names_file_and_line(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("profile: quick\nvae: {epochs: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML") as err:
        load_params(path)
    assert str(path) in str(err.value) and "line" in str(err.value)


def test_missing_params_file_is_config_error(tmp_path):
    with pytest.raises(ConfigError, match="no such params file"):
        load_params(tmp_path / "absent.yaml")


def test_profile_picks_value_from_quick_full_mapping():
    raw = base_params()
    assert set(raw["classifier"]["epochs"]) == {"quick", "full"}
    quick = parse_params(with_overrides(raw, {"profile": "quick"}))
    full = parse_params(with_overrides(raw, {"profile": "full"}))
    assert quick.classifier.epochs == raw["classifier"]["epochs"]["quick"]
    assert full.classifier.epochs == raw["classifier"]["epochs"]["full"]
    assert quick.classifier.epochs != full.classifier.epochs
    assert families.config(full, "vae").epochs == raw["vae"]["epochs"]["full"]


def test_reference_profile_takes_its_own_value_or_quick_s():
    raw = base_params()
    ref = parse_params(with_overrides(raw, {"profile": "reference"}))
    # named: train.probes has a reference entry; not named: classifier.epochs falls back to quick
    assert ref.train.probes == raw["train"]["probes"]["reference"] != raw["train"]["probes"]["quick"]
    assert "reference" not in raw["classifier"]["epochs"]
    assert ref.classifier.epochs == raw["classifier"]["epochs"]["quick"]
    assert families.config(ref, "ddpm").max_steps == raw["ddpm"]["max_steps"]["reference"]


def test_profile_mapping_without_quick_and_full_names_its_key():
    raw = with_overrides(base_params(), {"vae.epochs": {"reference": 3, "full": 9}})
    with pytest.raises(ConfigError, match=r"^params.yaml: vae.epochs: a profile mapping names "
                                          r"quick and full"):
        parse_params(raw)


def test_profile_mapping_with_a_misspelt_profile_names_it_and_the_profiles():
    raw = with_overrides(base_params(), {"vae.epochs": {"quick": 2, "refrence": 8, "full": 8}})
    with pytest.raises(ConfigError, match=r"^params.yaml: vae.epochs: unknown profile 'refrence' "
                                          r"in a profile mapping \(profiles: quick, reference, "
                                          r"full\)$"):
        parse_params(raw)


@pytest.mark.parametrize("overrides, says", [
    ({"full": 40}, "full: unknown key"),  # a stray profile name is no profile mapping
    ({"sample.full": 40}, "sample.full: unknown key"),
    ({"sample.n": {"quick": 2}}, "sample.n: a profile mapping names quick and full"),
])
def test_a_section_with_a_stray_profile_key_is_not_read_as_a_profile_mapping(overrides, says):
    with pytest.raises(ConfigError, match=f"^params.yaml: {says}"):
        parse_params(with_overrides(base_params(), overrides))


@pytest.mark.parametrize("overrides, says", [
    ({"latent_diffusion.downsample": 3}, "latent_diffusion: downsample must be a power of two "
                                         "(got 3)"),
    ({"latent_diffusion.ae_steps": 900, "latent_diffusion.max_steps": 800},
     "latent_diffusion: ae_steps 900 leaves none of max_steps 800 to the diffusion"),
], ids=["downsample", "ae-steps"])
def test_a_check_across_a_section_names_its_keys_not_the_whole_section(overrides, says):
    p = parse_params(with_overrides(base_params(), overrides))
    with pytest.raises(ConfigError) as err:
        families.config(p, "latent_diffusion")
    assert str(err.value) == f"params.yaml: {says}"


def test_control_without_a_guidance_scale_is_refused():
    raw = with_overrides(base_params(), {"control.guidance_scales": []})
    with pytest.raises(ConfigError, match=r"^params.yaml: control.guidance_scales: must list at "
                                          r"least one scale"):
        parse_params(raw)


def test_reference_profile_changes_only_lengths_warmups_lr_decay_and_ema():
    """reference is quick's networks and recipes trained longer: every family setting it
    changes is a training length, a warm-up, the lr's decay over the length or an EMA decay
    (networks, objectives and samplers stay quick's)."""
    raw = base_params()
    quick = parse_params(raw)
    ref = parse_params(with_overrides(raw, {"profile": "reference"}))
    allowed = {"epochs", "max_steps", "ae_steps", "warmup_steps", "resolution_steps",
               "fade_steps", "ema_decay", "lr_schedule"}
    pairs = [(families.config(quick, n), families.config(ref, n)) for n in quick.families]
    pairs += [(i2i.config(quick, n), i2i.config(ref, n)) for n in quick.i2i_families]
    for a, b in ((a.model_dump(), b.model_dump()) for a, b in pairs):
        assert {k for k in a if a[k] != b[k]} <= allowed


def test_family_config_is_validated_and_unknown_family_lookup_fails():
    p = parse_params(with_overrides(base_params(), {"vae.latent_dim": 2}))
    assert families.config(p, "vae").latent_dim == 2
    with pytest.raises(ConfigError, match="gan"):
        families.config(p, "gan")


def test_cli_unknown_key_exits_2_with_one_line_error(tmp_path, monkeypatch):
    from pipeline.cli import app

    monkeypatch.chdir(tmp_path)
    write_params(tmp_path / "params.yaml", {"vae.colour": "red"})
    result = CliRunner().invoke(app, ["train", "vae", "--dry-run"])
    assert result.exit_code == 2
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "vae.colour" in errors[0]
    assert "Traceback" not in result.output


def test_a_family_section_is_validated_when_its_family_loads_not_before():
    """Parsing checks the lists and that each listed section is a mapping; the section's keys are
    its family's (its Config), read when a stage loads that family, before it writes anything."""
    raw = with_overrides(base_params(), {"ddpm.colour": "red"})
    p = parse_params(raw)
    assert families.config(p, "vae").epochs >= 1  # another family's stage runs
    with pytest.raises(ConfigError, match=r"^params\.yaml: ddpm\.colour: unknown key$"):
        families.config(p, "ddpm")


def test_a_generator_is_not_a_translator():
    p = parse_params(base_params())
    with pytest.raises(ConfigError, match="not in params.yaml `i2i_families`"):
        i2i.config(p, "ddpm")
    with pytest.raises(ConfigError, match="not in params.yaml `families`"):
        families.config(p, "srgan")


PARSE_PROBE = """
import sys
from trilemma.config import load_params
load_params({path!r})
print(",".join(m for m in ("torch", "matplotlib") if m in sys.modules))
"""


def test_parsing_the_params_imports_neither_torch_nor_matplotlib():
    import subprocess
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "params.yaml"
    out = subprocess.run([sys.executable, "-c", PARSE_PROBE.format(path=str(path))], check=True,
                         capture_output=True, text=True, timeout=120).stdout.strip()
    assert out == ""
