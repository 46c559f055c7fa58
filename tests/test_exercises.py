"""The chapters' exercises: each solution passes its check, each student stub fails it, and each
chapter has at least three exercises with a hint, one of them "predict, then run"."""
from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

import torch
import torch.nn.functional as F

from vfm_lab.backbones import build_backbone
from vfm_lab.exercises import check, check_against_library, exercise_cells, main, role, run_exercises, student_version
from vfm_lab.methods.moco import MoCoV2

NOTEBOOKS = sorted((Path(__file__).parents[1] / "notebooks").glob("*.ipynb"))


def read(path: Path) -> nbformat.NotebookNode:
    return nbformat.read(path, as_version=4)


def exercises(nb: nbformat.NotebookNode) -> list[list[nbformat.NotebookNode]]:
    """The section's exercises: each a markdown task, its solution cell(s), its check cell."""
    groups: list[list[nbformat.NotebookNode]] = []
    for cell in exercise_cells(nb)[1:]:
        if cell.cell_type == "markdown":
            groups.append([cell])
        elif groups:
            groups[-1].append(cell)
    return groups


@pytest.fixture(scope="module", params=NOTEBOOKS, ids=lambda p: p.stem)
def notebook(request) -> nbformat.NotebookNode:
    return read(request.param)


def test_every_chapter_has_three_exercises_each_with_a_hint_and_one_to_predict(notebook):
    groups = exercises(notebook)
    assert len(groups) >= 3
    ids = []
    for task, *cells in groups:
        roles = [role(c) for c in cells]
        assert roles[-1] == "check" and "solution" in roles and set(roles) <= {"solution", "check"}, task.source[:60]
        assert "*Hint:*" in task.source, task.source[:60]
        assert all("hint=" in c.source for c in cells if role(c) == "check"), task.source[:60]
        assert all("### BEGIN SOLUTION" in c.source and "### END SOLUTION" in c.source
                   for c in cells if role(c) == "solution"), task.source[:60]
        ids += [c.metadata.nbgrader.grade_id for c in cells]
    assert len(ids) == len(set(ids)), "nbgrader needs a grade_id that is unique in the notebook"
    assert any(re.match(r"\*\*\d+\. Predict, then run", task.source) for task, *_ in groups), \
        "at least one exercise per chapter asks for a prediction and checks it against a run"


def test_the_solutions_pass_their_checks_in_the_exercise_section_alone(notebook, capsys):
    ran = run_exercises(notebook)
    failed = {c.source[:50]: repr(e) for c, e in ran if e is not None}
    assert not failed
    checks = sum(role(c) == "check" for c, _ in ran)
    assert capsys.readouterr().out.count("✓") >= checks  # every check cell printed at least one tick


def test_every_check_fails_on_the_student_stub(notebook, capsys):
    student = student_version(notebook)
    assert not any("BEGIN SOLUTION" in c.source or c.get("outputs") for c in student.cells)
    stubs = [c for c in student.cells if role(c) == "solution"]
    assert stubs and all("raise NotImplementedError()" in c.source for c in stubs)
    ran = run_exercises(student)
    passed = [c.source[:60] for c, e in ran if role(c) == "check" and e is None]
    assert not passed, f"these checks pass without the student's code: {passed}"
    assert "✓" not in capsys.readouterr().out


def test_make_student_writes_the_notebooks_without_solutions(tmp_path, capsys):
    assert main([str(tmp_path), str(NOTEBOOKS[0])]) == 0
    written = read(tmp_path / NOTEBOOKS[0].name)
    assert "BEGIN SOLUTION" not in "".join(c.source for c in written.cells)
    assert re.search(r"\d+ solution\(s\) replaced by a stub", capsys.readouterr().out)


def test_a_solution_region_outside_a_solution_cell_is_refused():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("### BEGIN SOLUTION\nx = 1\n### END SOLUTION")])
    with pytest.raises(RuntimeError, match="Solution region detected in a non-solution cell"):
        student_version(nb)


def test_a_notebook_without_exercises_is_named():
    with pytest.raises(ValueError, match="no markdown cell starting with '## Exercises'"):
        exercise_cells(nbformat.v4.new_notebook())


def test_check_compares_words_and_says_what_was_expected():
    check("a word", " Lower", "lower")
    with pytest.raises(AssertionError, match=r"✗ a word: expected 'lower', got 'higher' \(hint: fewer terms\)"):
        check("a word", "higher", "lower", hint="fewer terms")
    with pytest.raises(AssertionError, match=r"expected shape \(3,\), got \(2,\)"):
        check("a vector", [1.0, 2.0], [1.0, 2.0, 3.0])


# ---- a notebook's key lines against the library ----------------------------------------------
KEY_LINES = {"01_supervised": ["cross-entropy", "CosFace", "sampled softmax"], "02_clip": ["CLIP", "SigLIP"],
             "03_contrastive": ["SimCLR", "MoCo v2", "MoCo v3"], "04_non_contrastive": ["BYOL", "SimSiam", "DINO"],
             "05_mim": ["MAE", "SimMIM", "MaskFeat", "BEiT"],
             "06_synergy": ["UniCL", "SLIP", "LiT", "FLIP", "MIM with CLIP targets"], "07_fusion": ["CoCa + ITM"],
             "08_region": ["GLIP grounder"], "09_pixel": ["SAM", "LSeg"]}


@pytest.mark.parametrize("chapter, methods", KEY_LINES.items())
def test_each_chapter_checks_the_key_lines_of_its_methods_against_the_library(chapter, methods):
    nb = read(Path(__file__).parents[1] / "notebooks" / f"{chapter}.ipynb")
    checked = [m for c in nb.cells if c.cell_type == "code" for m in re.findall(r'check_against_library\("([^"]+)"', c.source)]
    assert checked == methods


def moco_lines(model, batch, *, tau_factor=1.0, enqueue=True):
    """MoCo v2's one-way step written out; ``tau_factor`` and ``enqueue`` make it wrong on purpose."""
    x = batch["image"]
    x1, x2 = model.view1(x), model.view2(x)
    queue = model.queue.clone()
    q = F.normalize(model.projector(model.backbone(x1)), dim=1)
    with torch.no_grad():
        k = F.normalize(model.key_projector(model.key_backbone(x2)), dim=1)
    logits = torch.cat([(q * k).sum(1, keepdim=True), q @ queue.T], 1) / (model.criterion.temperature * tau_factor)
    if enqueue:
        model.enqueue(k)
    return F.cross_entropy(logits, torch.zeros(len(x), dtype=torch.long))


@pytest.fixture
def moco():
    torch.manual_seed(0)
    return MoCoV2(build_backbone("convnet-s", 3, 16), proj_dim=8, queue_size=12, momentum=0.9), \
        {"image": torch.rand(4, 3, 16, 16)}


def test_check_against_library_passes_the_same_step_and_leaves_the_method_as_it_was(moco, capsys):
    model, batch = moco
    before = {k: v.clone() for k, v in model.state_dict().items()}
    check_against_library("MoCo v2", model, batch, moco_lines)
    assert "✓ MoCo v2: the same loss" in capsys.readouterr().out
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("wrong, match", [(dict(tau_factor=2.0), "the cell's loss is"),
                                          (dict(enqueue=False), r"state after the step differs .* \['queue'")])
def test_check_against_library_names_what_differs(moco, wrong, match):
    model, batch = moco
    with pytest.raises(AssertionError, match=match):
        check_against_library("MoCo v2", model, batch, lambda m, b: moco_lines(m, b, **wrong))


def test_check_against_library_checks_the_cells_own_after_step(moco):
    model, batch = moco
    check_against_library("MoCo v2 with the library's EMA", model, batch, moco_lines, lambda m: m.after_step(0, 10))
    with pytest.raises(AssertionError, match="state after the step differs .*'key_backbone"):
        check_against_library("MoCo v2 without the EMA", model, batch, moco_lines, lambda m: None)
