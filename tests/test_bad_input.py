"""Bad input is refused before any work, the same way from a notebook and from the command line.

One table of bad parameters (issue 6: unknown key, wrong type, zero or negative sizes, a
batch larger than the data, unknown method / dataset / scale / backbone / device names,
CUDA where there is none). Each goes through both doors a student uses:

- the notebook's: ``XConfig.from_params`` and ``XConfig.from_scope`` (a parameters cell
  plus whatever papermill injected);
- the command line's: ``vfm-lab run NN -p key=value`` (exit status 2, one line on stderr,
  and no notebook started).

Each message must name the bad value and what would be valid. ``python -m tests.test_bad_input``
prints the table "input -> message".

Also refused before training: an output folder that is unwritable or too full for the
checkpoints (a real 2 MiB tmpfs where we may mount one). And under DDP, a collective that
fails because another rank died becomes one clear ``PeerStoppedError`` line.
"""
from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
from pathlib import Path

import papermill
import pytest
import torch

from tests.test_real_data import write_cifar
from tests.toy import ToyMethod, toy_data
from vfm_lab import distributed as D
from vfm_lab.backbones import BACKBONE_NAMES
from vfm_lab.cli import main
from vfm_lab.config import CONFIGS, ConfigError, TourConfig
from vfm_lab.data import DATASET_NAMES
from vfm_lab.engine import fit

FIT = dict(epochs=1, batch_size=32, lr=0.05, device="cpu", precision="fp32", progress=False)

# the chapter with a `method` choice (03 onwards), for the unknown-method row
METHOD_CHAPTER = next((name for name, cls in sorted(CONFIGS.items()) for f in dataclasses.fields(cls)
                       if f.name == "method" and f.metadata.get("choices")), None)
# a CUDA device this machine lacks: any where there is no GPU, else one past the last GPU
NO_CUDA, NO_CUDA_NAMED = (("cuda", "use device='cpu'") if not torch.cuda.is_available() else
                          (f"cuda:{torch.cuda.device_count()}", "cuda:0.."))

# (what is wrong, chapter, parameters, words the message must hold: the bad value, then what is valid)
CASES = [
    ("unknown key", "00_tour", {"epocs": 2}, ["'epocs'", "did you mean 'epochs'", "Valid parameters", "batch_size"]),
    ("wrong type: text for an int", "00_tour", {"epochs": "two"}, ["epochs='two'", "type int"]),
    ("wrong type: float for an int", "00_tour", {"batch_size": 2.5}, ["batch_size=2.5", "type int"]),
    ("wrong type: bool for an int", "00_tour", {"n_train": True}, ["n_train=True", "type int"]),
    ("wrong type: text for a float", "00_tour", {"lr": "fast"}, ["lr='fast'", "type float"]),
    ("zero epochs", "00_tour", {"epochs": 0}, ["epochs=0", "minimum 1"]),
    ("zero batch size", "00_tour", {"batch_size": 0}, ["batch_size=0", "minimum 1"]),
    ("zero image size", "00_tour", {"image_size": 0}, ["image_size=0", "minimum 8"]),
    ("negative size", "00_tour", {"n_train": -5}, ["n_train=-5", "minimum 0"]),
    ("negative learning rate", "00_tour", {"lr": -0.1}, ["lr=-0.1", "minimum 1e-08"]),
    ("zero learning rate", "05_mim", {"finetune_lr": 0.0}, ["finetune_lr=0.0", "minimum 1e-08"]),
    ("negative seed", "01_supervised", {"seed": -1}, ["seed=-1", "minimum 0"]),
    ("out of range", "01_supervised", {"margin": 1.5}, ["margin=1.5", "maximum 0.99"]),
    # on the command line `-p lr=nan` is the text 'nan': refused as the wrong type, naming lr and nan too
    ("not a number", "00_tour", {"lr": float("nan")}, ["lr=", "nan"]),
    ("infinite", "00_tour", {"warmup_epochs": float("inf")}, ["warmup_epochs=", "inf"]),
    ("batch larger than the data", "00_tour", {"batch_size": 4096}, ["batch_size=4096", "n_train=1024",
                                                                      "at most 1024"]),
    ("unknown dataset", "00_tour", {"dataset": "imagenet"}, ["dataset='imagenet'", *map(repr, DATASET_NAMES)]),
    ("CLIP on a data set without captions", "02_clip", {"dataset": "cifar10"},
     ["dataset='cifar10'", "'shapes'", "'emoji'", "'openmoji'", "'openclipart'"]),
    ("unknown scale (preset)", "00_tour", {"scale": "huge"}, ["scale='huge'", "smoke", "lab", "full"]),
    ("unknown backbone", "00_tour", {"backbone": "vit-huge"}, ["backbone='vit-huge'", *map(repr, BACKBONE_NAMES)]),
    ("unknown precision", "00_tour", {"precision": "fp8"}, ["precision='fp8'", "'fp32'", "'bf16'"]),
    ("unknown device name", "00_tour", {"device": "tpu"}, ["device='tpu'", "auto, cpu, cuda, cuda:N or mps"]),
    ("CUDA where there is none", "00_tour", {"device": NO_CUDA}, [f"device='{NO_CUDA}'", NO_CUDA_NAMED]),
    ("fp16 on the CPU", "00_tour", {"device": "cpu", "precision": "fp16"}, ["precision='fp16'", "'bf16' or 'fp32'"]),
    # found by trying inputs the table did not list: each failed only after loading data or training, with a traceback
    ("ViT patches that do not tile the image", "05_mim", {"image_size": 30},
     ["image_size=30", "patch size 4", "backbone='vit-nano'", "28 or 32"]),
    ("DINO's ViT patches that do not tile the image", "04_non_contrastive", {"image_size": 30},
     ["image_size=30", "dino_backbone='vit-nano'", "28 or 32"]),
    ("one image per batch for CLIP", "02_clip", {"batch_size": 1}, ["batch_size=1", "minimum 2"]),
    ("one image per batch for SimCLR", "03_contrastive", {"batch_size": 1}, ["batch_size=1", "minimum 2"]),
    ("one image per batch for BYOL", "04_non_contrastive", {"batch_size": 1}, ["batch_size=1", "minimum 2"]),
    ("one held-out image", "03_contrastive", {"n_test": 1}, ["n_test=1", "at least 2", "0 for all"]),
    ("shapes smaller than it draws", "00_tour", {"image_size": 8}, ["image_size=8", "dataset='shapes'",
                                                                     "at least 16"]),
    ("DINO local crops larger than the image", "04_non_contrastive", {"local_size": 64},
     ["local_size=64", "image_size=32", "at most 32"]),
    ("mask squares that do not tile the patches", "05_mim", {"mask_block": 3}, ["mask_block=3", "8x8",
                                                                                 "1, 2, 4, 8"]),
    ("MAE masking that hides nothing", "05_mim", {"mask_ratio": 0.0}, ["mask_ratio=0.0", "hides no patch",
                                                                       "above 0"]),
    ("SimMIM masking that hides nothing", "05_mim", {"mask_token_ratio": 0.0}, ["mask_token_ratio=0.0",
                                                                                 "hides no patch", "above 0"]),
    ("a codebook larger than its patches", "05_mim", {"codebook_size": 40000},
     ["codebook_size=40000", "32768 patches of n_train=512"]),
    ("a mask decoder whose heads do not split its channels", "09_pixel", {"dim": 36},
     ["dim=36", "multiple of 8 and of heads=4"]),
    ("a pyramid the mask decoder cannot upsample to the image", "09_pixel", {"backbone": "resnet18"},
     ["backbone='resnet18'", "'convnet-s'", "'vit-nano'", "'vit-tiny'"]),
    ("more icons than a scene holds", "09_pixel", {"dataset": "icon-scenes", "max_objects": 4},
     ["max_objects=4", "at most 3 icons", "1 to 3"]),
]
if METHOD_CHAPTER:
    choices = dict((f.name, f.metadata["choices"]) for f in dataclasses.fields(CONFIGS[METHOD_CHAPTER]))["method"]
    CASES.append(("unknown method", METHOD_CHAPTER, {"method": "swav"}, ["method='swav'", *map(repr, choices)]))
IDS = [case[0] for case in CASES]


def cli_message(chapter: str, params: dict, runs_dir, capsys) -> tuple[int, str]:
    """``vfm-lab run <chapter> -p k=v ...``: its exit status and what it printed on stderr."""
    argv = ["run", chapter.split("_")[0], "--runs-dir", str(runs_dir), "--quiet"]
    for key, value in params.items():
        argv += ["-p", f"{key}={value}"]
    status = main(argv)
    return status, capsys.readouterr().err.strip()


@pytest.fixture
def no_notebook_runs(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a notebook started although its parameters are bad")
    monkeypatch.setattr(papermill, "execute_notebook", refuse)


@pytest.mark.parametrize("what, chapter, params, named", CASES, ids=IDS)
def test_bad_input_is_refused_naming_the_value_and_the_choices(what, chapter, params, named, tmp_path, capsys,
                                                               no_notebook_runs):
    cls = CONFIGS[chapter]
    messages = {}
    with pytest.raises(ConfigError) as e:
        cls.from_params(**params)
    messages["from_params"] = str(e.value)
    scope = {"scale": None, "out_dir": "", "torch": torch, "_": 3, **params}  # a kernel's globals
    with pytest.raises(ConfigError) as e:
        cls.from_scope(scope)
    messages["from_scope"] = str(e.value)
    status, messages["cli"] = cli_message(chapter, params, tmp_path / "runs", capsys)
    assert status == 2, f"vfm-lab run exited with {status}: {messages['cli']}"
    assert messages["cli"].startswith("vfm-lab: ") and "\n" not in messages["cli"]  # one line, no traceback
    assert not (tmp_path / "runs").exists()  # refused before any run folder was made
    for door, message in messages.items():
        for word in named:
            assert word in message, f"{door}: {message!r} does not name {word!r}"


# ---- every failure of the command line is one line ---------------------------------------------
def corrupt_cifar10(tmp_path):
    """A CIFAR-10 folder in $VFM_LAB_DATA whose third batch is cut short."""
    write_cifar(tmp_path / "data" / "cifar10")
    batch = tmp_path / "data" / "cifar10" / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:40])


def junk_checkpoint(tmp_path):
    """A run folder whose checkpoint is not a checkpoint."""
    (tmp_path / "run" / "train-ce").mkdir(parents=True)
    (tmp_path / "run" / "train-ce" / "checkpoint.pt").write_text("not a checkpoint")


def grid_file(text):
    return lambda tmp_path: (tmp_path / "grid.yaml").write_text(text)


SMALL = ["-p", "n_train=64", "-p", "n_test=32", "-p", "batch_size=32"]
# (what goes wrong, set-up in tmp_path, argv, exit status, words the one line must hold)
FAILURES = [
    ("unknown chapter", None, ["run", "99"], 2, ["unknown chapter '99'", "choose 'all' or one of 00_tour"]),
    ("malformed parameter", None, ["run", "00", "-p", "epochs"], 2, ["-p 'epochs'", "key=value"]),
    ("a grid file that does not exist", None, ["run", "01", "--grid", "{tmp}/nowhere.yaml"], 2,
     ["--grid '{tmp}/nowhere.yaml'", "cannot read it", "No such file"]),
    ("a grid file that is not YAML", grid_file("lr: [0.1, 0.2\nepochs: 2\n"),
     ["run", "01", "--grid", "{tmp}/grid.yaml"], 2,
     ["grid.yaml' is not valid YAML at line 2, column 7", "expected ',' or ']'"]),
    ("data missing", None, ["train", "03", "-p", "dataset=cifar10"], 1,
     ["cifar10 is not on this machine", "{tmp}/data/cifar10", "bash data_scripts/fetch.sh cifar10"]),
    ("a corrupt data file", corrupt_cifar10, ["train", "03", "-p", "dataset=cifar10"], 1,
     ["data_batch_3 is corrupt or incomplete", "fetch.sh cifar10"]),
    ("an unreadable checkpoint", junk_checkpoint,
     ["train", "01", *SMALL, "-p", "epochs=1", "-p", "out_dir={tmp}/run"], 1,
     ["checkpoint.pt is not a readable checkpoint", "resume=False"]),
    # 3 epochs of 2 steps: nan at step 2 for every lr from 1e10 to 1e30 here (at 1e35 AdamW itself overflows)
    ("a loss that is not finite", None, ["train", "01", *SMALL, "-p", "epochs=3", "-p", "lr=1e20", "-p",
                                         "out_dir={tmp}/nan"], 1, ["loss is ", " at step ", "Try a lower lr",
                                                                   "{tmp}/nan/train-ce"]),
    ("an out_dir that cannot be a folder", grid_file(""), ["train", "01", "-p", "out_dir={tmp}/grid.yaml/run"], 2,
     ["out_dir='{tmp}/grid.yaml/run' cannot be a folder", "is a file"]),
    ("a shape the ViT cannot cut", None, ["train", "05", "-p", "image_size=30"], 2,
     ["image_size=30 is not divisible by the patch size 4"]),
]


@pytest.mark.parametrize("what, setup, argv, status, named", FAILURES, ids=[f[0] for f in FAILURES])
def test_every_failure_of_the_command_line_is_one_line(what, setup, argv, status, named, tmp_path, monkeypatch,
                                                       capsys, no_notebook_runs):
    """`vfm-lab run` and `vfm-lab train` end each failure with one line on stderr, `vfm-lab: ...`, and its exit
    status (2: bad parameters, refused before any work; 1: the rest), with no traceback."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VFM_LAB_DATA", str(tmp_path / "data"))
    monkeypatch.delenv("VFM_LAB_DEBUG", raising=False)
    if setup:
        setup(tmp_path)
    fill = lambda text: text.replace("{tmp}", str(tmp_path))
    assert main([fill(a) for a in argv]) == status
    err = capsys.readouterr().err
    line = err.splitlines()[-1]
    assert line.startswith("vfm-lab: ") and "Traceback" not in err
    for word in named:
        assert fill(word) in line, f"{line!r} does not name {fill(word)!r}"


@pytest.mark.parametrize("error, status, line", [
    (RuntimeError("mat1 and mat2 shapes cannot be multiplied\n(64x10 and 12x3)"), 1,
     "vfm-lab: RuntimeError: mat1 and mat2 shapes cannot be multiplied (64x10 and 12x3) (unexpected; rerun with "
     "--debug for the traceback and report it)"),
    (KeyboardInterrupt(), 130, "vfm-lab: interrupted; run the same command again to resume from the last checkpoint"),
    (PermissionError(13, "Permission denied", "/runs/x"), 1, "vfm-lab: [Errno 13] Permission denied: '/runs/x'"),
])
def test_an_unexpected_error_is_one_line_too_and_debug_shows_the_traceback(error, status, line, monkeypatch, capsys):
    def fails(args):
        raise error
    monkeypatch.setattr("vfm_lab.cli.train", fails)
    monkeypatch.delenv("VFM_LAB_DEBUG", raising=False)
    assert main(["train", "01"]) == status
    assert capsys.readouterr().err == line + "\n"
    for argv, env in ((["--debug", "train", "01"], None), (["train", "01", "--debug"], None), (["train", "01"], "1")):
        if env:
            monkeypatch.setenv("VFM_LAB_DEBUG", env)
        with pytest.raises(type(error)):
            main(argv)


def test_a_good_configuration_still_builds():
    """The table is not refusing everything: the same chapters accept their presets."""
    assert TourConfig.from_params(scale="smoke", device="cpu", batch_size=1024).batch_size == 1024
    for name in {case[1] for case in CASES}:
        CONFIGS[name].from_params(scale="smoke", device="cpu")


# ---- a full or unwritable output folder --------------------------------------------------
class BigToy(ToyMethod):
    """ToyMethod with a 1024-wide hidden layer: a checkpoint (weights + AdamW's two moments) of 0.8 MiB,
    so 2.6 MiB of free space with the old and the new side by side and the engine's 1 MiB margin."""

    def __init__(self):
        super().__init__(hidden=1024)
        self.steps = 0

    def forward(self, batch):
        self.steps += 1
        return super().forward(batch)


@pytest.fixture
def small_disk(tmp_path, monkeypatch):
    """A 2 MiB tmpfs (we are root in CI); where mounting is not allowed, a folder whose reported free space
    is 2 MiB. Yields the folder and which of the two it is."""
    mount = tmp_path / "disk"
    mount.mkdir()
    mounted = bool(shutil.which("mount")) and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2M", "tmpfs", str(mount)], capture_output=True).returncode == 0
    if not mounted:
        real = shutil.disk_usage
        monkeypatch.setattr(shutil, "disk_usage", lambda path: real(path)._replace(free=2 * 2**20)
                            if str(path).startswith(str(mount)) else real(path))
    try:
        yield mount, "tmpfs" if mounted else "patched disk_usage"
    finally:
        if mounted:
            subprocess.run(["umount", str(mount)], check=True)


def test_a_full_output_folder_fails_before_training_naming_free_and_needed_bytes(small_disk):
    folder, kind = small_disk
    method = BigToy()
    with pytest.raises(OSError) as e:
        fit(method, toy_data(), out_dir=folder / "run", **FIT)
    message = str(e.value)
    print(f"\n[{kind}] {message}")
    assert f"out_dir={str(folder / 'run')!r}" in message and "MiB free" in message and "need about" in message
    free, needed = (int(n) for n in re.findall(r"\((\d+) bytes", message))
    assert free <= 2 * 2**20 < needed
    assert method.steps == 0 and not (folder / "run" / "checkpoint.pt").exists()  # refused before any step
    small = ToyMethod()  # a method whose checkpoints fit trains there
    assert fit(small, toy_data(), out_dir=folder / "small", **FIT).steps == FIT["epochs"] * 8
    assert (folder / "small" / "checkpoint.pt").exists()


def test_an_unwritable_output_folder_fails_before_training(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    method = BigToy()
    with pytest.raises(OSError, match=re.escape(f"cannot write to out_dir={str(blocker / 'run')!r}")):
        fit(method, toy_data(), out_dir=blocker / "run", **FIT)
    assert method.steps == 0


# ---- a peer rank that died -------------------------------------------------------------------
GLOO_LOST_PEER = ("[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:545] Read error "
                  "[127.0.0.1]:50925: Connection reset by peer. This is typically caused by a remote worker hanging")


@pytest.mark.parametrize("world, error, becomes", [
    (2, RuntimeError(GLOO_LOST_PEER), "rank 1 stopped (or stopped answering) while rank 0 of 2 waited for it"),
    (4, RuntimeError("NCCL communicator was aborted"), "another rank stopped (or stopped answering) while rank 0 of 4"),
    (2, RuntimeError("mat1 and mat2 shapes cannot be multiplied"), None),  # the method's own bug: unchanged
    (1, RuntimeError(GLOO_LOST_PEER), None),  # one process: nothing to translate
])
def test_a_lost_peer_becomes_one_clear_error(world, error, becomes, monkeypatch):
    """The two-process version (a rank really dies) is tests/test_distributed.py; here, the translation."""
    monkeypatch.setattr(D, "world_size", lambda: world)
    monkeypatch.setattr(D, "rank", lambda: 0)

    @D.reports_stopped_peers
    def train():
        raise error

    with pytest.raises(RuntimeError) as e:
        train()
    if becomes is None:
        assert e.value is error
        return
    assert isinstance(e.value, D.PeerStoppedError) and e.value.__cause__ is error
    message = str(e.value)
    assert message.startswith(becomes) and "\n" not in message and "pair.cc" not in message
    assert str(error).split("]", 1)[-1].strip()[:40] in message  # the backend's own words are kept


@pytest.mark.parametrize("group_up", [False, True])
def test_the_command_line_prints_one_line_for_a_lost_peer(group_up, monkeypatch, capsys):
    """With a (broken) process group up, the process ends with code 1 at once, skipping the interpreter's
    teardown of the group, which can abort; without one, ``main`` returns 1."""
    def dies(args):
        raise D.PeerStoppedError("rank 1 stopped (or stopped answering) while rank 0 of 2 waited for it")

    class Exited(BaseException):
        pass

    def os_exit(code):
        raise Exited(code)
    monkeypatch.setattr("vfm_lab.cli.train", dies)
    monkeypatch.setattr(D, "is_distributed", lambda: group_up)
    monkeypatch.setattr(D.os, "_exit", os_exit)
    if group_up:
        with pytest.raises(Exited) as e:
            main(["train", "01"])
        assert e.value.args == (1,)
    else:
        assert main(["train", "01"]) == 1
    assert capsys.readouterr().err == "vfm-lab: rank 1 stopped (or stopped answering) while rank 0 of 2 waited for it\n"


def table() -> str:
    """Markdown: each bad input, the notebook's message, and the command line's where it differs."""
    import contextlib
    import io
    import tempfile

    rows = ["| what | input | message (notebook: from_params / from_scope) | `vfm-lab run` (exit 2, stderr) |",
            "|---|---|---|---|"]
    for what, chapter, params, _ in CASES:
        try:
            CONFIGS[chapter].from_params(**params)
            message = "(accepted!)"
        except ConfigError as e:
            message = str(e)
        err = io.StringIO()
        with tempfile.TemporaryDirectory() as runs, contextlib.redirect_stderr(err):
            argv = ["run", chapter.split("_")[0], "--runs-dir", runs, "--quiet"]
            status = main(argv + [arg for k, v in params.items() for arg in ("-p", f"{k}={v}")])
        cli = err.getvalue().strip().removeprefix("vfm-lab: ")
        cli = f"{status}: " + ("the same" if cli == message else cli)
        short = lambda text: text if len(text) <= 200 else text[:197] + "..."
        given = " ".join(f"-p {k}={v}" for k, v in params.items())
        rows.append(f"| {what} | `{chapter}` `{given}` | {short(message)} | {short(cli)} |")
    rows += ["", "| what goes wrong | command | exit | the one line on stderr |", "|---|---|---|---|"]
    for what, setup, argv, _, _ in FAILURES:  # each in a fresh folder that is also $VFM_LAB_DATA's parent
        with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stderr(io.StringIO()) as err:
            cwd, os.environ["VFM_LAB_DATA"] = os.getcwd(), f"{tmp}/data"
            os.chdir(tmp)
            try:
                if setup:
                    setup(Path(tmp))
                status = main([a.replace("{tmp}", tmp) for a in argv])
            finally:
                os.chdir(cwd)
                del os.environ["VFM_LAB_DATA"]
            line = err.getvalue().strip().splitlines()[-1].replace(tmp, "$TMP")
        command = "vfm-lab " + " ".join(argv).replace("{tmp}", "$TMP")
        rows.append(f"| {what} | `{command}` | {status} | {line} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(table())
