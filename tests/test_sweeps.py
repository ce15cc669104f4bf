"""Sampling sweeps (knob settings, sweep rows), FID over several sample sets, per-class tables and
the validation of the truncation params."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import base_params

from pipeline.sample import as_float, describe, knob_settings
from trilemma import metrics
from trilemma.classifier import Judge
from trilemma.config import SampleConfig, parse_params
from trilemma.errors import ConfigError
from trilemma.evaluation import SCORE_COLUMNS, SWEEP_COLUMNS, metrics_json, scored_sets, sweep_rows
from trilemma.params_file import with_overrides

CPU = torch.device("cpu")


class Knobbed:
    """Stands in for a family: `knob_settings` only reads `knobs`."""

    def __init__(self, knobs: tuple[str, ...], timesteps: int = 1000):
        self.knobs, self.timesteps = knobs, timesteps


# --- knob settings ---------------------------------------------------------------------------

def test_knob_settings_leave_the_main_value_out_of_the_sweep():
    cfg = SampleConfig(n=16, truncation=1.0, truncation_sweep=[1.5, 1.0, 0.5])
    main, sweep = knob_settings(Knobbed(("truncation",)), cfg)
    assert main == {"truncation": 1.0}
    assert sweep == [("truncation", 1.5), ("truncation", 0.5)]


def test_knob_settings_keep_no_truncation_as_the_main_setting():
    cfg = SampleConfig(n=16, truncation=None, truncation_sweep=[1.0, 0.5])
    main, sweep = knob_settings(Knobbed(("truncation",)), cfg)
    assert main == {"truncation": None}
    assert sweep == [("truncation", 1.0), ("truncation", 0.5)]
    assert as_float(main["truncation"]) == math.inf  # how the samples file stores it


def test_knob_settings_are_empty_for_a_family_without_knobs():
    cfg = SampleConfig(n=16, truncation=0.5, truncation_sweep=[1.0])
    assert knob_settings(Knobbed(()), cfg) == ({}, [])


# --- sweep rows ------------------------------------------------------------------------------

def score(v: float, accuracy: bool = False, n: int = 100) -> dict:
    """What `metrics.score_set` says of one set, every score a different function of `v`."""
    return {"n": n, "fid_classifier": 10 * v, "kid_classifier": v / 1000, "kid_classifier_std": 1.0,
            "is_classifier": v, "is_classifier_std": 0.5, "precision": v / 10,
            "recall": 1 - v / 10, "min_class_fraction": v / 100, "class_kl_uniform": v / 7,
            "histogram": np.full(10, 0.1), "predictions": np.zeros(n, np.int64),
            **({"label_accuracy": v / 10} if accuracy else {})}


def scores(*values: float, accuracy: bool = False, n: int = 100) -> list[dict]:
    return [score(v, accuracy, n) for v in values]


def test_sweep_rows_sort_truncation_loose_to_tight_with_the_main_row_flagged():
    blob = {"knob_truncation": np.float64(math.inf), "label_truncation": np.str_("none"),
            "images_per_second": np.float64(100.0),
            "sweep_knob": np.array(["truncation", "truncation"]),
            "sweep_value": np.array([0.5, 1.5]), "sweep_label": np.array(["0.5", "1.5"]),
            "sweep_images_per_second": np.array([90.0, 80.0])}
    rows = sweep_rows(blob, scores(1, 3, 2))
    assert [(r["setting"], r["main"], r["fid_classifier"]) for r in rows] == [
        ("none", True, 10.0), ("1.5", False, 20.0), ("0.5", False, 30.0)]
    assert [r["samples_per_second"] for r in rows] == [100.0, 80.0, 90.0]
    assert [r["is_classifier"] for r in rows] == [1, 2, 3]
    assert all(r["knob"] == "truncation" and r["label_accuracy"] is None for r in rows)
    # every column of the sweep table, each score of its own set, rounded to 6 decimals
    for row, v in zip(rows, [1, 2, 3]):
        assert list(row) == SWEEP_COLUMNS
        expected = score(v)
        assert {k: row[k] for k in SCORE_COLUMNS if k != "label_accuracy"} == {
            k: round(expected[k], 6) for k in SCORE_COLUMNS if k != "label_accuracy"}
    assert rows[1]["class_kl_uniform"] == 0.285714  # 2/7


def test_sweep_rows_give_every_knob_a_main_row_and_sort_steps_ascending():
    blob = {"knob_steps": np.float64(10.0), "label_steps": np.str_("ddim 10"),
            "knob_guidance": np.float64(3.0), "label_guidance": np.str_("3"),
            "images_per_second": np.float64(50.0),
            "sweep_knob": np.array(["steps", "steps", "guidance"]),
            "sweep_value": np.array([1000.0, 5.0, 0.0]),
            "sweep_label": np.array(["ddpm 1000", "ddim 5", "0"]),
            "sweep_images_per_second": np.array([1.0, 100.0, 60.0])}
    # set 0: main images at n; set 1: their first sweep_n (main_index); sets 2..: the sweeps
    rows = sweep_rows(blob, scores(9, 1, 2, 3, 4, accuracy=True), 1)
    assert [(r["knob"], r["setting"], r["main"], r["fid_classifier"]) for r in rows] == [
        ("guidance", "0", False, 40.0), ("guidance", "3", True, 10.0),
        ("steps", "ddim 5", False, 30.0), ("steps", "ddim 10", True, 10.0),
        ("steps", "ddpm 1000", False, 20.0)]
    assert [r["label_accuracy"] for r in rows] == [0.4, 0.1, 0.3, 0.1, 0.2]
    assert [r["recall"] for r in rows] == [0.6, 0.9, 0.7, 0.9, 0.8]
    assert [r["samples_per_second"] for r in rows] == [60.0, 50.0, 100.0, 50.0, 1.0]


def test_sweep_rows_without_a_sweep_is_the_main_row_alone():
    blob = {"knob_truncation": np.float64(1.0), "label_truncation": np.str_("1"),
            "images_per_second": np.float64(12.345)}
    rows = sweep_rows(blob, scores(4))
    assert len(rows) == 1
    assert rows[0]["main"] and rows[0]["value"] == 1.0 and rows[0]["samples_per_second"] == 12.35
    assert rows[0]["n"] == 100


def test_metrics_json_rounds_every_score_and_adds_bootstrap_histogram_and_inception():
    main = {**score(1 / 3, accuracy=True), "histogram": np.array([0.2, 0.8] + [0.0] * 8)}
    inception = {"fid_inception": None, "is_inception": None, "is_inception_std": None,
                 "inception_note": "no weights file given"}
    result = metrics_json(main, {"std": 0.1234567, "low": 1.0, "high": 2.0000004}, inception)
    assert result["fid_classifier"] == 3.333333 and result["class_kl_uniform"] == 0.047619
    assert result["label_accuracy"] == 0.033333 and result["kid_classifier_std"] == 1.0
    assert (result["fid_classifier_std"], result["fid_classifier_ci_low"],
            result["fid_classifier_ci_high"]) == (0.123457, 1.0, 2.0)
    assert result["class_histogram"] == {"0": 0.2, "1": 0.8, **{str(d): 0.0 for d in range(2, 10)}}
    assert {k: result[k] for k in inception} == inception
    assert "predictions" not in result and "histogram" not in result and "n" not in result
    unconditional = metrics_json(score(2), None, {**inception, "fid_inception": 12.3456789})
    assert "label_accuracy" not in unconditional and "fid_classifier_std" not in unconditional
    assert unconditional["fid_inception"] == 12.345679


def test_scored_sets_add_the_first_sweep_n_main_images_when_sweeps_are_smaller():
    images = np.arange(6 * 28 * 28, dtype=np.uint8).reshape(6, 1, 28, 28)
    labels = np.arange(6) % 10
    sweep = np.zeros((2, 4, 1, 28, 28), np.uint8)
    sets, set_labels, main_index = scored_sets(
        {"images": images, "labels": labels, "sweep_images": sweep})
    assert [len(s) for s in sets] == [6, 4, 4, 4] and main_index == 1
    assert np.array_equal(sets[1], images[:4])
    assert [None if lab is None else lab.tolist() for lab in set_labels] == [
        [0, 1, 2, 3, 4, 5], [0, 1, 2, 3], [0, 1, 2, 3], [0, 1, 2, 3]]


def test_scored_sets_reuse_the_main_images_when_sweeps_have_the_same_n():
    images = np.zeros((4, 1, 28, 28), np.uint8)
    sets, set_labels, main_index = scored_sets(
        {"images": images, "sweep_images": np.ones((1, 4, 1, 28, 28), np.uint8)})
    assert len(sets) == 2 and main_index == 0 and set_labels == [None, None]


class Diffusing(Knobbed):
    timesteps = 1000


def test_describe_names_each_setting_for_tables():
    model = Diffusing(("sampler", "steps"))
    assert describe(model, "steps", {"sampler": "ddim", "steps": 25}) == (25.0, "ddim 25")
    assert describe(model, "steps", {"sampler": "ddpm", "steps": 5000}) == (1000.0, "ddpm 1000")
    assert describe(model, "steps", {"sampler": "ddim", "steps": "ddpm"}) == (1000.0, "ddpm 1000")
    assert describe(model, "truncation", {"truncation": None}) == (math.inf, "none")
    assert describe(model, "truncation", {"truncation": 0.5}) == (0.5, "0.5")
    assert describe(model, "guidance", {"guidance": 3.0}) == (3.0, "3")


def test_knob_settings_pass_every_diffusion_knob_and_sweep_steps_and_guidance():
    cfg = SampleConfig(n=16, steps=10, steps_sweep=[5, 10, "ddpm"], guidance=3.0,
                       guidance_sweep=[0.0, 3.0], truncation_sweep=[1.0])
    main, sweep = knob_settings(Knobbed(("sampler", "steps", "eta", "guidance")), cfg)
    assert main == {"sampler": "ddim", "steps": 10, "eta": 0.0, "guidance": 3.0}
    assert sweep == [("steps", 5), ("steps", "ddpm"), ("guidance", 0.0)]


def test_step_counts_above_the_models_timesteps_are_named_in_one_warning(capsys):
    cfg = SampleConfig(n=16, steps=50, steps_sweep=[10, 200, 400, 400, "ddpm"])
    knob_settings(Knobbed(("sampler", "steps", "eta"), timesteps=100), cfg)
    out = capsys.readouterr()
    assert (out.out + out.err).splitlines() == [
        "warning: steps_sweep 200, 400 above the 100 timesteps the model was trained on: "
        "sampled on all 100"]
    main, sweep = knob_settings(Knobbed(("sampler", "steps", "eta"), timesteps=40), cfg)
    assert main["steps"] == 40 and sweep == [("steps", 10), ("steps", "ddpm")]  # 40 once, as main
    out = capsys.readouterr()
    assert (out.out + out.err).splitlines() == [
        "warning: sample.steps 50 and steps_sweep 200, 400 above the 40 timesteps the model was "
        "trained on: sampled on all 40"]
    knob_settings(Knobbed(("sampler", "steps", "eta"), timesteps=1000), cfg)
    out = capsys.readouterr()
    assert out.out + out.err == ""


def test_steps_sweep_accepts_counts_and_ddpm_only():
    assert SampleConfig(n=16, steps_sweep=[1, "ddpm"]).steps_sweep == [1, "ddpm"]
    for bad in ([0], ["ddim"], [2.5]):
        with pytest.raises(ValueError):
            SampleConfig(n=16, steps_sweep=bad)


# --- FID over several sets -------------------------------------------------------------------

@pytest.fixture(scope="module")
def judge() -> Judge:
    torch.manual_seed(0)
    return Judge(width=4, features=8).eval()


def uint8_images(n: int, seed: int, low: float = 0, high: float = 255) -> np.ndarray:
    """Noisy flat images whose brightness is drawn per image from [low, high]: sets that differ
    in brightness differ in the judge's features even untrained."""
    rng = np.random.default_rng(seed)
    level = rng.uniform(low, high, (n, 1, 1, 1)) + rng.normal(0, 20, (n, 1, 28, 28))
    return level.clip(0, 255).astype(np.uint8)


def test_fids_of_several_sets_equal_separate_fid_calls(judge):
    real = metrics.embed(judge, uint8_images(64, 0), CPU, batch_size=24).features
    fakes = [metrics.embed(judge, images, CPU, batch_size=24).features for images in
             (uint8_images(64, 1, high=100), uint8_images(64, 2), uint8_images(64, 3, low=150))]
    together = metrics.fids(real, fakes)
    apart = [metrics.fid(real, fake) for fake in fakes]
    assert together == pytest.approx(apart, rel=1e-6)
    # not vacuous: the sets get clearly different scores, the one drawn like `real` the lowest
    assert min(together) > 0
    assert together[1] < 0.9 * together[0] < 0.9 * together[2]


# --- per-class tables ------------------------------------------------------------------------

DIGITS = tuple("0123456789")


def test_generated_per_class_without_labels_is_a_histogram():
    predictions = np.array([0, 0, 1, 3, 3, 3, 9, 9])
    rows = metrics.generated_per_class(predictions, DIGITS)
    assert [r["digit"] for r in rows] == list(range(10))
    assert [r["class"] for r in rows] == list(DIGITS)
    assert all(set(r) == {"digit", "class", "generated", "fraction"} for r in rows)
    assert [r["generated"] for r in rows] == [2, 1, 0, 3, 0, 0, 0, 0, 0, 2]
    assert [r["fraction"] for r in rows] == [0.25, 0.125, 0, 0.375, 0, 0, 0, 0, 0, 0.25]


def test_generated_per_class_with_labels_adds_accuracy_of_requested_digits():
    labels = np.array([0, 0, 1, 1, 3, 3, 3, 9])
    predictions = np.array([0, 5, 1, 7, 3, 3, 0, 9])
    rows = metrics.generated_per_class(predictions, DIGITS, labels)
    assert all(set(r) == {"digit", "class", "generated", "fraction", "requested", "correct",
                          "accuracy"}
               for r in rows)
    by_digit = {r["digit"]: r for r in rows}
    assert (by_digit[0]["requested"], by_digit[0]["correct"], by_digit[0]["accuracy"]) == (2, 1, 0.5)
    assert (by_digit[3]["requested"], by_digit[3]["correct"]) == (3, 2)
    assert by_digit[3]["accuracy"] == pytest.approx(2 / 3, abs=1e-6)
    assert by_digit[0]["generated"] == 2  # what the judge saw, not what was asked for
    assert by_digit[5]["generated"] == 1 and by_digit[5]["requested"] == 0
    assert math.isnan(by_digit[5]["accuracy"])  # no image asked to be a 5


# --- truncation params -----------------------------------------------------------------------

@pytest.mark.parametrize("key, value", [
    ("sample.truncation_sweep", [-1]),
    ("sample.truncation_sweep", [1.0, 0]),
    ("sample.truncation", 0),
    ("sample.truncation", -0.5),
])
def test_non_positive_truncation_is_rejected_naming_the_key(key, value):
    with pytest.raises(ConfigError) as err:
        parse_params(with_overrides(base_params(), {key: value}))
    message = str(err.value)
    assert f"{key}:" in message or f"{key}." in message
    if key == "sample.truncation":
        assert "truncation_sweep" not in message


def test_positive_truncation_settings_are_accepted():
    params = parse_params(with_overrides(base_params(), {"sample.truncation": 0.7,
                                                         "sample.truncation_sweep": [2, 0.25]}))
    assert params.sample.truncation == 0.7
    assert params.sample.truncation_sweep == [2.0, 0.25]
    assert parse_params(with_overrides(base_params(), {"sample.truncation": None})).sample.truncation is None
