"""A real two-process DDP run (torchrun, gloo) of the gathers, the sharding and the engine."""
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch

from tests.toy import LinearToy, toy_data
from vfm_lab.engine import fit

ROOT = Path(__file__).resolve().parent.parent


def torchrun(args, tmp_path, timeout=180):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)


def train_job(tmp_path, chapter, **params):
    """`torchrun -m vfm_lab train CHAPTER -p scale=smoke -p key=value ...` on two ranks into tmp_path/run; its
    results.json once it has exited cleanly."""
    args = [a for k, v in {"scale": "smoke", **params, "out_dir": tmp_path / "run"}.items() for a in ("-p", f"{k}={v}")]
    proc = torchrun(["-m", "vfm_lab", "train", chapter, *args], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((tmp_path / "run" / "results.json").read_text())


def test_two_process_gather_shards_and_ddp_training(tmp_path):
    proc = torchrun([str(ROOT / "tests" / "ddp_check.py"), str(tmp_path)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for r in reports:
        assert r["world"] == 2
        assert r["gather_grad_max_err"] < 1e-6  # gradients cross ranks through the gather
        assert r["shard_overlap"] == 0 and r["shard_covers"] == 64
        assert r["ranks_equal"]
        assert not r["bn_stats_equal"]  # local BN sees the local shard
        assert "needs CUDA" in r["sync_bn_error"]

    single = LinearToy()  # the same model trained in one process on the global batch (2 x 16)
    fit(single, toy_data(), epochs=1, batch_size=32, lr=0.05, weight_decay=0.0, device="cpu", precision="fp32",
        progress=False)
    torch.testing.assert_close(torch.tensor(reports[0]["weights"]), single.fc.weight.detach().flatten(),
                               rtol=1e-4, atol=1e-5)


def test_command_line_training_job_under_torchrun(tmp_path):
    """`torchrun -m vfm_lab train 01`: the chapter's job runs DDP on two ranks and writes results.json once."""
    results = train_job(tmp_path, "01", n_train=512, n_test=256, epochs=2, batch_size=32)
    assert results["world_size"] == 2 and results["chapter"] == "01_supervised"
    assert 0.0 <= results["test_acc"] <= 1.0 and results["knn_acc"] > 0.0


def test_pretrain_then_finetune_job_under_torchrun(tmp_path):
    """`torchrun -m vfm_lab train 05`: pre-training and both fine-tunings (scratch, MAE) run DDP on both ranks
    (fine-tuning on rank 0 alone would leave it waiting for rank 1 inside DDP), and rank 0 writes the table."""
    results = train_job(tmp_path, "05", n_train=256, n_test=128, finetune_n_train=128, batch_size=32)
    assert results["mae"]["world_size"] == 2 and {"scratch", "mae"} <= set(results)
    assert all(0.0 <= results[k]["finetune_acc"] <= 1.0 for k in ("scratch", "mae"))


def test_a_dying_rank_stops_the_others_under_torchrun(tmp_path):
    """torchrun's agent sees rank 1 exit and ends rank 0: the job fails in bounded time, nothing hangs."""
    start = time.time()
    proc = torchrun([str(ROOT / "tests" / "ddp_die.py")], tmp_path, timeout=120)
    assert proc.returncode != 0
    assert time.time() - start < 60
    assert "exitcode  : 17" in proc.stderr or "exitcode: 17" in proc.stderr.replace("  ", " ")


def test_a_dying_rank_stops_the_other_without_an_agent(tmp_path):
    """Two processes started by hand (no torchrun agent to kill the survivor): when rank 1 dies, rank 0's
    collective fails with an error within the process-group timeout instead of hanging."""
    with socket.socket() as s:  # a port free now (the OS picks it), not one derived from the pid
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": port, "WORLD_SIZE": "2"}
    start = time.time()
    procs = [subprocess.Popen([sys.executable, str(ROOT / "tests" / "ddp_die.py")], cwd=tmp_path,
                              env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for r in range(2)]
    outs = [p.communicate(timeout=180)[0] for p in procs]
    elapsed = time.time() - start
    assert procs[1].returncode == 17
    assert procs[0].returncode == 3, outs[0][-2000:]  # rank 0 raised (gloo reports the lost peer)
    assert "rank 0 stopped after" in outs[0]
    assert "PeerStoppedError: rank 1 stopped (or stopped answering) while rank 0 of 2 waited" in outs[0]  # one line
    assert elapsed < 150  # the process-group timeout (120 s) bounds it


def test_chapter_06_flip_job_under_torchrun(tmp_path):
    """`torchrun -m vfm_lab train 06 -p part=flip`: every rank times the masking ratios (the loss gathers across
    ranks, so a benchmark on rank 0 alone would hang the other), then the FLIP runs and unmasked tunings run DDP."""
    results = train_job(tmp_path, "06", part="flip", n_train=64, n_test=32, finetune_n_train=32, batch_size=32)
    assert {"flip-0", "flip-50", "flip-75", "flip-50-unmasked", "flip-75-unmasked"} <= set(results)
    assert results["flip-75"]["world_size"] == 2 and results["flip-75"]["pairs_per_s"] > 0


def test_chapter_07_job_under_torchrun(tmp_path):
    """`torchrun -m vfm_lab train 07`: CoCa (the contrastive loss gathers across ranks, each rank its own questions
    and hard negatives), then CoCa without its decoder, whose decoder and heads get no gradient on any rank."""
    results = train_job(tmp_path, "07", n_train=64, n_test=32, batch_size=16)
    assert results["coca"]["world_size"] == 2 and results["clip"]["world_size"] == 2
    assert {"caption_attr_acc", "vqa_acc", "itm_acc"} <= set(results["coca"]) and "vqa_acc" not in results["clip"]


def test_chapter_08_job_under_torchrun(tmp_path):
    """`torchrun -m vfm_lab train 08`: the CLIP towers trained here under DDP, then the grounder (each rank its own
    positives, the alignment over its own batch's texts) on both text encoders; rank 0 evaluates and writes COCO JSON."""
    results = train_job(tmp_path, "08", n_train=64, n_test=32, batch_size=16)
    assert results["glip"]["world_size"] == 2 and results["glip-minilm-locked"]["world_size"] == 2
    assert {"grounding_acc", "seen_AP50", "heldout_AP50"} <= set(results["glip"])
    gt = json.loads((tmp_path / "run" / "glip" / "coco" / "heldout_gt.json").read_text())
    assert {c["name"] for c in gt["categories"]} == {"heart", "ring"}


def test_chapter_09_job_under_torchrun(tmp_path):
    """`torchrun -m vfm_lab train 09`: the promptable segmenter (each rank its own objects, boxes and follow-up clicks;
    every part, the background-point embedding included, gets a gradient on every rank), then the CLIP towers and the
    open-vocabulary segmenter; rank 0 evaluates."""
    results = train_job(tmp_path, "09", n_train=64, n_test=16, batch_size=8)
    assert results["sam"]["world_size"] == 2 and results["lseg"]["world_size"] == 2
    assert {"click1_miou", "flood_miou", "encoder_ms_per_image"} <= set(results["sam"])
    assert {"seen_miou", "heldout_miou", "heldout_chance_miou"} <= set(results["lseg"])
