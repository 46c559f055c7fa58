"""The ``vfm-lab`` command line without running notebooks: parameter parsing, chapter
names, YAML grids, run folder names, up-front validation of every run, the leaderboard,
and the exit status of a refused parameter."""
from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.test_real_data import write_cifar
from vfm_lab.cli import expand_grid, leaderboard, main, parse_params, parse_value, plan_runs, resolve_chapters, run_name
from vfm_lab.config import CONFIGS, ConfigError

CHAPTERS = sorted(CONFIGS)
TWO = ["00_tour", "01_supervised"]  # the chapters the planning tests name parameters of


# ---- parameters -------------------------------------------------------------------------
@pytest.mark.parametrize("text, value", [
    ("3", 3), ("-2", -2), ("1e-3", 1e-3), ("0.5", 0.5), ("1_000", 1000),
    ("True", True), ("False", False), ("None", None),
    ("lab", "lab"), ("convnet-s", "convnet-s"), ("fashion-mnist", "fashion-mnist"), ("cuda:0", "cuda:0"),
    ("'quoted'", "quoted"), ("", ""),
])
def test_parse_value(text, value):
    parsed = parse_value(text)
    assert parsed == value and type(parsed) is type(value)


def test_parse_params():
    params = parse_params(["scale=lab", " lr = 1e-3 ", "epochs=3", "out_dir=a=b", "backbone=vit-nano"])
    assert params == {"scale": "lab", "lr": 1e-3, "epochs": 3, "out_dir": "a=b", "backbone": "vit-nano"}
    assert type(params["epochs"]) is int and type(params["lr"]) is float
    assert parse_params([]) == {}


def test_parse_params_without_equals_is_refused_with_a_message():
    with pytest.raises(ConfigError, match="-p 'lab': parameters are key=value"):
        parse_params(["epochs=2", "lab"])


# ---- chapters ---------------------------------------------------------------------------
@pytest.mark.parametrize("names, expected", [
    (["all"], CHAPTERS), ([], CHAPTERS),
    (["01"], ["01_supervised"]), (["1"], ["01_supervised"]), (["01_supervised"], ["01_supervised"]),
    (["0", "01"], ["00_tour", "01_supervised"]), (["00_tour"], ["00_tour"]),
])
def test_resolve_chapters(names, expected):
    assert resolve_chapters(names) == expected


@pytest.mark.parametrize("name", ["99", "supervised", "001", "01_supervise"])
def test_unknown_chapter_is_refused_naming_the_valid_ones(name):
    with pytest.raises(ConfigError, match=f"unknown chapter '{name}'") as e:
        resolve_chapters([name])
    assert all(chapter in str(e.value) for chapter in ["'all'", *CHAPTERS])


# ---- grids ------------------------------------------------------------------------------
def test_grid_mapping_of_lists_is_the_cartesian_product_and_a_plain_value_is_one_value(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text("lr: [0.001, 0.01]\nepochs: [1, 2, 3]\nscale: lab\n")
    grid = expand_grid(path)
    assert len(grid) == 6
    assert sorted((g["lr"], g["epochs"]) for g in grid) == sorted(itertools.product([0.001, 0.01], [1, 2, 3]))
    assert all(g["scale"] == "lab" and set(g) == {"lr", "epochs", "scale"} for g in grid)


def test_grid_list_of_mappings_is_taken_as_is(tmp_path):
    path = tmp_path / "runs.yaml"
    path.write_text("- {lr: 0.001, backbone: vit-nano}\n- {epochs: 4}\n- {}\n")
    assert expand_grid(path) == [{"lr": 0.001, "backbone": "vit-nano"}, {"epochs": 4}, {}]


@pytest.mark.parametrize("text", ["3\n", "just a string\n", ""])
def test_grid_of_another_shape_is_refused_with_a_message(tmp_path, text):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="a grid is a mapping of lists .* or a list of mappings") as e:
        expand_grid(path)
    assert str(path) in str(e.value)


@pytest.mark.parametrize("text, match", [
    ("- scale=lab\n- scale=smoke\n", "list of mappings"),
    ("[]\n", "a grid is a mapping of lists"),
    ("batch_size: []\nscale: lab\n", "'batch_size' is an empty list, which makes no runs"),
    ("batch_size: [32, 64\nscale: lab\n", r"is not valid YAML at line 2, column 6: expected ',' or ']'"),
    ("lr: 0.1\n  epochs: 2\n", "is not valid YAML at line 2, column 9: mapping values are not allowed here"),
])
def test_a_grid_that_makes_no_runs_or_does_not_parse_is_refused_naming_where(tmp_path, text, match):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match) as e:
        expand_grid(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_a_missing_grid_file_is_refused_naming_it(tmp_path):
    with pytest.raises(ConfigError, match=r"--grid '.*nowhere\.yaml': cannot read it \(No such file or directory\)"):
        expand_grid(tmp_path / "nowhere.yaml")


# ---- run folders ------------------------------------------------------------------------
@pytest.mark.parametrize("params, name", [
    ({}, "smoke"),
    ({"scale": "lab"}, "lab"),
    ({"scale": "lab", "out_dir": "/elsewhere"}, "lab"),
    ({"scale": "lab", "lr": 0.001, "backbone": "vit-nano"}, "lab-backbone=vit-nano-lr=0.001"),
    ({"device": "cuda:0", "dataset": "a/b c"}, "smoke-dataset=a_b_c-device=cuda_0"),
])
def test_run_name(params, name):
    assert run_name(params) == name


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.text(string.ascii_lowercase + "_", min_size=1, max_size=8).filter(
                           lambda k: k not in ("scale", "out_dir")),
                       st.one_of(st.text(max_size=12), st.integers(), st.floats(allow_nan=False), st.booleans()),
                       max_size=4))
def test_run_name_is_one_safe_path_component(params):
    name = run_name(params)
    assert name and all(c.isalnum() or c in "=-_.," for c in name)
    assert name not in (".", "..") and "/" not in name and "\\" not in name


# ---- planning -----------------------------------------------------------------------------
def test_plan_runs_is_chapters_times_grid(tmp_path):
    grid = [{"lr": 0.001}, {"lr": 0.01, "epochs": 3}]
    plans = plan_runs(TWO, {"scale": "smoke", "device": "cpu"}, grid, tmp_path)
    assert [(c, p["lr"]) for c, p, _ in plans] == [(c, lr) for c in TWO for lr in (0.001, 0.01)]
    for chapter, params, out in plans:
        assert out == tmp_path / chapter / run_name(params) and params["device"] == "cpu"
    assert plan_runs(["00_tour"], {}, [], tmp_path) == [("00_tour", {"scale": "smoke"}, tmp_path / "00_tour" / "smoke")]
    assert not tmp_path.joinpath("00_tour").exists()  # planning creates nothing


def test_plan_runs_grid_entries_can_name_their_chapter(tmp_path):
    grid = [{"chapter": "01", "margin": 0.2}, {"lr": 0.01}]
    plans = plan_runs(TWO, {}, grid, tmp_path)
    assert [(c, p) for c, p, _ in plans] == [("00_tour", {"lr": 0.01, "scale": "smoke"}),
                                             ("01_supervised", {"margin": 0.2, "scale": "smoke"}),
                                             ("01_supervised", {"lr": 0.01, "scale": "smoke"})]


@pytest.mark.parametrize("common, grid, match", [
    ({}, [{"lr": 0.01}, {"lr": 0.02}, {"lr": -1.0}], "lr=-1.0 is below its minimum"),
    ({"scale": "lab"}, [{"epochs": 2}, {"epochs": "3"}], "epochs='3' should be of type int"),
    ({"epocs": 3}, [], "unknown parameter 'epocs'"),
    ({}, [{"lr": 0.01}, {"chapter": "01", "margin": 2.0}], "margin=2.0 is above its maximum"),
])
def test_plan_runs_validates_every_run_before_anything_runs(tmp_path, common, grid, match):
    with pytest.raises(ConfigError, match=match):
        plan_runs(TWO, common, grid, tmp_path / "runs")
    assert not (tmp_path / "runs").exists()


def test_plan_runs_refuses_a_non_string_scale_as_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="scale=3"):
        plan_runs(["00_tour"], {"scale": 3}, [], tmp_path)


def test_plan_runs_refuses_an_out_dir_parameter(tmp_path):
    for common, grid in (({"out_dir": "mine"}, []), ({}, [{"out_dir": "mine"}])):
        with pytest.raises(ConfigError, match="out_dir is set by the runner .* leave it out of -p and the grid"):
            plan_runs(["00_tour"], common, grid, tmp_path)


def test_plan_runs_grid_chapter_written_as_a_yaml_number(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text("- {chapter: 01, margin: 0.2}\n")
    plans = plan_runs(TWO, {}, expand_grid(path), tmp_path)
    assert [c for c, _, _ in plans] == ["01_supervised"]


# ---- leaderboard ------------------------------------------------------------------------
def write_result(runs_dir, chapter, run, result):
    folder = runs_dir / chapter / run
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps(result))


def test_leaderboard_gathers_every_results_json(tmp_path):
    write_result(tmp_path, "00_tour", "smoke-a", {"chapter": "00_tour", "knn_acc": 0.912345, "steps": 40,
                                                  "backbone": "convnet-s", "config": {"lr": 0.002},
                                                  "curve": [1.0, 0.5]})
    write_result(tmp_path, "00_tour", "smoke-b", {"knn_acc": 0.5, "linear_acc": 0.75, "config": {"lr": 0.01}})
    write_result(tmp_path, "01_supervised", "lab", {"cosface_acc": 0.8})
    write_result(tmp_path, "03_contrastive", "lab", {"chapter": "03_contrastive", "config": {"lr": 0.1},
                                                     "simclr": {"knn_acc": 0.4, "online_knn": [0.2, 0.4]},
                                                     "moco_v3": {"knn_acc": 0.3}})
    write_result(tmp_path / "00_tour", "smoke-a", "nested", {"knn_acc": 0.0})  # too deep: not a run folder

    text = leaderboard(tmp_path)
    with open(tmp_path / "leaderboard.csv", newline="") as f:
        reader = csv.DictReader(f)
        columns, rows = reader.fieldnames, list(reader)
    assert columns == ["chapter", "run", "entry", "backbone", "knn_acc", "steps", "linear_acc", "cosface_acc"]
    assert [(r["chapter"], r["run"], r["entry"]) for r in rows] == [
        ("00_tour", "smoke-a", ""), ("00_tour", "smoke-b", ""), ("01_supervised", "lab", ""),
        ("03_contrastive", "lab", "moco_v3"), ("03_contrastive", "lab", "simclr")]  # one row per method
    assert rows[0]["knn_acc"] == "0.912345" and rows[0]["steps"] == "40" and rows[0]["linear_acc"] == ""
    assert rows[1]["linear_acc"] == "0.75" and rows[2]["cosface_acc"] == "0.8" and rows[2]["knn_acc"] == ""
    assert rows[4]["knn_acc"] == "0.4"  # the curve (a list) stays out

    md = (tmp_path / "leaderboard.md").read_text().splitlines()  # one table per chapter, its headline columns
    assert md[:6] == ["## 00_tour", "", "| run | entry | knn_acc | linear_acc |", "|" + "---|" * 4,
                      "| smoke-a |  | 0.9123 | |", "| smoke-b |  | 0.5 | 0.75 |"]
    assert md[7:11] == ["## 01_supervised", "", "| run | entry | cosface_acc |", "|---|---|---|"]  # no headline: all
    assert md[13:] == ["## 03_contrastive", "", "| run | entry | knn_acc |", "|---|---|---|", "| lab | simclr | 0.4 |",
                       "| lab | moco_v3 | 0.3 |"]  # the entries in the order the run wrote them
    assert "\n".join(md) in text and "leaderboard.csv" in text


def test_leaderboard_flattens_an_entrys_nested_metrics_into_columns(tmp_path):
    write_result(tmp_path, "03_contrastive", "lab", {"simclr": {"knn_acc": 0.4, "probe": {"shape": 0.5, "colour": 0.9},
                                                                "collapse": {"erank": 7.5}}})
    leaderboard(tmp_path)
    with open(tmp_path / "leaderboard.csv", newline="") as f:
        row = next(csv.DictReader(f))
    assert (row["probe/shape"], row["probe/colour"], row["collapse/erank"]) == ("0.5", "0.9", "7.5")


def test_leaderboard_orders_runs_by_the_numbers_in_their_names(tmp_path):
    for batch in (128, 32, 256, 64):
        write_result(tmp_path, "02_clip", f"lab-batch_size={batch}", {"batch_size": batch})
    leaderboard(tmp_path)
    with open(tmp_path / "leaderboard.csv", newline="") as f:
        assert [int(r["batch_size"]) for r in csv.DictReader(f)] == [32, 64, 128, 256]


def test_leaderboard_without_results_writes_nothing(tmp_path):
    assert "no results.json" in leaderboard(tmp_path)
    assert list(tmp_path.iterdir()) == []


# ---- main -------------------------------------------------------------------------------
def test_main_run_with_a_bad_parameter_exits_2_before_running(tmp_path, capsys, monkeypatch):
    import papermill

    def refuse(*args, **kwargs):
        raise AssertionError("no notebook may run when a parameter is refused")

    monkeypatch.setattr(papermill, "execute_notebook", refuse)
    assert main(["run", "00", "-p", "scale=huge", "--runs-dir", str(tmp_path)]) == 2
    out, err = capsys.readouterr()
    assert err.startswith("vfm-lab: scale='huge' is not a scale; choose one of smoke, lab, full")
    assert out == "" and list(tmp_path.iterdir()) == []


def test_main_leaderboard(tmp_path, capsys):
    write_result(tmp_path, "00_tour", "smoke", {"knn_acc": 0.5})
    assert main(["leaderboard", "--runs-dir", str(tmp_path)]) == 0
    assert "## 00_tour" in (out := capsys.readouterr().out) and "| smoke |  | 0.5 |" in out


def test_run_executes_a_chapter_gathers_the_leaderboard_and_skips_it_next_time(tmp_path, capsys, monkeypatch):
    """The batch runner end to end: papermill runs chapter 00 (tiny, on a CIFAR-10 of random pixels: the
    real-data check of 00 below), results.json lands in its run folder, the leaderboard gathers it, and a second
    call skips the finished run."""
    write_cifar(tmp_path / "data" / "cifar10", per_batch=128)
    monkeypatch.setenv("VFM_LAB_DATA", str(tmp_path / "data"))  # the kernel inherits it
    args = ["run", "00", "-p", "scale=smoke", "-p", "dataset=cifar10", "-p", "n_train=256", "-p", "n_test=128",
            "-p", "epochs=1", "--runs-dir", str(tmp_path), "--quiet"]
    assert main(args) == 0
    folder = tmp_path / "00_tour" / "smoke-dataset=cifar10-epochs=1-n_test=128-n_train=256"
    results = json.loads((folder / "results.json").read_text())
    assert results["chapter"] == "00_tour" and 0.0 <= results["trained"]["knn_acc"] <= 1.0
    assert results["config"]["dataset"] == "cifar10"
    assert (folder / "00_tour.ipynb").exists() and (folder / "DONE").exists()
    md = (tmp_path / "leaderboard.md").read_text()
    assert "## 00_tour" in md and "| entry | knn_acc | linear_acc | train_seconds |" in md
    assert "| random_init |" in md and "| trained |" in md
    capsys.readouterr()
    assert main(args) == 0
    assert "done before, skipped" in capsys.readouterr().out


def dataset_field(chapter: str) -> dataclasses.Field:
    return next(f for f in dataclasses.fields(CONFIGS[chapter]) if f.name == "dataset")


# The chapters that train on shapes by default and take a benchmark: the others train their headline on
# Fashion-MNIST (classes, no attributes) by default, so `make test`'s nbval run of each is that check for them,
# or take image-caption pairs only.
REAL_DATA_RUNS = [c[:2] for c in CONFIGS if dataset_field(c).default == "shapes"
                  and "cifar10" in dataset_field(c).metadata["choices"]]


def test_the_real_data_check_covers_chapters_00_and_01_and_nbval_the_rest():
    assert REAL_DATA_RUNS == ["00", "01"]
    assert {dataset_field(c).default for c in ("03_contrastive", "04_non_contrastive", "05_mim")} == {"fashion-mnist"}


@pytest.mark.parametrize("chapter", [c for c in REAL_DATA_RUNS if c != "00"])  # 00: the batch-runner test above
def test_each_chapter_runs_on_a_real_data_set_without_attributes(chapter, tmp_path, monkeypatch):
    """A chapter that trains on shapes by default must run through on a benchmark too (CIFAR-10: classes, no
    attributes, no captions; 02, on image-caption pairs, refuses it by name). Here a
    CIFAR-10 of random pixels in its python-pickle format, read by the real loader."""
    write_cifar(tmp_path / "data" / "cifar10", per_batch=128)
    monkeypatch.setenv("VFM_LAB_DATA", str(tmp_path / "data"))  # the kernel inherits it
    args = ["run", chapter, "-p", "scale=smoke", "-p", "dataset=cifar10", "--runs-dir", str(tmp_path / "runs"),
            "--quiet"]
    assert main(args + ["-p", "n_train=256", "-p", "n_test=128", "-p", "epochs=1"]) == 0
    (results,) = (tmp_path / "runs").glob("*/*/results.json")
    results = json.loads(results.read_text())
    assert results["config"]["dataset"] == "cifar10"
    entries = {k: v for k, v in results.items() if k not in ("chapter", "scale", "config")}
    assert entries and all(isinstance(v, dict) for v in entries.values())  # one convention: an entry per model
