"""The report's training-noise section: the seed spread of the report's profile (written by
`trilemma seed-spread`) beside this run's FIDs, ranked with ties; without one, a note that says
how to make it; a broken spread table is named in one line before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import write_params
from pipeline.cli import app
from test_report_data import OUT, write_reports
from test_seed_spread import exp_show
from trilemma.errors import DataError
from trilemma.report import build

FAMILIES = {"vae": {"sweeps": [], "conditional": False},
            "cgan": {"sweeps": [], "conditional": True}}
SPREAD = Path("reports/seeds/quick/spread.csv")


@pytest.fixture
def reports(tmp_path, monkeypatch) -> Path:
    """Synthetic stage outputs of the quick profile; this run's FID: vae 130, cgan 50.5."""
    write_reports(tmp_path, FAMILIES, [str(d) for d in range(10)], dict.fromkeys(
        ["real", *FAMILIES]))
    for family, fid in {"vae": 130.0, "cgan": 50.5}.items():
        path = tmp_path / f"reports/eval/{family}/metrics.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "fid_classifier": fid}))
    monkeypatch.setattr(build, "git_commit", lambda: "0" * 12)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def seed_spread(seeds: dict[int, tuple[float, float]], profile: str = "quick") -> Path:
    """`trilemma seed-spread` run on a listing of runs with these (vae, cgan) FIDs by seed;
    the spread.csv it wrote."""
    write_params(Path("params.yaml"), {"families": ["vae", "cgan"]})
    Path("shown.json").write_text(json.dumps(exp_show(seeds, profile)))
    result = CliRunner().invoke(app, ["seed-spread", "--from", "shown.json", "--profile", profile])
    assert result.exit_code == 0, result.output
    return Path(f"reports/seeds/{profile}/spread.csv")


def section(readme: str) -> str:
    return readme.split("## How much of a difference is noise")[1].split("\n## ")[0]


def test_the_seed_spread_of_the_profile_ranks_the_families_with_ties(reports):
    seed_spread({1: (100.0, 50.0), 2: (110.0, 52.0), 3: (90.0, 48.0)})
    text = section(build.build(list(FAMILIES), OUT))  # this run: seed 0, not among them
    assert "Over 3 runs of the **quick** profile (seeds 1, 2, 3;" in text
    # cgan 50 ± 2, vae 100 ± 10: far apart, no ties; this run's FID and its distance in stds
    assert "| 1 | cgan | 50.5 | 50.0 ± 2.0 | +0.2 | – |" in text, text
    assert "| 2 | vae | 130.0 | 100.0 ± 10.0 | +3.0 | – |" in text, text
    # 3 stds is inside the range of a new seed's run with 3 seeds (4.97 stds)
    assert "Outside the seeds' range" not in text and "one of the spread's runs" not in text


def test_a_run_outside_the_range_of_a_new_seed_is_flagged(reports):
    seed_spread({1: (99.0, 50.0), 2: (100.0, 52.0), 3: (101.0, 48.0)})
    text = section(build.build(list(FAMILIES), OUT))
    assert "| 2 | vae | 130.0 | 100.0 ± 1.0 | +30.0 | – |" in text, text
    assert "**Outside the seeds' range: vae (+30.0)** (stds from the mean)" in text
    assert "(±4.97 with 3 seeds)" in text


def test_a_run_that_is_one_of_the_seeds_is_said_to_be_and_not_tested(reports):
    seed_spread({0: (130.0, 50.5), 1: (99.0, 52.0), 2: (101.0, 48.0)})
    text = section(build.build(list(FAMILIES), OUT))
    assert "This run (seed 0) is one of the spread's runs for every family: those FIDs" in text
    assert "Outside the seeds' range" not in text  # vae lies 1.15 stds out at most


def test_only_the_families_whose_spread_holds_this_run_are_exempt_from_the_test(reports):
    SPREAD.parent.mkdir(parents=True)  # seed 0 (this run) only among vae's seeds
    SPREAD.write_text("family,metric,seed_0,seed_1,seed_2,seed_3\n"
                      "vae,fid_classifier,130,131,129,\ncgan,fid_classifier,,10,11,9\n")
    text = section(build.build(list(FAMILIES), OUT))
    assert "one of the spread's runs for vae: those FIDs" in text, text
    assert "**Outside the seeds' range: cgan (+40.5)**" in text, text
    assert "Over 4 runs of the **quick** profile (seeds 0, 1, 2, 3;" in text


def test_a_run_of_a_seed_in_the_spread_that_scored_otherwise_is_named(reports):
    seed_spread({0: (100.0, 50.5), 1: (99.0, 52.0), 2: (101.0, 48.0)})
    text = section(build.build(list(FAMILIES), OUT))
    assert ("**This run has seed 0, as one of the spread's runs, but scored otherwise**: "
            "vae (130 here, 100 there).") in text, text
    SPREAD.write_text(SPREAD.read_text().replace("100,", "130.02,"))  # shown to 6 digits
    assert "vae (130 here, 130.02 there)" in section(build.build(list(FAMILIES), OUT))
    assert "**Outside the seeds' range: vae (+30.0)**" in text


def test_families_within_the_noise_tie_and_one_outside_the_spread_is_listed(reports):
    SPREAD.parent.mkdir(parents=True)
    SPREAD.write_text("family,metric,mean,std,n,seed_1,seed_2\n"
                      "vae,fid_classifier,55,7.07,2,50,60\nvae,recall,0.5,0,2,0.5,0.5\n")
    text = section(build.build(list(FAMILIES), OUT))
    assert "| 1 | vae | 130.0 | 55.0 ± 7.1 | +10.6 | – |" in text, text
    assert "| – | cgan | 50.5 | not in the spread | – | – |" in text
    assert "Outside the seeds' range" not in text  # 2 seeds: 15.6 stds
    SPREAD.write_text("family,metric,mean,std,n,seed_1,seed_2\n"
                      "vae,fid_classifier,55,7.07,2,50,60\ncgan,fid_classifier,51,1.4,2,50,52\n")
    text = section(build.build(list(FAMILIES), OUT))
    assert "| 1 | cgan | 50.5 | 51.0 ± 1.4 | -0.4 | vae |" in text, text  # 4 < hypot(7.1, 1.4)
    assert "| 1 | vae | 130.0 | 55.0 ± 7.1 | +10.6 | cgan |" in text, text


def test_seeds_that_all_scored_alike_make_any_other_score_far(reports):
    SPREAD.parent.mkdir(parents=True)
    SPREAD.write_text("family,metric,seed_1,seed_2\nvae,fid_classifier,10,10\n"
                      "cgan,fid_classifier,50.5,50.5\n")
    text = section(build.build(list(FAMILIES), OUT))
    assert "| 1 | vae | 130.0 | 10.0 ± 0.0 | +inf | – |" in text, text
    assert "| 2 | cgan | 50.5 | 50.5 ± 0.0 | +0.0 | – |" in text, text
    assert "**Outside the seeds' range: vae (+inf)**" in text


def test_without_a_spread_the_report_says_the_differences_are_unmeasured(reports):
    text = section(build.build(list(FAMILIES), OUT))
    assert "there is no seed spread of the **quick**" in text
    assert "`make seeds PROFILE=quick` runs three seeds" in text
    assert seed_spread({0: (1.0, 2.0), 1: (3.0, 4.0)}, "reference").is_file()
    assert "there is no seed spread" in section(build.build(list(FAMILIES), OUT))  # not quick's


def test_without_a_judge_there_is_no_section_and_no_spread_is_read(tmp_path, monkeypatch):
    write_reports(tmp_path, FAMILIES, None, dict.fromkeys(["real", *FAMILIES]))
    monkeypatch.setattr(build, "git_commit", lambda: "0" * 12)
    monkeypatch.chdir(tmp_path)
    SPREAD.parent.mkdir(parents=True)
    SPREAD.write_text("not a spread\n")
    assert "How much of a difference is noise" not in build.build(list(FAMILIES), OUT)


@pytest.mark.parametrize("text, error", [
    ("", "empty (not even a header)"),
    ("family,metric,mean\nvae,fid_classifier,1\n", "needs a column per seed, seed_<number>"),
    ("family,metric,seed_a\nvae,fid_classifier,1\n", "needs a column per seed, seed_<number>"),
    ("family,metric,seed_0,seed_1\nvae,fid_classifier,1,low\n",
     "column 'seed_1' holds 'low', not a number"),
    ("family,metric,seed_0,seed_1\nvae,fid_classifier,1,\n", "vae has fewer than 2 seeds' FID"),
    ("family,metric,seed_0,seed_1\nvae,recall,1,1\n", "no fid_classifier rows"),
    ("family,metric,seed_0,seed_²\nvae,fid_classifier,1,2\n", "needs a column per seed"),
    ("family,metric,seed_0,seed_00\nvae,fid_classifier,1,2\n", "needs a column per seed"),
    ("family,metric,seed_0,seed_0\nvae,fid_classifier,1,2\n", "needs a column per seed"),
    ("family,metric,seed_0,seed_-1\nvae,fid_classifier,1,2\n", "needs a column per seed"),
    ("family,metric,seed_0,seed_1\nvae,fid_classifier,100,inf\n",
     "vae, seed_1: fid_classifier is inf, not a score"),
    ("family,metric,seed_0,seed_1\nvae,fid_classifier,1e308,1e308\n", "not a score"),
    ("family,metric,seed_0,seed_1\nvae,fid_classifier,-1,2\n", "a FID is never negative"),
    ("family,metric,seed_0,seed_1\nvae,fid_classifier,1,2\nvae,fid_classifier,3,4\n",
     "vae fid_classifier twice"),
    ("family,metric,seed_0,seed_1\n,fid_classifier,1,2\n", "a row without a family"),
], ids=["empty", "no-seeds", "bad-seed-column", "text-value", "one-seed", "no-fid-rows",
        "superscript-seed", "padded-seed", "seed-twice", "negative-seed", "inf", "huge",
        "negative-fid", "family-twice", "no-family"])
def test_a_broken_spread_table_is_named_and_the_last_report_stays(reports, text, error):
    build.build(list(FAMILIES), OUT)
    before = (OUT / "README.md").read_text()
    SPREAD.parent.mkdir(parents=True)
    SPREAD.write_text(text)
    with pytest.raises(DataError) as raised:
        build.build(list(FAMILIES), OUT)
    message = str(raised.value)
    assert message.startswith(f"{SPREAD}: ") and error in message and "\n" not in message, message
    assert (OUT / "README.md").read_text() == before
