"""The seed spread: mean ± std over runs with different seeds, ties where two families differ by
less than that noise, and `trilemma seed-spread --from` on a saved `dvc exp show --json` (the real
queue is driven in test_parallel_experiments)."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from conftest import write_params
from pipeline.cli import app
from trilemma import seed_spread as s
from trilemma.errors import DataError

FAMILIES = ["vae", "cgan"]


def metrics(fid: float, **more) -> dict:
    return {"fid_classifier": fid, "precision": 0.5, "recall": 0.4, "min_class_fraction": 0.05,
            **more}


def rev(name: str, seed: int, scores: dict[str, dict], profile: str = "quick") -> dict:
    """One run as `dvc exp show --json` lists it (DVC 3: params and metrics under data)."""
    return {"rev": name, "name": name, "data": {
        "params": {"params.yaml": {"data": {"seed": seed, "profile": profile}}},
        "metrics": {f"reports/eval/{f}/metrics.json": {"data": m} for f, m in scores.items()}}}


def exp_show(seeds: dict[int, tuple[float, float]], profile: str = "quick") -> list:
    """The workspace (nothing run) and a baseline commit with one experiment per seed, the
    families' FIDs given per seed; cgan reports label accuracy."""
    prefix = "seed" if profile == "quick" else f"{profile}-seed"
    experiments = [{"revs": [rev(f"{prefix}{seed}", seed, {
        "vae": metrics(vae), "cgan": metrics(cgan, label_accuracy=0.9 + seed / 100)}, profile)]}
        for seed, (vae, cgan) in seeds.items()]
    return [{"rev": "workspace", "data": {"params": {"params.yaml": {"data": {"seed": 0}}},
                                          "metrics": {}}},
            {"rev": "abc123", "name": "main", "data": {}, "experiments": experiments}]


def test_runs_are_read_one_per_seed_and_incomplete_ones_skipped():
    shown = exp_show({0: (100.0, 50.0), 1: (110.0, 52.0), 2: (90.0, 48.0)})
    shown[1]["experiments"].append({"revs": [rev("again0", 0, {"vae": metrics(1.0),
                                                              "cgan": metrics(1.0)})]})
    shown[1]["experiments"].append({"revs": [rev("half", 3, {"vae": metrics(1.0)})]})
    runs = s.of_profile(s.runs_from_exp_show(shown, FAMILIES), "quick")
    assert [(r.name, r.seed) for r in runs] == [("seed0", 0), ("seed1", 1), ("seed2", 2)]
    assert runs[1].scores["vae"]["fid_classifier"] == 110.0


def test_a_spread_compares_one_profile_with_itself():
    """Runs of another profile (another training budget) with the same seeds are not mixed in;
    a params.yaml without `profile` is the default profile's."""
    shown = exp_show({0: (100.0, 50.0), 1: (110.0, 52.0)})
    shown += exp_show({0: (10.0, 5.0), 1: (12.0, 6.0), 2: (11.0, 4.0)}, "reference")
    del shown[1]["experiments"][0]["revs"][0]["data"]["params"]["params.yaml"]["data"]["profile"]
    runs = s.runs_from_exp_show(shown, FAMILIES)
    assert [(r.name, r.profile) for r in s.of_profile(runs, "quick")] == [
        ("seed0", "quick"), ("seed1", "quick")]
    reference = s.of_profile(runs, "reference")
    assert [r.seed for r in reference] == [0, 1, 2]
    assert s.spreads(reference, FAMILIES)["vae"]["fid_classifier"].mean == pytest.approx(11.0)
    with pytest.raises(DataError, match="profile 'full' .* found: none; of other profiles: "
                       "seed0 \\(quick, seed 0\\), .*reference-seed2 \\(reference, seed 2\\)"):
        s.of_profile(runs, "full")


def test_spread_is_mean_and_sample_std_per_family_and_score():
    runs = s.of_profile(s.runs_from_exp_show(
        exp_show({0: (100.0, 50.0), 1: (110.0, 52.0), 2: (90.0, 48.0)}), FAMILIES), "quick")
    table = s.spreads(runs, FAMILIES)
    assert table["vae"]["fid_classifier"].mean == pytest.approx(100.0)
    assert table["vae"]["fid_classifier"].std == pytest.approx(10.0)  # ddof 1
    assert table["cgan"]["label_accuracy"].values == {0: 0.9, 1: 0.91, 2: 0.92}
    assert "label_accuracy" not in table["vae"]  # an unconditional family does not report it


def test_families_closer_than_their_noise_tie_and_share_a_rank():
    fid = lambda name, *v: s.Spread(name, "fid_classifier", dict(enumerate(v)))  # noqa: E731
    table = {"a": {"fid_classifier": fid("a", 10, 12, 14)},   # 12 ± 2
             "b": {"fid_classifier": fid("b", 13, 14, 15)},   # 14 ± 1: 2 < hypot(2, 1) = 2.24
             "c": {"fid_classifier": fid("c", 40, 41, 42)}}   # far behind both
    assert s.tied(table["a"]["fid_classifier"], table["b"]["fid_classifier"])
    ranked = [(rank, spread.family, ties) for rank, spread, ties in s.ranking(table)]
    assert ranked == [(1, "a", ["b"]), (1, "b", ["a"]), (3, "c", [])]
    assert not s.tied(fid("x", 10, 10.5, 11), fid("y", 13, 13.5, 14))  # 3 > hypot(.5, .5)


def test_one_seed_is_not_a_spread():
    runs = s.runs_from_exp_show(exp_show({0: (100.0, 50.0)}), FAMILIES)
    with pytest.raises(DataError, match="at least 2 different seeds.*: seed0 \\(seed 0\\)$"):
        s.of_profile(runs, "quick")


def test_command_writes_the_table_and_the_values(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path / "params.yaml", {"families": FAMILIES})
    saved = tmp_path / "shown.json"
    saved.write_text(json.dumps(exp_show({0: (100.0, 50.0), 1: (110.0, 52.0), 2: (90.0, 48.0)})))
    result = CliRunner().invoke(app, ["seed-spread", "--from", str(saved)])
    assert result.exit_code == 0, result.output
    table = (tmp_path / "reports/seeds/quick/spread.md").read_text()
    assert "| 1 | cgan | 50.0 ± 2.0 |" in table and "| 2 | vae | 100.0 ± 10.0 |" in table, table
    assert "profile quick: 3 runs (seeds 0, 1, 2)" in table
    rows = (tmp_path / "reports/seeds/quick/spread.csv").read_text().splitlines()
    assert rows[0] == "family,metric,mean,std,n,seed_0,seed_1,seed_2"
    assert "vae,fid_classifier,100,10,3,100,110,90" in rows
    assert math.isclose(float(next(r for r in rows if r.startswith("cgan,label_accuracy"))
                              .split(",")[2]), 0.91)


def test_a_bad_score_names_the_listing_it_came_from(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path / "params.yaml", {"families": FAMILIES})
    (tmp_path / "a.json").write_text(json.dumps(exp_show({0: (100.0, 50.0)})))
    (tmp_path / "b.json").write_text(with_value((*VAE, "fid_classifier"), math.nan))
    result = CliRunner().invoke(app, ["seed-spread", "--from", "a.json", "--from", "b.json"])
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == "error: b.json: seed1: vae: fid_classifier is nan, not a score"


def test_runs_of_several_listings_are_merged_and_the_profile_chosen(tmp_path, monkeypatch):
    """Seeds run in several clones or machines: each one's saved listing is a --from; the same
    seed in two listings counts once (the first); --profile picks whose runs are compared."""
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path / "params.yaml", {"families": FAMILIES})  # profile quick
    here, there = tmp_path / "here.json", tmp_path / "there.json"
    here.write_text(json.dumps(exp_show({0: (10.0, 5.0)}, "reference")))
    there.write_text(json.dumps(exp_show({0: (99.0, 99.0), 1: (12.0, 6.0), 2: (14.0, 4.0)},
                                         "reference")))
    args = ["seed-spread", "--from", str(here), "--from", str(there), "--profile", "reference"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = (tmp_path / "reports/seeds/reference/spread.csv").read_text().splitlines()
    assert "vae,fid_classifier,12,2,3,10,12,14" in rows, rows
    assert not (tmp_path / "reports/seeds/quick").exists()
    # the params' profile (quick) by default: none of these runs is one of its
    result = CliRunner().invoke(app, args[:-2])
    assert result.exit_code == 2 and "profile 'quick'" in result.stderr, result.output
    assert "of other profiles: here.json:reference-seed0 (reference, seed 0)" in result.stderr


def test_families_with_equal_means_tie_even_without_spread():
    same = lambda name: s.Spread(name, "fid_classifier", {0: 50.0, 1: 50.0})  # noqa: E731
    assert s.tied(same("a"), same("b"))
    assert [rank for rank, _, _ in s.ranking({n: {"fid_classifier": same(n)} for n in "ab"})] \
        == [1, 1]


def test_runs_without_every_family_are_named_when_too_few_are_left():
    shown = exp_show({0: (100.0, 50.0), 1: (110.0, 52.0)})
    del shown[1]["experiments"][1]["revs"][0]["data"]["metrics"]["reports/eval/cgan/metrics.json"]
    with pytest.raises(DataError, match=r"found: seed0 \(seed 0\); without every family's: "
                                        r"seed1 \(seed 1, no cgan\)$"):
        s.of_profile(s.runs_from_exp_show(shown, FAMILIES), "quick")


def with_value(path: tuple, value) -> str:
    """exp_show of seeds 0 and 1, one value replaced (keys below seed1's run data)."""
    shown = exp_show({0: (100.0, 50.0), 1: (110.0, 52.0)})
    node = shown[1]["experiments"][1]["revs"][0]["data"]
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return json.dumps(shown)


VAE = ("metrics", "reports/eval/vae/metrics.json", "data")
SEED = ("params", "params.yaml", "data", "seed")
PROFILE = ("params", "params.yaml", "data", "profile")
BAD_VALUES = {  # what one run holds -> the error's end
    "nan-fid": (with_value((*VAE, "fid_classifier"), math.nan), "fid_classifier is nan, not a score"),
    "inf-recall": (with_value((*VAE, "recall"), math.inf), "recall is inf, not a score"),
    "huge-fid": (with_value((*VAE, "fid_classifier"), 1e308), "not a score"),
    "bool-fid": (with_value((*VAE, "fid_classifier"), True), "fid_classifier is True, not a score"),
    "text-fid": (with_value((*VAE, "fid_classifier"), "12"), "fid_classifier is '12', not a score"),
    "negative-fid": (with_value((*VAE, "fid_classifier"), -3.0), "a FID is never negative"),
    "recall-above-1": (with_value((*VAE, "recall"), 1.5), "recall is 1.5; a share is 0..1"),
    "negative-precision": (with_value((*VAE, "precision"), -0.5), "a share is 0..1"),
    "list-metrics": (with_value(VAE, [1]), "seed1's reports/eval/vae/metrics.json is list"),
    "bool-seed": (with_value(SEED, True), "seed1: seed is True, not a whole number 0.."),
    "negative-seed": (with_value(SEED, -1), "seed1: seed is -1, not a whole number 0.."),
    "fraction-seed": (with_value(SEED, 1.5), "seed1: seed is 1.5, not a whole number 0.."),
    "text-seed": (with_value(SEED, "1"), "seed1: seed is '1', not a whole number 0.."),
    "huge-seed": (with_value(SEED, 10**400), "seed1: seed is 1000"),  # beyond any float
    "huge-int-fid": (with_value((*VAE, "fid_classifier"), 10**400), "not a score"),
    "number-profile": (with_value(PROFILE, 0), "seed1: profile is 0, not a profile's name"),
    # an empty name is no profile of ours: the quick spread lacks that run
    "empty-profile": (with_value(PROFILE, ""), "of other profiles: seed1 (, seed 1)"),
}


# what evaluate writes without a judge (an image folder without labels): every judge score null
NO_JUDGE = {**dict.fromkeys(["fid_classifier", "kid_classifier", "is_classifier", "precision",
                             "recall", "min_class_fraction", "label_accuracy"]),
            "judge_note": "no class labels"}
NOT_EXP_SHOW = "missing.json: not `dvc exp show --json` output"


def unjudged(*seeds: int) -> str:
    return json.dumps([{"rev": "abc123", "data": {}, "experiments": [
        {"revs": [rev(f"seed{seed}", seed, dict.fromkeys(FAMILIES, NO_JUDGE))]}
        for seed in seeds]}])


def test_a_family_without_fid_in_every_run_is_listed_unranked():
    shown = exp_show({0: (100.0, 50.0), 1: (110.0, 52.0)})
    shown[1]["experiments"][1]["revs"][0]["data"]["metrics"]["reports/eval/vae/metrics.json"] \
        ["data"]["fid_classifier"] = None
    runs = s.of_profile(s.runs_from_exp_show(shown, FAMILIES), "quick")
    table = s.spreads(runs, FAMILIES)
    assert [(rank, spread.family) for rank, spread, _ in s.ranking(table)] == [(1, "cgan")]
    lines = s.markdown(runs, table).splitlines()
    assert lines[-2].startswith("| 1 | cgan | 51.0 ± 1.4 |")
    assert lines[-1].startswith("| – | vae | – | 0.500 ± 0.000 |"), lines[-1]


@pytest.mark.parametrize("content, says", [
    (None, "missing.json: not found"),
    ("{not json", "not the JSON of `dvc exp show --json`"),
    ("[]", "at least 2 different seeds"),
    (unjudged(0, 1), "nothing to rank: no family has a judge FID (fid_classifier)"),
    ("[1]", NOT_EXP_SHOW),
    ('[{"data": {"params": {"params.yaml": {"data": []}}}}]', NOT_EXP_SHOW),
    ('[{"experiments": [{"revs": [5]}]}]', NOT_EXP_SHOW),
    ('[{"experiments": {"revs": []}}]', NOT_EXP_SHOW),
    ('{"rev": "workspace"}', NOT_EXP_SHOW),
    ("BAD-PROFILE", "--profile: 'fast' is not a profile (quick | reference | full)"),
    ("EMPTY-PROFILE", "--profile: '' is not a profile (quick | reference | full)"),
    *BAD_VALUES.values(),
], ids=["missing", "not-json", "no-runs", "no-judge", "int-baseline", "list-params",
        "int-revision", "mapping-experiments", "mapping-top-level", "bad-profile",
        "empty-profile", *BAD_VALUES])
def test_bad_input_is_one_line_and_keeps_the_old_table(tmp_path, monkeypatch, content, says):
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path / "params.yaml", {"families": FAMILIES})
    old = tmp_path / "reports/seeds/quick/spread.md"
    old.parent.mkdir(parents=True)
    old.write_text("an earlier table\n")
    saved = tmp_path / "missing.json"
    args = ["seed-spread", "--from", str(saved)]
    if content in ("BAD-PROFILE", "EMPTY-PROFILE"):
        content, args = unjudged(0, 1), [*args, "--profile", "fast" if "BAD" in content else ""]
    if content is not None:
        saved.write_text(content)
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], lines
    assert old.read_text() == "an earlier table\n"


@pytest.mark.parametrize("script, says", [
    ("#!/bin/sh\nprintf '\\377\\376 not json'\n", "printed something other than JSON"),
    (None, "dvc: cannot run it"),  # there, but not executable
])
def test_a_dvc_that_misbehaves_is_one_line(tmp_path, monkeypatch, script, says):
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path / "params.yaml", {"families": FAMILIES})
    dvc = tmp_path / "bin" / "dvc"
    dvc.parent.mkdir()
    dvc.write_text(script or "#!/bin/sh\n")
    dvc.chmod(0o755 if script else 0o644)
    monkeypatch.setenv("PATH", str(dvc.parent))
    result = CliRunner().invoke(app, ["seed-spread"])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], lines
