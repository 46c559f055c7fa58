import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from tests.margins import above, below
from tests.toy import LinearToy, ToyMethod, toy_data
from vfm_lab.engine import (CheckpointError, NonFiniteLossError, cosine_schedule, ema_update, fit,
                            load_checkpoint)

FIT = dict(epochs=3, batch_size=32, lr=0.05, device="cpu", precision="fp32", progress=False, log_every=2)


def run(out_dir=None, seed=0, **kw):
    torch.manual_seed(seed)
    method = ToyMethod()
    result = fit(method, toy_data(), seed=seed, out_dir=out_dir, **{**FIT, **kw})
    return method, result


def test_cosine_schedule_matches_formula():
    s = cosine_schedule(2.0, 0.1, total_steps=10, warmup_steps=4)
    assert len(s) == 10
    np.testing.assert_allclose(s[:4], [0.0, 0.5, 1.0, 1.5])
    t = np.arange(6) / 6
    np.testing.assert_allclose(s[4:], 0.1 + 0.5 * 1.9 * (1 + np.cos(np.pi * t)))
    with pytest.raises(ValueError, match="warmup_steps"):
        cosine_schedule(1.0, 0.0, total_steps=3, warmup_steps=4)


def test_ema_update_formula():
    a, b = nn.Linear(3, 2), nn.Linear(3, 2)
    expected = [0.9 * p.detach().clone() + 0.1 * q.detach() for p, q in zip(a.parameters(), b.parameters())]
    ema_update(a, b, 0.9)
    for p, e in zip(a.parameters(), expected):
        torch.testing.assert_close(p, e)


@pytest.mark.learning
def test_fit_learns_and_logs(tmp_path):
    method, result = run(tmp_path)
    assert result.steps == 3 * (256 // 32)
    assert method.ema_calls == result.steps  # after_step once per optimizer step
    first, last = result.history[0], result.history[-1]
    # measured 0.176 against a line of 0.544, and an accuracy of 0.938, on every kernel of `make test-kernels`
    below("toy: last logged loss against the first", last["loss"], 0.8 * first["loss"])
    above("toy: last logged accuracy", last["acc"], 0.8)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows == result.history
    assert result.history[-1]["lr"] < result.history[0]["lr"]  # the cosine decays
    assert not list(tmp_path.glob("*.tmp*"))  # atomic writes leave no temp file


def test_same_seed_same_run_other_seed_differs():
    _, a = run(seed=1)
    _, b = run(seed=1)
    _, c = run(seed=2)
    assert a.history == b.history
    assert a.history != c.history


def test_resume_equals_uninterrupted(tmp_path):
    """Stop after 1.5 epochs (a checkpoint mid-epoch), resume, compare with one straight run."""
    _, straight = run(tmp_path / "a")
    torch.manual_seed(0)
    partial = ToyMethod()
    with pytest.raises(_Stop):  # interrupted at the end of epoch 2, after the checkpoint at step 12
        fit(partial, toy_data(), seed=0, out_dir=tmp_path / "b", checkpoint_every=12, on_epoch_end=_stop_at(1), **FIT)
    state = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)
    assert state["step"] == 12  # 1.5 epochs of 8 steps
    torch.manual_seed(123)  # a different init: resume must overwrite it
    resumed_method = ToyMethod()
    resumed = fit(resumed_method, toy_data(), seed=0, out_dir=tmp_path / "b", checkpoint_every=12, **FIT)
    assert resumed.resumed_from == 12
    assert resumed.history == straight.history


class _Stop(Exception):
    pass


def _stop_at(epoch_to_stop):
    def hook(epoch):
        if epoch >= epoch_to_stop:
            raise _Stop
        return {}
    return hook


def test_sigkill_then_resume_matches(tmp_path):
    """A real process killed with SIGKILL mid-run resumes to the same final metrics. The child reports
    that it reached its 11th step (and waits there), so the kill lands after the checkpoint of step 9
    however slow the machine is."""
    script = (f"import sys, torch; sys.path.insert(0, {str(Path(__file__).parent.parent)!r})\n"
              "from tests.toy import ToyMethod, toy_data\nfrom vfm_lab.engine import fit\n"
              "torch.manual_seed(0)\n"
              "fit(ToyMethod(hang_at=int(sys.argv[2]), hung=sys.argv[1] + '.hung'), toy_data(), epochs=3,"
              " batch_size=32, lr=0.05, device='cpu', precision='fp32', progress=False, log_every=2, seed=0, out_dir=sys.argv[1],"
              " checkpoint_every=3)\n")
    victim = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "killed"), "11"])
    hung = tmp_path / "killed.hung"
    deadline = time.time() + 120
    while not hung.exists() and victim.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert hung.read_text() == "11", "the child never reached its 11th step"
    assert torch.load(tmp_path / "killed" / "checkpoint.pt", weights_only=False)["step"] == 9
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "killed"), "0"], check=True)
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "straight"), "0"], check=True)
    read = lambda d: (tmp_path / d / "metrics.jsonl").read_text()
    assert read("killed") == read("straight")


def test_non_finite_loss_raises_with_advice():
    class Exploding(ToyMethod):
        def forward(self, batch):
            out = super().forward(batch)
            return {"loss": out["loss"] * float("nan")}

    with pytest.raises(NonFiniteLossError, match=r"loss is nan at step 0.*lower lr"):
        fit(Exploding(), toy_data(), **FIT)


def test_checkpoint_of_another_method_is_refused(tmp_path):
    run(tmp_path)
    bigger = ToyMethod(hidden=32)
    with pytest.raises(CheckpointError, match="does not fit"):
        fit(bigger, toy_data(), out_dir=tmp_path, **FIT)

    class Other(ToyMethod):
        pass

    with pytest.raises(CheckpointError, match="holds a ToyMethod, not a Other"):
        load_checkpoint(tmp_path / "checkpoint.pt", Other())


def test_corrupt_checkpoint_is_refused_not_overwritten(tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        run(tmp_path)
    assert (tmp_path / "checkpoint.pt").read_bytes() == b"not a checkpoint"


def test_grad_accum_matches_big_batch():
    """Two micro-batches of 32 give the same update as one batch of 64 (no BN, no noise)."""
    data = toy_data()

    a, b = LinearToy(), LinearToy()
    kw = dict(FIT, epochs=1, weight_decay=0.0)
    fit(a, data, **{**kw, "batch_size": 64})
    fit(b, data, **{**kw, "batch_size": 32}, grad_accum=2)
    torch.testing.assert_close(a.fc.weight, b.fc.weight, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("bad, match", [(dict(epochs=0), "epochs=0"), (dict(batch_size=1000), "batch_size=1000"),
                                        (dict(lr=-1.0), "lr > 0"), (dict(grad_accum=0), "grad_accum=0")])
def test_bad_arguments_are_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        fit(ToyMethod(), toy_data(), **{**FIT, **bad})


def test_unwritable_out_dir_fails_before_training(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OSError, match="cannot write to out_dir"):
        run(blocker / "sub")


def test_checkpoint_of_a_run_with_other_settings_is_refused(tmp_path):
    run(tmp_path)
    fresh = ToyMethod()
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"lr was 0.05, now 0.01"):
        fit(fresh, toy_data(), out_dir=tmp_path, **{**FIT, "lr": 0.01})
    assert all(torch.equal(v, before[k]) for k, v in fresh.state_dict().items())  # nothing loaded
    _, again = run(tmp_path)  # the same settings resume (here: the run is complete, nothing to do)
    assert again.resumed_from == again.steps
