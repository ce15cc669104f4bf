"""Sampling sweeps (knob settings, sweep rows), FID over several sample sets, per-class tables and
the validation of the truncation params."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import base_params, with_overrides

from pipeline.evaluate import sweep_rows
from pipeline.sample import as_float, knob_settings
from trilemma import metrics
from trilemma.classifier import Judge
from trilemma.config import SampleConfig, parse_params
from trilemma.errors import ConfigError

CPU = torch.device("cpu")


class Knobbed:
    """Stands in for a family: `knob_settings` only reads `knobs`."""

    def __init__(self, knobs: tuple[str, ...]):
        self.knobs = knobs


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

def scores(*values: float, accuracy: bool = False) -> list[dict]:
    return [{"is_classifier": v, "min_class_fraction": v / 100,
             **({"label_accuracy": v / 10} if accuracy else {})} for v in values]


def test_sweep_rows_sort_by_value_descending_with_the_main_row_flagged():
    blob = {"knob_truncation": np.float64(math.inf), "images_per_second": np.float64(100.0),
            "sweep_knob": np.array(["truncation", "truncation"]),
            "sweep_value": np.array([0.5, 1.5]),
            "sweep_images_per_second": np.array([90.0, 80.0])}
    rows = sweep_rows(blob, [10.0, 30.0, 20.0], scores(1, 3, 2))
    assert [(r["value"], r["main"], r["fid_classifier"]) for r in rows] == [
        (math.inf, True, 10.0), (1.5, False, 20.0), (0.5, False, 30.0)]
    assert [r["samples_per_second"] for r in rows] == [100.0, 80.0, 90.0]
    assert [r["is_classifier"] for r in rows] == [1, 2, 3]
    assert all(r["knob"] == "truncation" and r["label_accuracy"] is None for r in rows)


def test_sweep_rows_give_every_knob_a_main_row_from_the_main_images():
    blob = {"knob_b": np.float64(math.inf), "knob_a": np.float64(2.0),
            "images_per_second": np.float64(50.0),
            "sweep_knob": np.array(["b", "a"]), "sweep_value": np.array([0.5, 3.0]),
            "sweep_images_per_second": np.array([40.0, 30.0])}
    rows = sweep_rows(blob, [1.0, 2.0, 3.0], scores(1, 2, 3, accuracy=True))
    assert [(r["knob"], r["value"], r["main"], r["fid_classifier"]) for r in rows] == [
        ("a", 3.0, False, 3.0), ("a", 2.0, True, 1.0), ("b", math.inf, True, 1.0),
        ("b", 0.5, False, 2.0)]
    assert [r["label_accuracy"] for r in rows] == [0.3, 0.1, 0.1, 0.2]


def test_sweep_rows_without_a_sweep_is_the_main_row_alone():
    blob = {"knob_truncation": np.float64(1.0), "images_per_second": np.float64(12.345)}
    rows = sweep_rows(blob, [7.0], scores(4))
    assert len(rows) == 1
    assert rows[0]["main"] and rows[0]["value"] == 1.0 and rows[0]["samples_per_second"] == 12.35


# --- FID over several sets -------------------------------------------------------------------

@pytest.fixture(scope="module")
def judge() -> Judge:
    torch.manual_seed(0)
    return Judge(width=4, features=8).eval()


def uint8_images(n: int, seed: int, low: float = 0, high: float = 255) -> np.ndarray:
    """Noisy flat images whose brightness is drawn per image from [low, high]: sets that differ
    in brightness differ in the judge's features even untrained."""
    rng = np.random.default_rng(seed)
    level = rng.uniform(low, high, (n, 1, 1)) + rng.normal(0, 20, (n, 28, 28))
    return level.clip(0, 255).astype(np.uint8)


def test_fids_of_several_sets_equal_separate_fid_calls(judge):
    real = uint8_images(64, 0)
    fakes = [uint8_images(64, 1, high=100), uint8_images(64, 2), uint8_images(64, 3, low=150)]
    together = metrics.fids(judge, real, fakes, CPU, batch_size=24)
    apart = [metrics.fid(judge, real, fake, CPU, batch_size=24) for fake in fakes]
    assert together == pytest.approx(apart, rel=1e-6)
    # not vacuous: the sets get clearly different scores, the one drawn like `real` the lowest
    assert min(together) > 0
    assert together[1] < 0.9 * together[0] < 0.9 * together[2]


def test_fid_accepts_images_with_a_channel_axis(judge):
    real, fake = uint8_images(48, 0), uint8_images(48, 1, high=100)
    assert metrics.fid(judge, real[:, None], fake[:, None], CPU) == pytest.approx(
        metrics.fid(judge, real, fake, CPU), rel=1e-6)


# --- per-class tables ------------------------------------------------------------------------

def test_generated_per_class_without_labels_is_a_histogram():
    predictions = np.array([0, 0, 1, 3, 3, 3, 9, 9])
    rows = metrics.generated_per_class(predictions)
    assert [r["digit"] for r in rows] == list(range(10))
    assert all(set(r) == {"digit", "generated", "fraction"} for r in rows)
    assert [r["generated"] for r in rows] == [2, 1, 0, 3, 0, 0, 0, 0, 0, 2]
    assert [r["fraction"] for r in rows] == [0.25, 0.125, 0, 0.375, 0, 0, 0, 0, 0, 0.25]


def test_generated_per_class_with_labels_adds_accuracy_of_requested_digits():
    labels = np.array([0, 0, 1, 1, 3, 3, 3, 9])
    predictions = np.array([0, 5, 1, 7, 3, 3, 0, 9])
    rows = metrics.generated_per_class(predictions, labels)
    assert all(set(r) == {"digit", "generated", "fraction", "requested", "correct", "accuracy"}
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
