"""The reference numbers (vfm_lab.reference): files built from lab runs on two seeds, the comparison a notebook
prints, the README's generated chapter table, the runner's expected time, and grid runs and other chapters' runs
read back by a notebook."""
from __future__ import annotations

import dataclasses
import json
import os

import pytest

from vfm_lab import reference
from vfm_lab.cli import main
from vfm_lab.config import ContrastiveConfig, NonContrastiveConfig
from vfm_lab.results import chapter_entry, grid_runs, save_results


def finished_run(folder, results, seconds=100.0):
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps(results))
    (folder / "DONE").write_text(f"{seconds} s\n")


@pytest.fixture
def runs(tmp_path):
    """Chapter 03 at lab on seeds 0 and 1, as `make reference` leaves them."""
    for seed, knn, seconds in ((0, 0.5, 500.0), (1, 0.7, 520.0)):
        finished_run(tmp_path / "runs" / "03_contrastive" / f"lab-seed={seed}",
                     {"chapter": "03_contrastive", "scale": "lab", "config": {"seed": seed},
                      "random_init": {"knn_acc": 0.3, "linear_acc": 0.35},
                      "simclr": {"knn_acc": knn, "linear_acc": 0.6, "probe": {"shape": 0.4}, "online_knn": [0.1]}},
                     seconds)
    return tmp_path / "runs"


def test_build_keeps_each_headline_per_seed_and_the_wall_times(runs):
    ref = reference.build(runs)["03_contrastive"]
    assert ref["seeds"] == [0, 1] and ref["seconds"] == [500.0, 520.0] and ref["scale"] == "lab"
    assert ref["entries"]["simclr"] == {"knn_acc": [0.5, 0.7], "linear_acc": [0.6, 0.6], "probe/shape": [0.4, 0.4]}
    assert "online_knn" not in ref["entries"]["simclr"]  # curves are not headlines
    assert "cores" in ref["machine"] and "torch" in ref["machine"]


def test_written_files_load_back_and_give_the_expected_time(runs, tmp_path, monkeypatch):
    folder = tmp_path / "reference"
    (path,) = reference.write(reference.build(runs), folder)
    assert path.name == "03.json" and reference.load("03_contrastive", folder)["seconds"] == [500.0, 520.0]
    assert reference.load("04_non_contrastive", folder) is None
    monkeypatch.setattr(reference, "FOLDER", folder)
    assert reference.expected_seconds("03_contrastive", "lab") == 510.0
    assert reference.expected_seconds("03_contrastive", "smoke") is None  # only lab has reference runs


def test_compare_puts_this_run_next_to_the_seeds_mean_and_range(runs):
    ref = reference.build(runs)["03_contrastive"]
    table = reference.compare({"scale": "smoke", "simclr": {"knn_acc": 0.25}}, ref)
    assert "| entry | metric | this run (smoke) | reference (lab, seeds 0-1) |" in table
    assert "| simclr | knn_acc | 0.25 | 0.6 (0.5-0.7) |" in table
    assert "| random_init | knn_acc |  | 0.3 (0.3-0.3) |" in table  # an entry this run lacks: its cell is empty


def test_save_results_shows_the_reference_or_says_there_is_none(runs, tmp_path, monkeypatch):
    folder = tmp_path / "reference"
    reference.write(reference.build(runs), folder)
    monkeypatch.setattr(reference, "FOLDER", folder)
    shown = save_results(tmp_path / "out", {"chapter": "03_contrastive", "scale": "smoke", "simclr": {"knn_acc": 0.2}})
    assert "| simclr | knn_acc | 0.2 | 0.6 (0.5-0.7) |" in shown
    assert "no reference runs" in save_results(tmp_path / "out4", {"chapter": "04_non_contrastive", "byol": {}})


def test_main_writes_the_files_and_the_readme_table_between_its_markers(runs, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{reference.TABLE_BEGIN}\nold, typed by hand\n{reference.TABLE_END}\n\nafter\n")
    assert reference.main([str(runs), "--folder", str(tmp_path / "ref"), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert "old, typed by hand" not in text and text.endswith("after\n")
    assert "| `03_contrastive` | 2.4 |" in text and "simclr linear_acc 0.6 (0.6-0.6) vs random_init 0.35" in text
    assert "8.5 min" in text and f"the 1 of {len(reference.CHAPTERS)} chapters measured: 8 minutes" in text
    assert "| `04_non_contrastive` |" in text and "not measured yet" in text


def test_main_refuses_a_folder_without_runs_and_a_readme_without_markers(tmp_path, runs):
    with pytest.raises(SystemExit, match="no finished lab-seed=N runs"):
        reference.main([str(tmp_path / "nothing"), "--folder", str(tmp_path / "ref")])
    readme = tmp_path / "README.md"
    readme.write_text("# no markers\n")
    with pytest.raises(ValueError, match="reference table"):
        reference.update_readme(readme, tmp_path / "ref")


def test_the_committed_readme_table_is_the_one_the_committed_files_give():
    """Nobody types the chapter table: it is what `python -m vfm_lab.reference` writes from notebooks/reference."""
    assert reference.readme_table() in reference.README.read_text()


def test_the_runner_prints_the_expected_time_before_a_chapter(runs, tmp_path, monkeypatch, capsys):
    import papermill

    folder = tmp_path / "reference"
    reference.write({"00_tour": {**reference.build(runs)["03_contrastive"], "chapter": "00_tour"}}, folder)
    monkeypatch.setattr(reference, "FOLDER", folder)
    monkeypatch.setattr(papermill, "execute_notebook", lambda *args, **kwargs: None)  # the plan, not the notebook
    assert main(["run", "00", "-p", "scale=lab", "--runs-dir", str(tmp_path / "r"), "--quiet"]) == 0
    assert "00_tour lab -> " in (out := capsys.readouterr().out) and "(about 8.5 min: its reference runs, " in out
    assert main(["run", "00", "-p", "scale=smoke", "--runs-dir", str(tmp_path / "r"), "--quiet"]) == 0
    assert "about" not in capsys.readouterr().out  # no reference runs at smoke


# ---- a notebook reading back the runs of a grid ------------------------------------------
def test_grid_runs_reads_the_entry_of_finished_runs_that_differ_only_in_the_swept_settings(tmp_path):
    here = ContrastiveConfig.from_params(scale="lab", out_dir=str(tmp_path / "03_contrastive" / "lab"))
    base = here.to_dict()

    def grid_run(name, done=True, **changed):
        config = {**base, **changed, "out_dir": str(tmp_path / "03_contrastive" / name)}
        results = {"chapter": "03_contrastive", "config": config, "simclr": {"knn_acc": changed.get("batch_size", 0)}}
        (finished_run if done else lambda f, r: (f.mkdir(parents=True), (f / "results.json").write_text(json.dumps(r))))(
            tmp_path / "03_contrastive" / name, results)

    grid_run("lab")
    grid_run("lab-batch_size=64", batch_size=64)
    grid_run("lab-batch_size=16", batch_size=16)
    grid_run("lab-batch_size=128", done=False, batch_size=128)  # still running: no DONE
    grid_run("lab-batch_size=8-seed=1", batch_size=8, seed=1)   # differs in another setting too
    by_batch = grid_runs(here, "simclr", "batch_size")
    assert list(by_batch) == [16, 32, 64] and by_batch[64] == {"knn_acc": 64}
    assert grid_runs(here, "moco_v2", "batch_size") == {}  # no run has that entry
    both = grid_runs(here, "simclr", "batch_size", "seed")
    assert (8, 1) in both and (64, 0) in both  # several settings: keyed by their values together


def test_chapter_entry_reads_the_newest_run_of_another_chapter_on_the_same_data(tmp_path):
    """Chapter 04 draws chapter 03's SimCLR curve next to its own when 03 has run on the same data and seed."""
    here = NonContrastiveConfig.from_params(scale="lab", out_dir=str(tmp_path / "04_non_contrastive" / "lab"))
    assert chapter_entry("03_contrastive", "simclr", here) is None  # chapter 03 has not run
    base = ContrastiveConfig.from_params(scale="lab").to_dict()
    for name, seed, knn in (("old", 0, 0.1), ("other-seed", 1, 0.9), ("new", 0, 0.5)):
        folder = tmp_path / "03_contrastive" / name
        folder.mkdir(parents=True)
        (folder / "results.json").write_text(json.dumps({"config": {**base, "seed": seed}, "simclr": {"knn_acc": knn}}))
        os.utime(folder / "results.json", (len(name), {"old": 1, "other-seed": 3, "new": 2}[name]))
    assert chapter_entry("03_contrastive", "simclr", here) == {"knn_acc": 0.5}  # the newest with seed 0
    assert chapter_entry("03_contrastive", "moco_v2", here) is None
    assert chapter_entry("03_contrastive", "simclr", dataclasses.replace(here, dataset="shapes")) is None
