"""The class and Inception scores of `trilemma.metrics` (class histogram and its KL to uniform,
Inception score, score_set, the judge as feature extractor) against references computed here;
and the Inception-V3 path with a weights file the test writes itself (randomly initialised:
nothing is downloaded)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.special
import scipy.stats
import torch
from torch import nn

from trilemma import metrics
from trilemma.classifier import Judge
from trilemma.errors import DataError

CPU = torch.device("cpu")


# --- class histogram and its KL to uniform ---------------------------------------------------

def test_class_histogram_has_one_bin_per_class_summing_to_one():
    h = metrics.class_histogram(np.array([3, 3, 3, 7]), 10)
    assert h.shape == (10,) and h.sum() == pytest.approx(1.0)
    assert h[3] == 0.75 and h[7] == 0.25 and h[[0, 1, 2, 4, 5, 6, 8, 9]].sum() == 0
    assert metrics.class_histogram(np.array([0, 2]), 3).tolist() == [0.5, 0, 0.5]


def test_kl_to_uniform_is_zero_for_uniform_and_log10_for_one_class():
    assert metrics.kl_to_uniform(np.full(10, 0.1)) == pytest.approx(0.0, abs=1e-12)
    one = np.zeros(10)
    one[4] = 1.0
    assert metrics.kl_to_uniform(one) == pytest.approx(math.log(10), rel=1e-12)


def test_kl_to_uniform_ignores_empty_classes():
    half = np.array([0.5, 0.5] + [0.0] * 8)  # two classes: log 10 - log 2
    assert metrics.kl_to_uniform(half) == pytest.approx(math.log(5), rel=1e-12)
    assert math.isfinite(metrics.kl_to_uniform(half))


@pytest.mark.parametrize("seed", range(3))
def test_kl_to_uniform_equals_scipy_relative_entropy(seed):
    rng = np.random.default_rng(seed)
    h = rng.dirichlet(np.full(10, 0.7))
    h[rng.choice(10, 3, replace=False)] = 0  # some empty classes
    h /= h.sum()
    assert metrics.kl_to_uniform(h) == pytest.approx(scipy.stats.entropy(h, np.full(10, 0.1)),
                                                     rel=1e-10)


# --- Inception score (from logits) -----------------------------------------------------------

def inception_score_reference(logits: np.ndarray) -> float:
    """exp(mean over x of KL(p(y|x) || p(y))), one split."""
    p = scipy.special.softmax(logits, axis=1)
    py = p.mean(0)
    return float(np.exp((p * (np.log(p) - np.log(py))).sum(1).mean()))


@pytest.mark.filterwarnings("ignore:std\\(\\)")  # one split: torch warns that its std is nan
@pytest.mark.parametrize("seed", [0, 1])
def test_inception_score_with_one_split_equals_the_numpy_reference(seed):
    logits = np.random.default_rng(seed).normal(0, 3, (60, 10))
    mean, _ = metrics.inception_score(torch.from_numpy(logits), seed=0, splits=1)
    assert mean == pytest.approx(inception_score_reference(logits), rel=1e-9)
    assert 1 < mean < 10


@pytest.mark.filterwarnings("ignore:std\\(\\)")
def test_inception_score_of_confident_balanced_classes_is_the_class_count():
    logits = 50.0 * torch.eye(10, dtype=torch.float64).repeat(10, 1)  # 10 sure images per class
    mean, _ = metrics.inception_score(logits, seed=0, splits=1)
    assert mean == pytest.approx(10.0, rel=1e-9)


def test_inception_score_of_identical_predictions_is_one():
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0]], dtype=torch.float64).repeat(40, 1)
    mean, std = metrics.inception_score(logits, seed=0, splits=4)
    assert mean == pytest.approx(1.0, abs=1e-12) and std == pytest.approx(0.0, abs=1e-12)


def test_inception_score_splits_are_reproducible_for_a_seed():
    logits = torch.from_numpy(np.random.default_rng(0).normal(0, 3, (100, 10)))
    first = metrics.inception_score(logits, seed=1, splits=5)
    assert first == metrics.inception_score(logits, seed=1, splits=5)
    assert first != metrics.inception_score(logits, seed=2, splits=5)
    assert first[1] > 0


# --- score_set -------------------------------------------------------------------------------

def embedded(n: int, seed: int, shift: float = 0.0) -> metrics.Embedded:
    rng = np.random.default_rng(seed)
    return metrics.Embedded(torch.from_numpy(rng.normal(shift, 1, (n, 6))),
                            torch.from_numpy(rng.normal(0, 2, (n, 10))))


def test_score_set_reports_every_score_from_its_building_blocks():
    real = embedded(200, 0)
    real.features[0] = 50.0  # a far outlier: recall over all 200 real points could be 199/200
    fake = embedded(50, 1, shift=0.2)
    scores = metrics.score_set(real, fake, None, seed=0)
    assert set(scores) == {"n", "fid_classifier", "kid_classifier", "kid_classifier_std",
                           "is_classifier", "is_classifier_std", "precision", "recall",
                           "min_class_fraction", "class_kl_uniform", "histogram", "predictions"}
    assert scores["n"] == 50
    assert scores["fid_classifier"] == pytest.approx(metrics.fid(real.features, fake.features))
    assert (scores["kid_classifier"], scores["kid_classifier_std"]) == pytest.approx(
        metrics.kid(real.features, fake.features, 0))
    assert (scores["is_classifier"], scores["is_classifier_std"]) == pytest.approx(
        metrics.inception_score(fake.logits, 0))
    # precision/recall against 50 real points, not 200: recall is a share of 50 points
    assert 0 < scores["precision"] <= 1 and 0 < scores["recall"] <= 1
    assert scores["recall"] * 50 == pytest.approx(round(scores["recall"] * 50), abs=1e-9)
    assert np.array_equal(scores["predictions"], fake.logits.argmax(1).numpy())
    h = scores["histogram"]
    assert h.shape == (10,) and h.sum() == pytest.approx(1.0)
    assert np.array_equal(h, np.bincount(scores["predictions"], minlength=10) / 50)
    assert scores["min_class_fraction"] == h.min()
    assert scores["class_kl_uniform"] == pytest.approx(scipy.stats.entropy(h, np.full(10, 0.1)))


def test_score_set_adds_label_accuracy_only_for_requested_labels():
    real, fake = embedded(100, 0), embedded(50, 1)
    labels = fake.predictions.copy()
    labels[:10] = (labels[:10] + 1) % 10  # 40 of 50 as requested
    assert metrics.score_set(real, fake, labels, seed=0)["label_accuracy"] == pytest.approx(0.8)
    assert "label_accuracy" not in metrics.score_set(real, fake, None, seed=0)


def test_score_set_is_reproducible_for_a_seed():
    real, fake = embedded(200, 0), embedded(50, 1, shift=0.5)
    a, b = metrics.score_set(real, fake, None, seed=3), metrics.score_set(real, fake, None, seed=3)
    assert {k: v for k, v in a.items() if k not in ("histogram", "predictions")} == {
        k: v for k, v in b.items() if k not in ("histogram", "predictions")}


# --- the judge as extractor ------------------------------------------------------------------

def test_embed_gives_the_judge_features_and_logits_whatever_the_batch_size():
    torch.manual_seed(0)
    judge = Judge(width=4, features=8).eval()
    images = np.random.default_rng(0).integers(0, 256, (10, 1, 28, 28), dtype=np.uint8)
    e = metrics.embed(judge, images, CPU, batch_size=4)  # batches of 4, 4 and 2
    assert e.features.dtype == e.logits.dtype == torch.float64
    assert e.features.shape == (10, 8) and e.logits.shape == (10, 10)
    with torch.no_grad():
        x = torch.from_numpy(images).float() / 255
        torch.testing.assert_close(e.features, judge.features(x).double(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(e.logits, judge(x).double(), rtol=1e-5, atol=1e-6)
    assert np.array_equal(e.predictions, e.logits.argmax(1).numpy())


# --- Inception-V3: a weights file written by the test ----------------------------------------

@pytest.fixture(scope="module")
def inception_file(tmp_path_factory):
    """A state dict of torch-fidelity's Inception-V3 architecture, randomly initialised (the real
    weights are never downloaded): the patches only stop its constructor fetching them."""
    import torch_fidelity.feature_extractor_inceptionv3 as fe

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fe, "load_state_dict_from_url", lambda *args, **kwargs: {})
        mp.setattr(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda *args, **kwargs: None)
        torch.manual_seed(0)
        template = fe.FeatureExtractorInceptionV3("inception-v3-compat", metrics.INCEPTION_FEATURES)
    for module in template.modules():  # He init: PyTorch's default fades to ~1e-8 at pool3
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    nn.init.normal_(template.fc.weight, std=2048 ** -0.5)
    path = tmp_path_factory.mktemp("inception") / "pt_inception.pth"
    torch.save(template.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def inception_net(inception_file):
    return metrics.inception(inception_file, CPU)


def grey_images(n: int, seed: int, low: int = 0, high: int = 256) -> np.ndarray:
    return np.random.default_rng(seed).integers(low, high, (n, 1, 28, 28), dtype=np.uint8)


def test_inception_loads_the_weights_file_and_names_it(inception_net, inception_file):
    net, note = inception_net
    assert isinstance(net, nn.Module) and not net.training
    assert inception_file.name in note
    saved = torch.load(inception_file, weights_only=True)
    assert torch.equal(net.state_dict()["fc.weight"], saved["fc.weight"])  # not a fresh init


def test_embed_inception_repeats_the_grey_channel(inception_net):
    net, _ = inception_net
    grey = grey_images(3, 0)
    e = metrics.embed_inception(net, grey, CPU, batch_size=2)
    assert e.features.shape == (3, 2048) and e.logits.shape == (3, 1008)
    with torch.no_grad():
        features, logits = net(torch.from_numpy(grey).repeat(1, 3, 1, 1))
    torch.testing.assert_close(e.features, features.double(), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(e.logits, logits.double(), rtol=1e-4, atol=1e-6)
    assert e.features.std(0).max() > 1e-3  # the images get different features


@pytest.fixture(scope="module")
def grey_sets():
    """Two small grey sets (n,28,28) of different brightness: the net resizes each image to
    299x299, so a few images already take a second on one CPU thread."""
    return grey_images(4, 1), grey_images(4, 2, high=100)


@pytest.fixture(scope="module")
def cross_scores(inception_net, grey_sets):
    net, note = inception_net
    real, fake = grey_sets
    return metrics.inception_scores(net, note, real, fake, CPU, seed=0, batch_size=4)


def test_inception_scores_of_grey_images_are_finite(inception_net, cross_scores):
    assert set(cross_scores) == {"fid_inception", "is_inception", "is_inception_std",
                                 "inception_note"}
    assert math.isfinite(cross_scores["fid_inception"]) and cross_scores["fid_inception"] > 0
    assert math.isfinite(cross_scores["is_inception"])  # 4 images in 10 splits: one per split,
    assert 1 - 1e-9 <= cross_scores["is_inception"] <= 1008    # so IS is 1 here; the math is tested above
    assert cross_scores["inception_note"] == inception_net[1]


def test_inception_fid_of_a_set_against_itself_is_zero(inception_net, grey_sets, cross_scores):
    net, note = inception_net
    real, _ = grey_sets
    same = metrics.inception_scores(net, note, real, real, CPU, seed=0)["fid_inception"]
    assert abs(same) < 1e-4 * cross_scores["fid_inception"]


def test_inception_without_a_weights_file_is_none_with_a_note(tmp_path):
    net, note = metrics.inception(None, CPU)
    assert net is None and "evaluate.inception_weights" in note
    missing = tmp_path / "nowhere.pth"
    net, note = metrics.inception(missing, CPU)
    assert net is None and "not found" in note and str(missing) in note
    images = grey_images(4, 0)
    assert metrics.inception_scores(None, note, images, images, CPU, seed=0) == {
        "fid_inception": None, "is_inception": None, "is_inception_std": None,
        "inception_note": note}


@pytest.mark.parametrize("case", ["text", "no_inception_keys", "wrong_fc_shape", "missing_keys"])
def test_a_bad_weights_file_is_a_data_error_naming_it(case, tmp_path, inception_file):
    path = tmp_path / f"{case}.pth"
    if case == "text":
        path.write_text("these are not the weights you are looking for\n")
    elif case == "no_inception_keys":
        torch.save({"weight": torch.zeros(3), "bias": torch.ones(1)}, path)
    else:
        state = torch.load(inception_file, weights_only=True)
        if case == "wrong_fc_shape":
            state["fc.weight"] = torch.zeros(5, 5)
        else:
            state = {"fc.weight": state["fc.weight"]}
        torch.save(state, path)
    with pytest.raises(DataError) as err:
        metrics.inception(path, CPU)
    assert str(path) in str(err.value)
