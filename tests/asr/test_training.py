"""The trainer: LR schedules, precision, reproducible augmentation, exact resume after kill -9,
DDP's step equal to a single process's on the same global batch, the validation table."""

from __future__ import annotations

import json
import math
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from asr.training.schedules import eden_factor, lr_at
from asr.training.trainer import (OptimConfig, TrainConfig, cpu_has_bf16, matmul_precision, plot_curves, resolve_precision, validated_points,
                                  write_valid_table)

ROOT = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------- schedules
def _lrs(cfg: OptimConfig, steps, epoch: int = 1) -> np.ndarray:
    return np.array([lr_at(s, cfg, epoch) for s in steps])


def test_constant_and_noam_shapes():
    c = OptimConfig(lr=1e-3, warmup_steps=100, schedule="constant")
    assert lr_at(50, c) == pytest.approx(5e-4) and lr_at(100, c) == pytest.approx(1e-3)
    assert np.allclose(_lrs(c, range(100, 5000, 97)), 1e-3)
    n = OptimConfig(lr=1e-3, warmup_steps=100, schedule="noam")
    warm = _lrs(n, range(1, 101))
    assert np.all(np.diff(warm) > 0) and warm[-1] == pytest.approx(1e-3)
    assert lr_at(25, n) == pytest.approx(2.5e-4)
    assert lr_at(400, n) == pytest.approx(5e-4)  # 1/sqrt(step) after the peak
    assert lr_at(10000, n) == pytest.approx(1e-4)
    assert np.all(np.diff(_lrs(n, range(100, 3000))) < 0)


def test_cosine_shape():
    c = OptimConfig(lr=1e-3, min_lr=1e-5, warmup_steps=100, total_steps=1100, schedule="cosine")
    assert lr_at(50, c) == pytest.approx(5e-4) and lr_at(100, c) == pytest.approx(1e-3)
    assert lr_at(600, c) == pytest.approx(0.5 * (1e-3 + 1e-5))  # half way down
    assert lr_at(1100, c) == pytest.approx(1e-5) and lr_at(5000, c) == pytest.approx(1e-5)
    assert np.all(np.diff(_lrs(c, range(100, 1101))) < 0)


def test_eden_shape():
    e = OptimConfig(lr=1e-3, warmup_steps=100, schedule="eden", lr_batches=1000, lr_epochs=4)
    # linear warmup, times the (close to 1) step factor
    assert lr_at(50, e) == pytest.approx(0.5e-3 * eden_factor(50, 0, 1000, 4))
    assert np.all(np.diff(_lrs(e, range(1, 101))) > 0)
    # after warmup: falls with steps; lr_batches steps in it is down by 2^-0.25 ...
    assert np.all(np.diff(_lrs(e, range(100, 20000, 50))) < 0)
    assert lr_at(1000, e) == pytest.approx(1e-3 * 2**-0.25)
    # ... and for step >> lr_batches as step^-0.5
    assert lr_at(400_000, e) / lr_at(100_000, e) == pytest.approx(0.5, rel=1e-3)
    # the epoch factor: epoch counts completed epochs (epoch 1 = 0 completed, factor 1)
    assert lr_at(1000, e, epoch=1) == pytest.approx(1e-3 * 2**-0.25)
    assert lr_at(1000, e, epoch=5) == pytest.approx(1e-3 * 2**-0.25 * 2**-0.25)
    assert lr_at(1000, e, epoch=401) / lr_at(1000, e, epoch=101) == pytest.approx(0.5, rel=1e-3)
    by_epoch = [lr_at(3000, e, epoch=k) for k in range(1, 30)]
    assert all(a > b for a, b in zip(by_epoch, by_epoch[1:]))
    with pytest.raises(ValueError, match="lr_batches"):
        lr_at(10, OptimConfig(schedule="eden", lr_batches=0))


@pytest.mark.parametrize("native_bf16", [False, True])
def test_precision_on_cpu(native_bf16, caplog, monkeypatch):
    """The CPU trains in fp32 unless bf16 is asked for on a CPU with bfloat16 instructions."""
    import asr.training.trainer as trainer

    monkeypatch.setattr(trainer, "cpu_has_bf16", lambda: native_bf16)
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == "fp32"
    assert resolve_precision("fp32", cpu) == "fp32"
    with caplog.at_level("WARNING"):
        assert resolve_precision("bf16", cpu) == ("bf16" if native_bf16 else "fp32")
        assert resolve_precision("fp16", cpu) == "fp32"
    warned = [r.message for r in caplog.records if "training in fp32" in r.message]
    assert len(warned) == (1 if native_bf16 else 2)
    assert "fp16 is for GPUs" in warned[-1]
    if not native_bf16:
        assert "no bfloat16 instructions" in warned[0]
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("fp8", cpu)



def test_gpu_precision_needs_native_bf16(monkeypatch):
    """On a GPU, auto is bf16 only where bf16 is native (Ampere on); emulated bf16 (V100, T4)
    counts as none: auto is fp32 there and an explicit bf16 is an error."""
    calls = []

    def supported(including_emulation=True):
        calls.append(including_emulation)
        return including_emulation  # what a V100 answers
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", supported)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla V100")
    gpu = torch.device("cuda", 0)
    assert resolve_precision("auto", gpu) == "fp32"
    with pytest.raises(ValueError, match="V100 does not support bfloat16"):
        resolve_precision("bf16", gpu)
    assert resolve_precision("fp16", gpu) == "fp16"
    assert calls and not any(calls)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)  # an A100
    assert resolve_precision("auto", gpu) == resolve_precision("bf16", gpu) == "bf16"


def test_torchrun_processes_do_not_share_one_named_gpu():
    from asr.training.distributed import Dist

    with pytest.raises(ValueError, match="cuda:LOCAL_RANK"):
        Dist(world_size=2, rank=1, local_rank=1).device("cuda:0")
    assert Dist().device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():  # a clear error, not torch's assertion from deep inside
        with pytest.raises(ValueError, match="device 'cuda': this torch .* use device 'cpu' or 'auto'"):
            Dist().device("cuda")


def test_world_size_without_torchrun_is_refused(monkeypatch):
    from asr.training.distributed import Dist

    for v in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="WORLD_SIZE=2 without RANK, MASTER_ADDR, MASTER_PORT: start the processes with torchrun"):
        Dist.from_env()
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert Dist.from_env().world_size == 1

def test_cpu_bf16_needs_the_instructions(tmp_path):
    from asr.training.trainer import cpu_has_bf16

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni\n")
    assert not cpu_has_bf16(info)
    assert not cpu_has_bf16(tmp_path / "missing")
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16\n")
    assert cpu_has_bf16(info) == torch.ops.mkldnn._is_mkldnn_bf16_supported()


def test_tf32_setting():
    # a GPU run's float32 matmuls (the transducer joint) use TF32 unless tf32: false
    assert (matmul_precision(True), matmul_precision(False)) == ("high", "highest")
    assert TrainConfig().tf32 is True


# ---------------------------------------------------------------------- helpers
def _tiny_model() -> dict:
    return {"encoder": "lstm", "encoder_config": {"preset": "small", "num_layers": 1, "hidden_size": 64, "proj_size": 32, "input_size": 64}}


def _augment(tiny_data: Path) -> dict:
    noise = tiny_data / "corpus/noise/recordings.jsonl.gz"
    assert noise.is_file(), noise
    return {"speed_prob": 0.5, "noise_manifest": str(noise), "noise_prob": 0.5, "noise_snr": [5.0, 15.0],
            "spec_augment": True, "num_frame_masks": 2, "frame_mask_size": 20}


def _records(exp: Path) -> list[dict]:
    return [json.loads(line) for line in (exp / "metrics.jsonl").read_text().splitlines()]


def _ckpt_state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _assert_same_weights(a: dict, b: dict, rtol: float, atol: float) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k].double(), b[k].double(), rtol=rtol, atol=atol, msg=lambda m, k=k: f"{k}: {m}")


# ---------------------------------------------------------------------- augmentation seeds
def test_seeded_batches_are_reproducible_and_leave_global_rng_alone(tiny_data):
    from lhotse import CutSet

    from asr.data.dataset import ASRDataset, AugmentConfig, SeededCuts, make_loader
    from asr.data.features import FeatureConfig
    from asr.data.tokenizer import Tokenizer

    cuts = CutSet.from_file(tiny_data / "manifests/cuts_train.jsonl.gz").subset(first=3)
    aug = AugmentConfig(**_augment(tiny_data))
    ds = ASRDataset(Tokenizer.load(tiny_data / "lang_bpe48"), FeatureConfig(), aug, seed=1)
    random.seed(3)
    torch.manual_seed(3)
    before = (random.getstate(), torch.get_rng_state())
    a = ds[SeededCuts(cuts, 11)]
    assert random.getstate() == before[0] and torch.equal(torch.get_rng_state(), before[1])
    random.random(), torch.rand(5), np.random.rand()  # whatever the caller's RNGs do meanwhile
    b = ds[SeededCuts(cuts, 11)]
    c = ds[SeededCuts(cuts, 12)]
    assert torch.equal(a["features"], b["features"])
    assert a["features"].shape != c["features"].shape or not torch.equal(a["features"], c["features"])
    # in a data-loader worker the same seed gives the same batch
    (w,) = list(make_loader(ds, [SeededCuts(cuts, 11)], num_workers=1))
    assert torch.equal(w["features"], a["features"])


# ---------------------------------------------------------------------- exact resume
RESUME_STEPS = 16
SAVE_EVERY = 4


def _resume_config(tiny_data: Path, tmp: Path) -> Path:
    """Tiny LSTM (dropout on), every augmentation on, about 5 batches an epoch."""
    import yaml

    cfg = {
        "seed": 7,
        "data": {
            "train": [str(tiny_data / "manifests/cuts_train.jsonl.gz")],
            "dev": [str(tiny_data / "manifests/cuts_dev.jsonl.gz")],
            "tokenizer": str(tiny_data / "lang_bpe48"),
            "sampler": {"max_duration": 25.0, "num_buckets": 2, "num_workers": 0},
            "augment": _augment(tiny_data),
            "dev_max_cuts": 3,
        },
        "model": {**_tiny_model(), "dropout": 0.2},
        "optim": {"lr": 3e-3, "warmup_steps": 3, "schedule": "eden", "lr_batches": 6, "lr_epochs": 1},
        "max_epochs": 100, "max_steps": RESUME_STEPS, "log_every": 1, "save_every_steps": SAVE_EVERY,
        "valid_every_epochs": 100, "keep_last": 3, "average_last": 2, "threads": 1, "precision": "fp32",
    }
    path = tmp / "conf.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _start(cfg: Path, exp: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        env.pop(k, None)
    return subprocess.Popen([sys.executable, "-m", "asr.cli", "train", "--config", str(cfg), "--exp-dir", str(exp), "--no-progress",
                             "--set", *extra], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _kill_after_step(proc: subprocess.Popen, exp: Path, step: int, timeout: float = 120.0) -> None:
    """SIGKILL ``proc`` as soon as metrics.jsonl shows a train record with ``step``."""
    t0 = time.monotonic()
    metrics = exp / "metrics.jsonl"
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            pytest.fail(f"training ended (rc {proc.returncode}) before it could be killed:\n{proc.stderr.read()[-3000:]}")
        if metrics.is_file() and any(f'"step": {step},' in line and '"kind": "train"' in line for line in metrics.read_text().splitlines()):
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            assert proc.returncode == -signal.SIGKILL
            proc.stderr.close()
            return
        time.sleep(0.02)
    proc.kill()
    pytest.fail(f"no step {step} within {timeout} s")


def _newest_ckpt(exp: Path) -> Path:
    return max((exp / "checkpoints").glob("ckpt-*.pt"), key=lambda p: int(p.stem.split("-")[1]))


def test_resume_after_kill_9_follows_the_uninterrupted_trajectory(tiny_data, tmp_path):
    from asr.cli import main

    cfg = _resume_config(tiny_data, tmp_path)
    ref = tmp_path / "uninterrupted"
    threads = torch.get_num_threads()
    try:
        main(["train", "--config", str(cfg), "--exp-dir", str(ref), "--no-progress"])
    finally:
        torch.set_num_threads(threads)
    ref_recs = _records(ref)
    ref_train = [r for r in ref_recs if r["kind"] == "train"]
    assert [r["step"] for r in ref_train] == list(range(1, RESUME_STEPS + 1))
    epoch_ends = [r["step"] for r in ref_recs if r["kind"] == "epoch"]
    assert len(epoch_ends) >= 3, epoch_ends  # the run crosses epoch boundaries

    # The same config in a subprocess (its batches made in a data-loader worker), killed with
    # SIGKILL twice, the second time with the newest checkpoint then corrupted.
    exp = tmp_path / "killed"
    workers = "data.sampler.num_workers=1"
    proc = _start(cfg, exp, workers)
    _kill_after_step(proc, exp, SAVE_EVERY + 1)
    first = _ckpt_state(_newest_ckpt(exp))
    assert first["step"] == SAVE_EVERY and first["batch_in_epoch"] > 0  # a mid-epoch checkpoint
    assert max(r["step"] for r in _records(exp)) > SAVE_EVERY  # records the resumed run must drop

    proc = _start(cfg, exp, workers)
    _kill_after_step(proc, exp, 2 * SAVE_EVERY + 1)
    newest = _newest_ckpt(exp)
    second = _ckpt_state(newest)
    assert second["step"] == 2 * SAVE_EVERY and second["batch_in_epoch"] > 0 and second["epoch"] > first["epoch"]
    newest.write_bytes(newest.read_bytes()[:5000])  # corrupt: the restart falls back to an older one

    proc = _start(cfg, exp, workers)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert "cannot resume from" in err and "resumed from" in err

    recs = _records(exp)
    train = [r for r in recs if r["kind"] == "train"]
    assert [r["step"] for r in train] == list(range(1, RESUME_STEPS + 1))  # one clean trajectory
    np.testing.assert_allclose([r["loss"] for r in train], [r["loss"] for r in ref_train], rtol=1e-5)
    np.testing.assert_allclose([r["grad_norm"] for r in train], [r["grad_norm"] for r in ref_train], rtol=1e-5)
    np.testing.assert_allclose([r["lr"] for r in train], [r["lr"] for r in ref_train], rtol=1e-12)
    epochs = [r for r in recs if r["kind"] == "epoch"]
    assert [r["step"] for r in epochs] == epoch_ends
    ref_epochs = [r for r in ref_recs if r["kind"] == "epoch"]
    for key in ("train_loss", "padding_fraction"):  # an epoch's counters survive a mid-epoch kill
        np.testing.assert_allclose([r[key] for r in epochs], [r[key] for r in ref_epochs], rtol=1e-5)
    assert [r["skipped"] for r in epochs] == [r["skipped"] for r in ref_epochs]
    for key in ("dev_loss", "dev_wer", "dev_sub", "dev_del", "dev_ins"):
        assert epochs[-1][key] == pytest.approx(ref_epochs[-1][key], rel=1e-5)
    # final weights: the last checkpoint and model.pt (an average of the last 2 epochs)
    _assert_same_weights(_ckpt_state(_newest_ckpt(exp))["model"]["state_dict"], _ckpt_state(_newest_ckpt(ref))["model"]["state_dict"], 1e-5, 1e-7)
    _assert_same_weights(_ckpt_state(exp / "model.pt")["state_dict"], _ckpt_state(ref / "model.pt")["state_dict"], 1e-5, 1e-7)
    for name in ("curves.png", "valid_wer.md"):
        assert (exp / name).is_file()


def test_a_finished_run_started_again_trains_nothing_and_a_longer_one_goes_on_inside_the_epoch(tiny_data, tmp_path):
    """A run that stopped inside an epoch (max_steps=10; a spent max_minutes likewise) and is
    started again with the same limits trains no step and leaves model.pt as it was; started
    with more steps it goes on from the batch where it stopped, onto the trajectory of one run
    of all the steps."""
    from asr.cli import main

    cfg = _resume_config(tiny_data, tmp_path)
    threads = torch.get_num_threads()
    ref, exp = tmp_path / "one_run", tmp_path / "stopped"
    try:
        main(["train", "--config", str(cfg), "--exp-dir", str(ref), "--no-progress"])
        main(["train", "--config", str(cfg), "--exp-dir", str(exp), "--no-progress", "--set", "max_steps=10"])
        end = _ckpt_state(_newest_ckpt(exp))
        assert end["step"] == 10 and end["batch_in_epoch"] > 0, (end["step"], end["batch_in_epoch"])  # inside an epoch
        model = (exp / "model.pt").read_bytes()
        for again in (["max_steps=10"], ["max_steps=0", "max_minutes=0.00001"]):
            main(["train", "--config", str(cfg), "--exp-dir", str(exp), "--no-progress", "--set", *again])
            assert max(r["step"] for r in _records(exp)) == 10 and (exp / "model.pt").read_bytes() == model, again
        main(["train", "--config", str(cfg), "--exp-dir", str(exp), "--no-progress"])  # on to RESUME_STEPS
    finally:
        torch.set_num_threads(threads)
    train, ref_train = ([r for r in _records(d) if r["kind"] == "train"] for d in (exp, ref))
    assert [r["step"] for r in train] == list(range(1, RESUME_STEPS + 1))
    np.testing.assert_allclose([r["loss"] for r in train], [r["loss"] for r in ref_train], rtol=1e-5)
    epochs, ref_epochs = ([(r["step"], r.get("partial", False)) for r in _records(d) if r["kind"] == "epoch"] for d in (exp, ref))
    assert epochs == sorted(ref_epochs + [(10, True)]), (epochs, ref_epochs)  # the stop at 10 logged as part of its epoch


def _wait_for_step(proc: subprocess.Popen, exp: Path, step: int, timeout: float = 120.0) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            pytest.fail(f"training ended (rc {proc.returncode}) too early:\n{proc.stderr.read()[-3000:]}")
        metrics = exp / "metrics.jsonl"
        if metrics.is_file() and any(f'"step": {step},' in line and '"kind": "train"' in line for line in metrics.read_text().splitlines()):
            return
        time.sleep(0.02)
    proc.kill()
    pytest.fail(f"no step {step} within {timeout} s")


def test_ctrl_c_stops_at_a_step_with_a_checkpoint_and_the_run_resumes_exactly(tiny_data, tmp_path):
    """Ctrl-C (SIGINT to the whole process group, data-loader worker included) used to be a
    KeyboardInterrupt traceback that lost every step since the last checkpoint (500 by
    default). Now the step in progress ends, a checkpoint is written, the exit code is 130, and
    the same command resumes onto the uninterrupted trajectory."""
    import re

    from asr.cli import main

    cfg = _resume_config(tiny_data, tmp_path)
    ref, exp = tmp_path / "uninterrupted", tmp_path / "interrupted"
    threads = torch.get_num_threads()
    try:
        main(["train", "--config", str(cfg), "--exp-dir", str(ref), "--no-progress"])
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
            env.pop(k, None)
        extra = ["data.sampler.num_workers=1", "save_every_steps=0"]  # no step checkpoints: only the interrupt's
        proc = subprocess.Popen([sys.executable, "-m", "asr.cli", "train", "--config", str(cfg), "--exp-dir", str(exp), "--no-progress",
                                 "--set", *extra], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)  # its own process group, as a terminal's job
        _wait_for_step(proc, exp, 7)
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 130, err[-3000:]
        assert "Traceback" not in err, err[-3000:]
        stopped = int(re.search(r"interrupted by SIGINT at step (\d+): saved (\S+)", err)[1])
        assert 7 <= stopped < RESUME_STEPS
        assert (exp / "checkpoints" / f"ckpt-{stopped}.pt").is_file() and not list((exp / "checkpoints").glob(".*tmp*"))
        main(["train", "--config", str(cfg), "--exp-dir", str(exp), "--no-progress", "--set", *extra])
    finally:
        torch.set_num_threads(threads)
    assert f"resumed from {exp / 'checkpoints' / f'ckpt-{stopped}.pt'}" in (exp / "train.log").read_text()
    train, ref_train = ([r for r in _records(d) if r["kind"] == "train"] for d in (exp, ref))
    assert [r["step"] for r in train] == list(range(1, RESUME_STEPS + 1))
    np.testing.assert_allclose([r["loss"] for r in train], [r["loss"] for r in ref_train], rtol=1e-5)


def test_a_signal_during_validation_cuts_it_short_and_saves_the_epoch(tiny_data, tmp_path, monkeypatch):
    """torchrun's SIGTERM is followed by SIGKILL after a grace period: a stop that waited for a
    long validation to finish lost the epoch. Now a signal ends validation before its next batch
    (the dev sets left have no WER that epoch), the epoch's checkpoint is written and the run
    stops; the resumed run trains on."""
    import shutil
    from dataclasses import replace

    from asr.config import load_yaml
    from asr.models import ASRModel
    from asr.training.trainer import TrainConfig, Trainer, TrainingInterrupted, evaluate

    # evaluate itself: stop() is asked before every batch
    calls = []
    out = evaluate(_EchoModel(), [_echo_batch(i) for i in range(4)], decode=lambda x, lens: calls.append(1) or [],
                   compute_loss=False, stop=lambda: len(calls) >= 2)
    assert out["stopped"] and len(calls) == 2

    dev2 = tmp_path / "cuts_dev2.jsonl.gz"
    shutil.copy(tiny_data / "manifests/cuts_dev.jsonl.gz", dev2)
    cfg = load_yaml(TrainConfig, _resume_config(tiny_data, tmp_path))
    cfg = replace(cfg, exp_dir=str(tmp_path / "exp"), max_steps=0, max_epochs=3, valid_every_epochs=1, save_every_steps=0,
                  data=replace(cfg.data, dev=[*cfg.data.dev, str(dev2)]))
    trainer = Trainer(cfg, progress=False)
    decoded = []
    decode = ASRModel.decode

    def decode_and_signal(self, *a, **kw):  # SIGTERM arrives while the first dev set decodes
        decoded.append(1)
        trainer._interrupt = signal.SIGTERM
        return decode(self, *a, **kw)

    monkeypatch.setattr(ASRModel, "decode", decode_and_signal)
    threads = torch.get_num_threads()
    try:
        with pytest.raises(TrainingInterrupted, match="SIGTERM"):
            trainer.run()
    finally:
        torch.set_num_threads(threads)
    assert len(decoded) == 1  # one batch of the first dev set; the second was not started
    epoch = [r for r in _records(tmp_path / "exp") if r["kind"] == "epoch"]
    assert len(epoch) == 1 and "dev2_wer" not in epoch[0] and epoch[0]["dev_wer"] is not None, epoch
    assert (tmp_path / "exp/checkpoints/epoch-1.pt").is_file()
    monkeypatch.undo()
    try:
        Trainer(cfg, progress=False).run()
    finally:
        torch.set_num_threads(threads)
    epochs = [r for r in _records(tmp_path / "exp") if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2, 3] and all(r.get("dev2_wer") is not None for r in epochs[1:]), epochs


class _EchoModel(torch.nn.Module):
    """What ``evaluate`` needs of a model, for a decode function that ignores it."""

    def __init__(self):
        super().__init__()
        self.register_buffer("feat_mean", torch.zeros(1))
        self.features = type("F", (), {"frame_shift": 0.01})()


def _echo_batch(i: int) -> dict:
    return {"skipped": {}, "cut_ids": [f"c{i}"], "texts": ["A"], "features": torch.zeros(1, 4, 2),
            "feature_lens": torch.tensor([4]), "tokens": [[1]]}


def test_an_exp_dir_whose_checkpoints_cannot_be_resumed_is_not_overwritten(tiny_data, tmp_path):
    """No loadable checkpoint (all truncated, or trained with a tokenizer since retrained at the
    same path) used to start over silently: metrics.jsonl emptied, model.pt replaced, and the
    new run's checkpoints rotated out behind the dead higher-numbered ones. Also: another run
    holding the exp dir is refused, and an unreadable epoch file is left out of the average."""
    import shutil

    from asr.cli import main
    from asr.training.trainer import lock_exp_dir

    cfg = _resume_config(tiny_data, tmp_path)
    tok = tmp_path / "tok"
    shutil.copytree(tiny_data / "lang_bpe48", tok)
    exp = tmp_path / "exp"
    args = ["train", "--config", str(cfg), "--exp-dir", str(exp), "--no-progress", "--set", "max_steps=8", f"data.tokenizer={tok}"]
    threads = torch.get_num_threads()
    try:
        main(args)
        kept = {n: (exp / n).read_bytes() for n in ("metrics.jsonl", "model.pt")}
        ckpts = sorted((exp / "checkpoints").glob("ckpt-*.pt"))
        saved = {p: p.read_bytes() for p in ckpts}
        for p in ckpts:
            p.write_bytes(b"")
        with pytest.raises(SystemExit, match=rf"none of the {len(ckpts)} checkpoint\(s\) in .* can be resumed from .*delete"):
            main(args)
        assert {n: (exp / n).read_bytes() for n in kept} == kept
        for p, b in saved.items():
            p.write_bytes(b)
        # the tokenizer retrained in place (another vocabulary, same path)
        main(["tokenizer", "--cuts", str(tiny_data / "manifests/cuts_train.jsonl.gz"), "--model-type", "char", "--out", str(tok)])
        with pytest.raises(SystemExit, match="trained with another tokenizer"):
            main(args[:-1] + [f"data.tokenizer={tok}", "max_steps=12"])
        assert {n: (exp / n).read_bytes() for n in kept} == kept and sorted((exp / "checkpoints").glob("ckpt-*.pt")) == ckpts
        shutil.rmtree(tok)
        shutil.copytree(tiny_data / "lang_bpe48", tok)
        # a second run on the same exp dir while one holds it
        lock = lock_exp_dir(exp)
        log_before = (exp / "train.log").read_text()
        try:
            env = {**os.environ, "PYTHONPATH": str(ROOT)}
            r = subprocess.run([sys.executable, "-m", "asr.cli", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        finally:
            lock.close()
        assert r.returncode == 1 and f"another training run (pid {os.getpid()}) is using {exp}" in r.stderr, r.stderr[-2000:]
        assert "Traceback" not in r.stderr and (exp / "train.log").read_text() == log_before  # the live run's log untouched
        # a finished run again, its newest epoch file unreadable: averaged without it, with a warning
        epochs = sorted((exp / "checkpoints").glob("epoch-*.pt"), key=lambda p: int(p.stem.split("-")[1]))
        epochs[-2].write_bytes(b"junk")
        main(args[:-1] + ["average_last=2", f"data.tokenizer={tok}"])
    finally:
        torch.set_num_threads(threads)
    log_text = (exp / "train.log").read_text()
    assert f"final model: {epochs[-2]} left out of the average" in log_text
    assert "nothing to train" in log_text


def test_a_dev_set_with_no_readable_audio_has_no_wer(tiny_data, tmp_path):
    """Its WER used to be logged as 0.00% (and 0.000 loss) in the log, metrics and valid_wer.md."""
    from lhotse import CutSet

    from asr.cli import main

    cuts = CutSet.from_file(tiny_data / "manifests/cuts_dev.jsonl.gz").subset(first=3).to_eager()
    gone = []
    for c in cuts:
        d = c.to_dict()
        d["recording"]["sources"][0]["source"] = str(tmp_path / "deleted.flac")
        gone.append(d)
    CutSet.from_dicts(gone).to_file(tmp_path / "cuts_gone.jsonl.gz")
    cfg = _resume_config(tiny_data, tmp_path)
    threads = torch.get_num_threads()
    try:
        main(["train", "--config", str(cfg), "--exp-dir", str(tmp_path / "exp"), "--no-progress", "--set", "max_steps=3",
              f"data.dev=[{tiny_data}/manifests/cuts_dev.jsonl.gz,{tmp_path}/cuts_gone.jsonl.gz]"])
    finally:
        torch.set_num_threads(threads)
    last = [r for r in _records(tmp_path / "exp") if r["kind"] == "epoch"][-1]
    assert last["gone_wer"] is None and last["gone_loss"] is None and last["gone_skipped"] == 3, last
    assert last["dev_wer"] is not None and last["dev_words"] > 0
    table = (tmp_path / "exp" / "valid_wer.md").read_text()
    assert "| gone | - | - | 0 |" in table, table
    assert "validation on gone: none of its 3 cuts could be decoded" in (tmp_path / "exp" / "train.log").read_text()


@pytest.mark.skipif(not cpu_has_bf16(), reason="this CPU has no bfloat16 instructions: bf16 falls back to fp32")
def test_cpu_bf16_run_resumes_exactly_after_kill_9(tiny_data, tmp_path):
    """precision=bf16 on a CPU with bfloat16 instructions: the run trains in bf16 autocast (not
    the fp32 trajectory), and killed after a mid-epoch checkpoint it resumes onto the
    uninterrupted bf16 run's trajectory."""
    from asr.cli import main

    cfg = _resume_config(tiny_data, tmp_path)
    steps = 2 * SAVE_EVERY
    threads = torch.get_num_threads()
    losses = {}
    try:
        for prec in ("bf16", "fp32"):
            main(["train", "--config", str(cfg), "--exp-dir", str(tmp_path / prec), "--no-progress",
                  "--set", f"precision={prec}", f"max_steps={steps}"])
            losses[prec] = [r["loss"] for r in _records(tmp_path / prec) if r["kind"] == "train"]
    finally:
        torch.set_num_threads(threads)
    assert "cpu, bf16" in (tmp_path / "bf16" / "train.log").read_text()
    assert len(losses["bf16"]) == steps and losses["bf16"] != losses["fp32"]

    exp = tmp_path / "killed"
    proc = _start(cfg, exp, "precision=bf16", f"max_steps={steps}")
    _kill_after_step(proc, exp, SAVE_EVERY + 1)
    assert _ckpt_state(_newest_ckpt(exp))["batch_in_epoch"] > 0  # a mid-epoch checkpoint
    proc = _start(cfg, exp, "precision=bf16", f"max_steps={steps}")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0 and "resumed from" in err, err[-3000:]
    train = [r for r in _records(exp) if r["kind"] == "train"]
    assert [r["step"] for r in train] == list(range(1, steps + 1))
    np.testing.assert_allclose([r["loss"] for r in train], losses["bf16"], rtol=1e-5)


# ---------------------------------------------------------------------- DDP
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_config(tiny_data: Path, exp: Path) -> TrainConfig:
    from asr.config import from_dict

    return from_dict(TrainConfig, {
        "exp_dir": str(exp), "seed": 3, "threads": 1, "precision": "fp32",
        "data": {"train": [str(tiny_data / "manifests/cuts_train.jsonl.gz")], "tokenizer": str(tiny_data / "lang_bpe48")},
        "model": {"encoder": "lstm", "encoder_config": {**_tiny_model()["encoder_config"], "dropout": 0.0}, "dropout": 0.0},
        "optim": {"lr": 1e-3, "warmup_steps": 1, "schedule": "constant", "grad_clip": 1000.0},
    })


def _global_batch(tiny_data: Path):
    from lhotse import CutSet

    cuts = CutSet.from_file(tiny_data / "manifests/cuts_train.jsonl.gz")
    return cuts, cuts.subset(first=6)


def _step_result(trainer, res: dict) -> dict:
    opt = trainer.opt
    grads = [opt.state[p]["exp_avg"].detach().cpu() / (1 - opt.defaults["betas"][0]) for p in trainer.model.parameters()]
    return {"res": {k: res[k] for k in ("loss", "tokens", "grad_norm")}, "grads": grads,
            "weights": {k: v.detach().cpu().clone() for k, v in trainer.model.state_dict().items()}}


def _ddp_rank(rank: int, world: int, port: int, tiny_data: str, exp: str, out: str) -> None:
    """One rank: environment as torchrun sets it, then one optimizer step on its share."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank))
    from asr.data.dataset import ASRDataset
    from asr.training.trainer import Trainer

    tiny_data = Path(tiny_data)
    train_cuts, batch_cuts = _global_batch(tiny_data)
    trainer = Trainer(_ddp_config(tiny_data, Path(exp)), progress=False)
    assert trainer.dist.world_size == world and trainer.dist.rank == rank
    trainer.setup(train_cuts)
    trainer.wrap()
    assert trainer.ddp is not None
    share = batch_cuts.subset(first=2) if rank == 0 else batch_cuts.subset(last=4)  # unequal token counts
    batch = ASRDataset(trainer.tokenizer, trainer.cfg.features, None)[share]
    res = trainer.train_step([batch], epoch=1)
    assert "skipped" not in res
    torch.save({**_step_result(trainer, res), "local_tokens": sum(map(len, batch["tokens"]))}, Path(out) / f"rank{rank}.pt")
    trainer.dist.close()


def test_ddp_step_equals_single_process_step_on_the_global_batch(tiny_data, tmp_path):
    import torch.multiprocessing as mp

    from asr.data.dataset import ASRDataset
    from asr.training.trainer import Trainer

    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        assert k not in os.environ
    mp.spawn(_ddp_rank, args=(2, _free_port(), str(tiny_data), str(tmp_path / "ddp"), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert ranks[0]["local_tokens"] != ranks[1]["local_tokens"]

    threads = torch.get_num_threads()
    try:
        train_cuts, batch_cuts = _global_batch(tiny_data)
        single = Trainer(_ddp_config(tiny_data, tmp_path / "single"), progress=False)
        assert not single.dist.enabled
        single.setup(train_cuts)
        single.wrap()
        ds = ASRDataset(single.tokenizer, single.cfg.features, None)
        init = {k: v.clone() for k, v in single.model.state_dict().items()}
        ref = _step_result(single, single.train_step([ds[batch_cuts]], epoch=1))

        # What a per-rank mean averaged over ranks would give instead (the wrong normalization):
        # the test must be able to tell the two apart.
        single.model.load_state_dict(init)
        naive = 0.0
        for part in (batch_cuts.subset(first=2), batch_cuts.subset(last=4)):
            b = ds[part]
            out = single.model(b["features"], b["feature_lens"], b["tokens"])
            naive = naive + 0.5 * out["loss"]
        naive_grads = torch.autograd.grad(naive, list(single.model.parameters()))
    finally:
        torch.set_num_threads(threads)

    for k in ranks[0]["weights"]:  # both ranks hold the same weights after the step (one all-reduced gradient)
        assert torch.equal(ranks[0]["weights"][k], ranks[1]["weights"][k]), k
    for r in ranks:
        assert r["res"]["tokens"] == ref["res"]["tokens"]
        assert r["res"]["loss"] == pytest.approx(ref["res"]["loss"], rel=1e-6)
        assert r["res"]["grad_norm"] == pytest.approx(ref["res"]["grad_norm"], rel=1e-5)
        # the gradient (from Adam's first moment) equals the global batch's to float rounding
        flat = torch.cat([g.flatten() for g in r["grads"]]).double()
        flat_ref = torch.cat([g.flatten() for g in ref["grads"]]).double()
        assert (flat - flat_ref).norm() <= 1e-6 * flat_ref.norm(), float((flat - flat_ref).norm() / flat_ref.norm())
        # Adam's first step is lr * g / (|g| + eps), about lr * sign(g): where |g| is near eps
        # (1e-8), a rounding difference of 1e-12 in g moves the update by 1e-4 of lr (1e-3);
        # 1.8e-6 was seen in CI. A wrong DDP step moves updates by about lr: atol is 1% of lr.
        _assert_same_weights(r["weights"], ref["weights"], rtol=1e-6, atol=1e-5)
    flat_naive = torch.cat([g.flatten() for g in naive_grads]).double()
    assert (flat_ref - flat_naive).norm() > 1e-2 * flat_ref.norm()  # the wrong normalization is far off


def test_torchrun_two_processes_train_checkpoint_and_resume(tiny_data, tmp_path):
    """The whole run under torchrun (gloo, 2 CPU processes): rank 0 alone writes logs,
    checkpoints (with both ranks' RNG states) and validates; after losing the last checkpoint
    the restarted pair resumes mid-epoch and retraces the same steps."""
    import yaml

    cfg = {
        "seed": 5,
        "data": {"train": [str(tiny_data / "manifests/cuts_train.jsonl.gz")], "dev": [str(tiny_data / "manifests/cuts_dev.jsonl.gz")],
                 "tokenizer": str(tiny_data / "lang_bpe48"), "sampler": {"max_duration": 25.0, "num_buckets": 2, "num_workers": 0},
                 "augment": {"spec_augment": True}, "dev_max_cuts": 2},
        "model": _tiny_model(),
        "optim": {"lr": 3e-3, "warmup_steps": 2, "schedule": "noam"},
        "max_epochs": 100, "max_steps": 7, "log_every": 1, "save_every_steps": 3, "threads": 1,
    }
    (tmp_path / "conf.yaml").write_text(yaml.safe_dump(cfg))
    exp = tmp_path / "exp"
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "asr.cli", "train", "--config", str(tmp_path / "conf.yaml"),
           "--exp-dir", str(exp), "--no-progress"]

    def train() -> list[dict]:
        r = subprocess.run(cmd, cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        return _records(exp)

    first = train()
    steps = [r["step"] for r in first if r["kind"] == "train"]
    assert steps == list(range(1, 8))
    log = (exp / "train.log").read_text()
    assert "rank 0 of 2" in log and "rank 1 of 2" not in log  # one writer
    assert "dev_wer" in [r for r in first if r["kind"] == "epoch"][-1]
    mid = _ckpt_state(exp / "checkpoints" / "ckpt-6.pt")
    assert mid["world_size"] == 2 and len(mid["rng"]) == 2 and mid["batch_in_epoch"] > 0
    assert not torch.equal(mid["rng"][0]["torch"], mid["rng"][1]["torch"])  # each rank's own stream
    (exp / "checkpoints" / "ckpt-7.pt").unlink()  # as if killed before its last checkpoint

    again = train()
    assert "resumed from" in (log := (exp / "train.log").read_text()) and "ckpt-6.pt: epoch 2, batch" in log
    assert [r["step"] for r in again if r["kind"] == "train"] == steps
    for a, b in zip(first, again):
        assert a.keys() == b.keys()
        for k, v in a.items():
            if k not in ("epoch_seconds", "wall_seconds", "data_wait_fraction"):
                assert v == (pytest.approx(b[k], rel=1e-6) if isinstance(v, float) else b[k]), (k, a, b)


# ---------------------------------------------------------------------- guards and grad scaler
def test_nonfinite_steps_never_reach_the_weights_and_the_scaler_state_is_checkpointed(tiny_data, tmp_path):
    from lhotse import CutSet

    from asr.data.dataset import ASRDataset
    from asr.training.trainer import Trainer

    threads = torch.get_num_threads()
    try:
        trainer = Trainer(_ddp_config(tiny_data, tmp_path / "exp"), progress=False)
        trainer.setup(None)
        # the fp16 machinery, exercised on the CPU (where fp16 training falls back to fp32)
        trainer.scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, enabled=True)
        cuts = CutSet.from_file(tiny_data / "manifests/cuts_train.jsonl.gz").subset(first=2)
        batch = ASRDataset(trainer.tokenizer, trainer.cfg.features, None)[cuts]
        w0 = {k: v.clone() for k, v in trainer.model.state_dict().items()}

        bad = {**batch, "features": batch["features"].clone()}
        bad["features"][0, 3, 5] = float("nan")
        res = trainer.train_step([bad], epoch=1)
        assert res["skipped"] == "nonfinite_loss" and trainer.step == 0

        p = next(trainer.model.parameters())
        hook = p.register_hook(lambda g: g * float("inf"))
        res = trainer.train_step([batch], epoch=1)
        hook.remove()
        assert res["skipped"] == "nonfinite_grad" and trainer.step == 0
        assert trainer.scaler.get_scale() == 512.0  # an overflow halves the loss scale
        _assert_same_weights(trainer.model.state_dict(), w0, rtol=0, atol=0)
        assert all(q.grad is None for q in trainer.model.parameters())

        res = trainer.train_step([batch], epoch=1)
        assert "skipped" not in res and trainer.step == 1 and math.isfinite(res["loss"])
        assert not torch.equal(trainer.model.state_dict()["encoder.input_proj.weight"], w0["encoder.input_proj.weight"])
        trainer._save(1, 1, progress={"stats": {"tokens": 3.0}})

        again = Trainer(_ddp_config(tiny_data, tmp_path / "exp"), progress=False)
        again.setup(None)
        again.scaler = torch.amp.GradScaler("cpu", enabled=True)
        assert again.resume() == (1, 1) and again.step == 1
        assert again.scaler.get_scale() == 512.0 and again.resumed_progress == {"stats": {"tokens": 3.0}}
        _assert_same_weights(again.model.state_dict(), trainer.model.state_dict(), rtol=0, atol=0)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("head", ["tdt", "pruned_rnnt"])
def test_mixed_precision_steps_of_a_hybrid_transducer(precision, head, tiny_data, tmp_path):
    """The trainer's GPU precisions (autocast; fp16 with its GradScaler), run through the CPU's
    autocast, on a hybrid transducer: the steps reach the weights, with the fp32 step's loss
    give or take the encoder's rounding."""
    from dataclasses import replace

    from lhotse import CutSet

    from asr.data.dataset import ASRDataset
    from asr.training.trainer import Trainer

    threads = torch.get_num_threads()
    try:
        def trainer_at(prec: str) -> Trainer:
            cfg = _ddp_config(tiny_data, tmp_path / prec)
            cfg = replace(cfg, model=replace(cfg.model, head=head, ctc_weight=0.3))
            t = Trainer(cfg, progress=False)
            t.setup(None)
            t.precision = prec  # what resolve_precision picks on a GPU; the CPU's autocast runs it here
            if prec == "fp16":
                t.scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, enabled=True)
            return t

        ref, mixed = trainer_at("fp32"), trainer_at(precision)
        assert torch.get_float32_matmul_precision() == "highest"  # TF32 is for GPUs: the CPU keeps float32
        cuts = CutSet.from_file(tiny_data / "manifests/cuts_train.jsonl.gz").subset(first=3)
        batch = ASRDataset(ref.tokenizer, ref.cfg.features, None)[cuts]
        w0 = mixed.model.state_dict()["transducer.joint.out.weight"].clone()
        r_ref = ref.train_step([batch], epoch=1)
        r = mixed.train_step([batch], epoch=1)
        assert "skipped" not in r and mixed.step == 1, r
        assert r["loss"] == pytest.approx(r_ref["loss"], rel=0.05)
        assert not torch.equal(mixed.model.state_dict()["transducer.joint.out.weight"], w0)
        assert all(torch.isfinite(v).all() for v in mixed.model.state_dict().values() if v.is_floating_point())
    finally:
        torch.set_num_threads(threads)


# ---------------------------------------------------------------------- validation table
def test_valid_table_from_the_last_validation(tmp_path):
    m = tmp_path / "metrics.jsonl"
    recs = [
        {"kind": "train", "epoch": 1, "step": 1, "loss": 3.0},
        {"kind": "epoch", "epoch": 1, "step": 5, "train_loss": 2.0, "dev_loss": 2.5, "dev_wer": 90.0, "dev_words": 10, "dev_sub": 7, "dev_del": 1, "dev_ins": 1},
        {"kind": "epoch", "epoch": 2, "step": 9, "train_loss": 1.5, "dev_loss": 1.25, "dev_wer": 50.0, "dev_words": 10, "dev_sub": 3, "dev_del": 1, "dev_ins": 1,
         "test_loss": 1.5, "test_wer": 60.0, "test_words": 5, "test_sub": 2, "test_del": 1, "test_ins": 0},
        {"kind": "epoch", "epoch": 3, "step": 12, "train_loss": 1.0},  # no validation this epoch
    ]
    m.write_text("".join(json.dumps(r) + "\n" for r in recs))
    table = write_valid_table(m, tmp_path / "valid_wer.md")
    assert (tmp_path / "valid_wer.md").read_text() == table
    assert "epoch 2 (step 9)" in table
    assert "| dev | 1.2500 | 50.00 | 10 | 3 | 1 | 1 |" in table
    assert "| test | 1.5000 | 60.00 | 5 | 2 | 1 | 0 |" in table
    assert write_valid_table(tmp_path / "missing.jsonl", tmp_path / "x.md") == ""
    # the curves join the validated epochs (3 has none); plot_curves writes a PNG
    epochs = [r for r in recs if r["kind"] == "epoch"]
    assert validated_points(epochs, "dev_wer") == ([5, 9], [90.0, 50.0])
    assert validated_points(epochs, "test_wer") == ([9], [60.0])
    plot_curves(m, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------- warm start
def test_init_from_copies_matching_weights_and_names_what_does_not_match(trained_ctc, tiny_data, tmp_path):
    """init_from: the encoder of a trained CTC model seeds a transducer (its new head left as
    initialized); a tensor of a different shape is skipped, or named in an error when its
    module was asked for; other feature settings or an encoder of another size are errors."""
    from asr.config import from_dict
    from asr.training.trainer import Trainer

    src_path = trained_ctc / "model.pt"
    src = _ckpt_state(src_path)["state_dict"]
    enc = {"encoder": "lstm", "encoder_config": {"preset": "small", "num_layers": 2, "hidden_size": 256, "proj_size": 128, "input_size": 128}}

    def trainer(head: str, init: str, modules: list[str], model: dict = enc, features: dict | None = None) -> Trainer:
        cfg = {"exp_dir": str(tmp_path / "exp"), "seed": 5, "init_from": init, "init_modules": modules,
               "data": {"tokenizer": str(tiny_data / "lang_bpe48")}, "model": {**model, "head": head}}
        if features:
            cfg["features"] = features
        t = Trainer(from_dict(TrainConfig, cfg), progress=False)
        t.setup(None)
        return t

    fresh = trainer("rnnt", "", []).model.state_dict()
    got = trainer("rnnt", str(src_path), ["encoder."]).model.state_dict()
    enc_keys = [k for k in got if k.startswith("encoder.")]
    assert enc_keys and all(torch.equal(got[k], src[k]) for k in enc_keys + ["feat_mean", "feat_std"])
    assert not torch.equal(fresh["feat_std"], src["feat_std"])  # the source's normalization came along
    head_keys = [k for k in got if k.startswith("transducer.")]
    assert head_keys and all(torch.equal(got[k], fresh[k]) for k in head_keys)
    assert not any(torch.equal(fresh[k], src[k]) for k in enc_keys if fresh[k].numel() > 1)

    # a head of another vocabulary: skipped when every matching tensor is asked for, an error
    # that names it when its module is
    other = _ckpt_state(src_path)
    other["state_dict"]["ctc.proj.weight"] = torch.zeros(7, other["state_dict"]["ctc.proj.weight"].shape[1])
    other_path = tmp_path / "other_vocab.pt"
    torch.save(other, other_path)
    got = trainer("ctc", str(other_path), []).model.state_dict()
    assert all(torch.equal(got[k], src[k]) for k in enc_keys)
    assert torch.equal(got["ctc.proj.bias"], src["ctc.proj.bias"]) and not torch.equal(got["ctc.proj.weight"], src["ctc.proj.weight"])
    with pytest.raises(ValueError, match=r"ctc\.proj\.weight \(\(7, "):
        trainer("ctc", str(other_path), ["encoder.", "ctc."])

    bigger = {**enc, "encoder_config": {**enc["encoder_config"], "hidden_size": 320}}
    with pytest.raises(ValueError, match=r"init_modules \['encoder\.'\] do not match.*encoder\."):
        trainer("ctc", str(src_path), ["encoder."], model=bigger)
    with pytest.raises(ValueError, match=r"feature settings differ in \['num_mel_bins'\]"):
        trainer("ctc", str(src_path), ["encoder."], features={"num_mel_bins": 64})
    with pytest.raises(ValueError, match="no weight matches"):
        trainer("rnnt", str(src_path), [], model={"encoder": "conformer", "encoder_config": {"d_model": 32, "num_layers": 1, "num_heads": 2}})


@pytest.mark.parametrize("ddp_path", [False, True])
def test_init_freeze_steps_keep_the_copied_weights_fixed_then_release_them(trained_ctc, tiny_data, tmp_path, ddp_path):
    """init_freeze_steps=2: the first two steps update only the new head, the third the copied
    encoder too; on one process the frozen weights get no gradient at all, under DDP (every
    registered gradient is reduced) theirs are dropped before the optimizer sees them."""
    from lhotse import CutSet

    from asr.config import from_dict
    from asr.data.dataset import ASRDataset
    from asr.training.trainer import Trainer

    src = _ckpt_state(trained_ctc / "model.pt")["state_dict"]
    model = {"encoder": "lstm", "head": "rnnt",
             "encoder_config": {"preset": "small", "num_layers": 2, "hidden_size": 256, "proj_size": 128, "input_size": 128}}
    cfg = {"exp_dir": str(tmp_path / "exp"), "seed": 5, "init_from": str(trained_ctc / "model.pt"), "init_modules": ["encoder."],
           "init_freeze_steps": 2, "data": {"tokenizer": str(tiny_data / "lang_bpe48")}, "model": model,
           "optim": {"lr": 1e-3, "warmup_steps": 1, "schedule": "constant"}}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        t = Trainer(from_dict(TrainConfig, cfg), progress=False)
        t.setup(None)
        if ddp_path:
            t.ddp = t.model  # the same forward; takes the trainer's DDP branch (no real process group)
        cuts = CutSet.from_file(tiny_data / "manifests/cuts_train.jsonl.gz").subset(first=2)
        batch = ASRDataset(t.tokenizer, t.cfg.features, None)[cuts]
        enc = [k for k in src if k.startswith("encoder.")]
        head0 = {k: v.clone() for k, v in t.model.state_dict().items() if k.startswith("transducer.")}
        for step in (1, 2, 3):
            res = t.train_step([batch], epoch=1)
            assert "skipped" not in res and t.step == step
            now = t.model.state_dict()
            assert all(torch.equal(now[k], src[k]) for k in enc) == (step <= 2), step
            assert not all(torch.equal(now[k], head0[k]) for k in head0)
            if step <= 2 and not ddp_path:
                assert all(p.grad is None and not p.requires_grad for p in t.frozen)
        assert t.frozen and all(p.requires_grad for p in t.frozen)
    finally:
        torch.set_num_threads(threads)
    with pytest.raises(ValueError, match="init_freeze_steps needs init_from"):
        Trainer(from_dict(TrainConfig, {**cfg, "init_from": ""}), progress=False).setup(None)
