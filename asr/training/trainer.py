"""One trainer for every model: config, loop, validation, checkpoints, logs and plots.

Run by ``asr train --config conf.yaml``. Per step: a bucketed batch, the model's loss
(mean per token over alignable utterances), AdamW with a learning-rate schedule (noam, cosine,
constant or Eden, see ``schedules``), gradient clipping and optional accumulation. Steps whose
loss or gradients are not finite never reach the weights: they are skipped, logged, and training
stops after ``max_bad_steps`` in a row. The trainer only needs a model whose
``forward(x, lens, tokens)`` returns ``{"loss", "loss_sum", "tokens", "frames", "unalignable"}``
and whose ``decode(x, lens)`` returns hypotheses.

Each epoch logs the padding fraction (padded frames / all frames), the cuts skipped and why,
validation loss and greedy WER (with substitutions, deletions and insertions) of each dev set.
At the end ``valid_wer.md`` has the table of the last validation.

Checkpoints and exact resume. Checkpoints are written atomically every ``save_every_steps``
and each epoch, the last ``keep_last`` kept; a run restarted on the same ``exp_dir`` (after a
crash or ``kill -9``) resumes from the newest readable one (a corrupt one falls back to the
previous). Restarted with another model, feature or tokenizer config (``config.yaml`` there
says), the run stops before it writes anything (``Trainer.check_exp_dir``). A checkpoint holds the weights, the optimizer, the grad scaler, the step, the epoch
and the number of batches of it already trained on (the sampler is deterministic per epoch and
replays to that position), and the python, numpy, torch (and CUDA) RNG states of every rank.
Data augmentation draws from a seed per batch, ``(seed, epoch, batch index, rank)`` (see
``asr.data.dataset``), so it does not depend on the data-loader workers or on what was
resumed. The learning rate is a function of step and epoch. A resumed run therefore follows
the uninterrupted run's loss trajectory (bit for bit on CPU), and ``metrics.jsonl`` is cut back
to the records written before the checkpoint, so it stays one trajectory. A run that ended at
its ``max_steps`` or ``max_minutes`` (time spent is checkpointed too) and is started again
trains nothing and rewrites the same ``model.pt``; started with a larger limit it goes on from
the batch where it stopped, inside the epoch (that epoch's record is logged twice, the first
marked ``partial``).

Distributed data parallel. Launch one process per GPU with torchrun:

    torchrun --nproc_per_node 8 -m asr.cli train --config conf.yaml
    # several nodes: the same on each node, plus
    #   --nnodes 2 --node_rank R --rdzv_backend c10d --rdzv_endpoint HOST:PORT

Each process reads ``WORLD_SIZE``/``RANK``/``LOCAL_RANK``, joins the process group (NCCL on
GPUs, gloo on CPU: torchrun on a CPU machine trains with several CPU processes) and wraps the
model in ``DistributedDataParallel``. The bucketing sampler hands each rank its own batches
(``max_duration`` is per rank: the global batch is ``WORLD_SIZE`` times larger). The loss of a
step is the per-token mean over the global batch: each rank's loss sum is divided by the token
count all-reduced over ranks and multiplied by the world size, which DDP's gradient averaging
cancels. Only rank 0 writes checkpoints, logs, TensorBoard and runs validation while the other
ranks wait at a barrier; on resume every rank reads the checkpoint rank 0 chose, so
``exp_dir`` must be on a file system all nodes share.

Mixed precision. ``precision: auto`` trains in bf16 autocast on a GPU that supports it and in
fp32 otherwise; ``fp16`` uses autocast with a GradScaler (saved in checkpoints). Autocast
covers the encoder and the CTC head; a transducer head computes its joint and loss in float32
(``TransducerHead.loss``), whose matmuls on a GPU use TF32 tensor cores unless ``tf32: false``
(which also turns TF32 off for cuDNN). LSTMs run in float32 under bf16 autocast on a GPU
(``asr.encoders.base.run_lstm``: PyTorch casts cuDNN RNNs to float16 whatever the autocast
dtype, and a bf16 run has no grad scaler).
On the CPU ``auto`` is fp32. ``bf16`` there is an opt-in for CPUs with bfloat16 instructions
(``avx512_bf16`` or ``amx_bf16``, see :func:`cpu_has_bf16`): the same autocast through the
CPU's. It pays where the CPU multiplies bf16 fast (AMX); on this project's 2-core EPYC VM
(avx512_bf16, no AMX) a forward and backward of the mini Conformer took 0.57 s instead of
0.74-0.81 s, but a 15-minute run made only 4.5% more steps and no better model
(docs/mini_results.md). Without those instructions a bf16 request, and an fp16 request on any
CPU, logs a warning and trains in fp32 (emulated half precision would be slower, not faster).

Warm start. ``init_from: model.pt`` copies a trained model's weights into the new one before
the first step: every tensor that matches by name and shape, or only the modules named in
``init_modules`` (e.g. ``[encoder.]`` to fine-tune on another vocabulary with fresh heads),
each of which must then match. The feature normalization comes along; different feature
settings are an error. ``init_freeze_steps: N`` keeps the copied weights fixed for the first N
steps while the new heads learn on them. A resumed run loads its own checkpoint instead.

At the end ``model.pt`` (weights averaged over the last ``average_last`` epoch checkpoints),
``metrics.jsonl``, TensorBoard events, ``curves.png`` (loss and WER) and ``valid_wer.md`` are in
``exp_dir``.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import random
import signal
import threading
import time
from collections import Counter
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from lhotse import CutSet
from tqdm import tqdm

from ..config import ConfigError, load_yaml, save_yaml, to_dict
from ..data.dataset import ASRDataset, AugmentConfig, SamplerConfig, SeededCuts, batch_seed, make_loader, make_sampler
from ..data.features import FeatureConfig
from ..data.manifests import read_cut_manifest, split_name
from ..data.tokenizer import Tokenizer
from ..decoding.wer import WER
from ..models import ASRModel, ModelConfig, check_model_config, read_checkpoint, save_atomic
from .distributed import Dist
from .schedules import lr_at

__all__ = ["DataConfig", "OptimConfig", "TrainConfig", "Trainer", "evaluate", "cpu_has_bf16", "init_weights", "lr_at", "resolve_precision", "write_valid_table"]

log = logging.getLogger(__name__)


@dataclass
class DataConfig:
    train: list[str] = field(default_factory=list)  # cut manifests
    dev: list[str] = field(default_factory=list)
    tokenizer: str = ""  # bpe.model or its directory
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    max_cut_duration: float = 30.0
    # SortaGrad (DeepSpeech 2): the first N epochs go shortest-first, unshuffled. Short cuts
    # give CTC sharp alignments, which shortens its all-blank plateau.
    sortagrad_epochs: int = 0
    dev_max_cuts: int = 400  # cuts of each dev set decoded for WER each epoch


@dataclass
class OptimConfig:
    lr: float = 2e-3
    weight_decay: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.98)
    warmup_steps: int = 500
    schedule: Literal["noam", "cosine", "constant", "eden"] = "noam"
    total_steps: int = 0  # cosine decays to min_lr at this step (0: max_steps)
    min_lr: float = 1e-5
    lr_batches: float = 5000.0  # eden: steps over which the lr falls by 2^0.25 (icefall's lr_batches)
    lr_epochs: float = 6.0  # eden: completed epochs over which it falls by 2^0.25 (icefall's lr_epochs)
    grad_clip: float = 5.0  # max gradient norm; <= 0: no clipping
    accum_grad: int = 1  # micro-batches per optimizer step (weighted equally)


@dataclass
class TrainConfig:
    exp_dir: str = "exp/run"
    seed: int = 42
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    # Warm start: a model.pt or training checkpoint whose weights initialize this model before
    # step 1 (a resumed run takes its own checkpoint instead). init_modules: name prefixes to
    # take (e.g. [encoder.] when the tokenizer changes), each tensor of them must exist with the
    # same shape; empty: every tensor whose name and shape match. The feature normalization
    # (feat_mean, feat_std) always comes along: the encoder was trained on it.
    init_from: str = ""
    init_modules: list[str] = field(default_factory=list)
    # The copied weights get no updates for the first N steps, while the new heads learn on
    # them: a random head's first gradients otherwise wreck a trained encoder (a character
    # Conformer fine-tuned on BPE collapsed onto the output prior within 50 steps).
    init_freeze_steps: int = 0
    max_epochs: int = 30
    max_steps: int = 0  # 0: no limit
    max_minutes: float = 0.0  # wall-clock budget for the training loop, validation included; 0: none
    log_every: int = 25
    save_every_steps: int = 500
    save_every_epochs: int = 1  # an epoch checkpoint (and validation) every N epochs, and at the end
    valid_every_epochs: int = 1
    keep_last: int = 3
    average_last: int = 1
    max_bad_steps: int = 20
    device: str = "auto"  # auto: cuda (cuda:LOCAL_RANK under torchrun) when there is one, else cpu
    threads: int = 0  # torch intra-op threads; 0 leaves torch's default
    # auto: bf16 autocast on a GPU with native bf16 (Ampere on), else fp32. fp16: autocast + GradScaler.
    # On the CPU auto is fp32; bf16 is an opt-in for CPUs with bfloat16 instructions (else fp32).
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    # On a GPU, float32 matmuls and cuDNN convolutions and LSTMs (the transducer joint and loss,
    # which stay float32 under autocast; all of fp32 training) run on TF32 tensor cores: 10
    # mantissa bits instead of 23, several times the throughput. false: full float32.
    tf32: bool = True
    find_unused_parameters: bool = False  # DDP: set for models with parameters some steps do not use
    ddp_timeout_minutes: float = 120.0  # a collective waiting longer (e.g. for validation) fails


def check_config(cfg: TrainConfig) -> None:
    """A ValueError naming the first setting of ``cfg`` out of its range (the types are checked
    when the YAML is read; these are the numbers a run cannot mean, e.g. ``max_epochs=0``,
    which would write an untrained model)."""
    at_least = {"max_epochs": 1, "log_every": 1, "save_every_epochs": 1, "valid_every_epochs": 1, "keep_last": 1,
                "average_last": 1, "max_bad_steps": 1, "max_steps": 0, "max_minutes": 0, "save_every_steps": 0,
                "threads": 0, "init_freeze_steps": 0, "optim.accum_grad": 1, "optim.warmup_steps": 0,
                "optim.total_steps": 0, "data.sampler.num_buckets": 1, "data.sampler.num_workers": 0,
                "optim.weight_decay": 0, "optim.min_lr": 0, "data.sortagrad_epochs": 0, "data.dev_max_cuts": 1}

    def get(key: str):
        value = cfg
        for part in key.split("."):
            value = getattr(value, part)
        return value

    for key, low in at_least.items():
        if not get(key) >= low:  # also refuses NaN
            raise ValueError(f"{key} must be >= {low}, got {get(key)}")
    for key in ("optim.lr", "data.sampler.max_duration", "data.max_cut_duration", "optim.lr_batches", "optim.lr_epochs"):
        if not get(key) > 0:
            raise ValueError(f"{key} must be > 0, got {get(key)}")
    for key in ("optim.lr", "optim.min_lr", "optim.weight_decay", "optim.grad_clip", "max_minutes"):
        if not math.isfinite(get(key)):
            raise ValueError(f"{key} must be a finite number, got {get(key)}")
    if not all(0 <= b < 1 for b in cfg.optim.betas):
        raise ValueError(f"optim.betas must be two numbers in [0, 1) (Adam's averaging factors), got {list(cfg.optim.betas)}")
    if cfg.init_freeze_steps and not cfg.init_from:
        raise ValueError("init_freeze_steps needs init_from: it freezes the weights copied from there")
    names = [split_name(p) for p in cfg.data.dev]
    for name, p in zip(names, cfg.data.dev):
        if names.count(name) > 1:
            raise ValueError(f"data.dev: two manifests are both named {name!r} ({', '.join(q for q, n in zip(cfg.data.dev, names) if n == name)}): "
                             "their WERs would be one column; rename one of the files")
        if name == "train":
            raise ValueError(f"data.dev: {p} is named 'train', which would read as the training loss in metrics.jsonl; "
                             "rename the file (e.g. cuts_train_heldout.jsonl.gz)")
    check_model_config(cfg.model)
    # the encoder's and heads' own checks (e.g. subsampling 3, 5 attention heads for d_model
    # 144), on the meta device: no weights allocated, before any data is read or file written
    vocab = cfg.model.vocab_size if cfg.model.vocab_size > 0 else 32  # the tokenizer's, later
    try:
        with torch.device("meta"):
            ASRModel(replace(cfg.model, vocab_size=vocab), cfg.features)
    except TypeError as e:  # an encoder_config key the family does not take
        raise ValueError(f"model.encoder_config for {cfg.model.encoder!r}: {e}") from None


def cpu_has_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether this CPU has bfloat16 instructions (x86 ``avx512_bf16`` or ``amx_bf16``, read
    from ``cpuinfo``) and torch's oneDNN can use them: where CPU autocast to bf16 pays."""
    try:
        with open(cpuinfo) as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    if not {"avx512_bf16", "amx_bf16"} & set(flags):
        return False
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(check()) if check is not None else torch.backends.mkldnn.is_available()


def resolve_precision(requested: str, device: torch.device) -> str:
    """The precision training runs in: "fp32", "bf16" or "fp16"."""
    if requested not in ("auto", "fp32", "bf16", "fp16"):
        raise ValueError(f"precision must be auto, fp32, bf16 or fp16, got {requested!r}")
    if device.type != "cuda":
        if requested == "bf16" and device.type == "cpu" and cpu_has_bf16():
            return "bf16"
        if requested in ("bf16", "fp16"):
            why = "it has no bfloat16 instructions (avx512_bf16, amx_bf16)" if requested == "bf16" else "fp16 is for GPUs"
            log.warning("precision %s was asked for, but training runs on %s and %s: training in fp32", requested, device, why)
        return "fp32"
    # natively (Ampere and later): pre-Ampere GPUs "support" bf16 only by emulation, slower than fp32
    native = torch.cuda.is_bf16_supported(including_emulation=False)
    if requested == "auto":
        return "bf16" if native else "fp32"
    if requested == "bf16" and not native:
        raise ValueError(f"precision bf16: {torch.cuda.get_device_name(device)} does not support bfloat16; use fp16 or fp32")
    return requested


def matmul_precision(tf32: bool) -> str:
    """``torch.set_float32_matmul_precision``'s setting for a GPU run: "high" (TF32) or "highest"."""
    return "high" if tf32 else "highest"


def _load_cuts(paths: list[str], max_duration: float | None = None) -> CutSet:
    """Eager CutSet from manifests, dropping cuts longer than ``max_duration`` seconds."""
    if not paths:
        raise ValueError("no cut manifests given")
    cuts, total = [], 0
    for p in paths:
        for c in read_cut_manifest(p, " (run `asr prepare` first)"):
            total += 1
            if max_duration is None or c.duration <= max_duration:
                cuts.append(c)
    if not cuts and total:
        raise ValueError(f"every one of the {total} cuts in {', '.join(paths)} is longer than data.max_cut_duration = {max_duration} s")
    return CutSet.from_cuts(cuts)


@torch.no_grad()
def feature_stats(cuts: CutSet, features: FeatureConfig, max_cuts: int = 300) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std of the features of up to ``max_cuts`` cuts (unreadable ones skipped)."""
    ds = ASRDataset(None, features, None)
    total, total_sq, n = 0.0, 0.0, 0
    first_error = ""
    tried = 0
    for cut in cuts:
        if tried >= max_cuts:
            break
        tried += 1
        try:
            f = torch.from_numpy(ds.load_features(cut)).double()
        except Exception as e:  # noqa: BLE001 - skipped here, as the loader skips and counts them
            first_error = first_error or f"{cut.id}: {type(e).__name__}: {e}"
            continue
        total = total + f.sum(0)
        total_sq = total_sq + (f * f).sum(0)
        n += f.shape[0]
    if n == 0:
        raise ValueError(f"no readable training audio to compute feature statistics from (the first of {tried} cuts "
                         f"tried: {first_error}); relative audio paths in a manifest are read from the directory this run "
                         f"is in, {Path.cwd()}")
    mean = total / n
    std = (total_sq / n - mean * mean).clamp_min(1e-6).sqrt()
    return mean.float(), std.float()


def init_weights(model: ASRModel, path: str, modules: list[str], features: FeatureConfig) -> list[str]:
    """Copy weights from the model file or training checkpoint ``path`` into ``model`` (see
    ``TrainConfig.init_from``). Returns the names copied; a clear error when the feature
    settings differ, a requested module does not match, or nothing matches at all."""
    ckpt = read_checkpoint(path)
    if "state_dict" not in ckpt and isinstance(ckpt.get("model"), dict):
        ckpt = ckpt["model"]  # a training checkpoint
    src = ckpt.get("state_dict")
    if not isinstance(src, dict):
        raise ValueError(f"init_from {path}: not a model file or training checkpoint (no state_dict)")
    theirs = ckpt.get("features")
    ours = to_dict(features)
    if isinstance(theirs, dict) and theirs != ours:
        diff = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
        raise ValueError(f"init_from {path}: its feature settings differ in {diff} "
                         f"({ {k: theirs.get(k) for k in diff} } vs { {k: ours.get(k) for k in diff} })")
    own = model.state_dict()
    always = ("feat_mean", "feat_std")
    wanted = [k for k in own if k in always or not modules or any(k.startswith(m) for m in modules)]
    if modules:
        bad = [k for k in wanted if k not in always and (k not in src or tuple(src[k].shape) != tuple(own[k].shape))]
        if bad:
            why = [f"{k} ({'missing' if k not in src else f'{tuple(src[k].shape)} vs {tuple(own[k].shape)}'})" for k in bad[:5]]
            raise ValueError(f"init_from {path}: {len(bad)} tensor(s) of init_modules {modules} do not match this model: "
                             + ", ".join(why) + (" ..." if len(bad) > 5 else ""))
    take = [k for k in wanted if k in src and tuple(src[k].shape) == tuple(own[k].shape)]
    if not [k for k in take if k not in always]:
        raise ValueError(f"init_from {path}: no weight matches this model by name and shape")
    skipped = [k for k in own if k not in take]
    model.load_state_dict({k: src[k] for k in take}, strict=False)
    n = sum(own[k].numel() for k in take)
    log.info("init_from %s: %d tensors (%.2fM values) copied%s", path, len(take), n / 1e6,
             f"; {len(skipped)} left as initialized: {', '.join(skipped[:8])}{' ...' if len(skipped) > 8 else ''}" if skipped else "")
    return take


@torch.no_grad()
def evaluate(model: ASRModel, loader, max_batches: int | None = None, progress: bool = False, desc: str = "decode",
             decode=None, compute_loss: bool = True, stop=None) -> dict:
    """Loss and WER over a loader. ``decode(x, lens) -> hypotheses`` defaults to greedy
    ``model.decode``. Returns 'loss' (None without ``compute_loss``), 'wer', 'wer_detail',
    'results', 'rtfx' (audio seconds per second of decoding: encoder + search, the loss
    excluded) and 'stopped': True when ``stop()`` (asked before each batch) cut it short."""
    was_training = model.training
    model.eval()
    decode = decode or model.decode
    wer = WER()
    loss_sum, tokens = 0.0, 0
    results = []
    skipped: Counter = Counter()
    device = model.feat_mean.device
    decode_seconds = 0.0
    audio_seconds = 0.0
    stopped = False
    for i, batch in enumerate(tqdm(loader, desc=desc, disable=not progress, leave=False)):
        if max_batches is not None and i >= max_batches:
            break
        if stop is not None and stop():
            stopped = True
            break
        skipped.update(batch["skipped"])
        if not batch["cut_ids"]:
            continue
        x, lens = batch["features"].to(device), batch["feature_lens"].to(device)
        audio_seconds += float(lens.sum()) * model.features.frame_shift
        if compute_loss:
            with torch.no_grad():
                out = model(x, lens, batch["tokens"])
            loss_sum += float(out["loss_sum"])
            tokens += out["tokens"]
        if device.type == "cuda":  # RTFx: the first batch's CUDA start-up (kernels, cuBLAS) untimed, queued work finished
            if not results:
                decode(x, lens)
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        hyps = decode(x, lens)
        decode_seconds += time.perf_counter() - t0
        for cid, ref, hyp in zip(batch["cut_ids"], batch["texts"], hyps):
            text = model.tokenizer.decode(hyp.tokens)
            s, d, ins = wer.add(ref, text)
            results.append({"id": cid, "ref": ref, "hyp": text, "sub": s, "del": d, "ins": ins})
    model.train(was_training)
    return {
        "loss": loss_sum / max(1, tokens) if compute_loss else None,
        "wer": wer.wer,
        "wer_detail": wer.as_dict(),
        "results": results,
        "skipped": dict(skipped),
        "rtfx": audio_seconds / max(decode_seconds, 1e-9),
        "stopped": stopped,
    }


class Trainer:
    """``Trainer(cfg).run()`` trains, validates, checkpoints and writes ``model.pt``.

    The pieces are usable alone: ``setup(train_cuts)`` builds the model, optimizer and grad
    scaler (and joins the process group under torchrun), ``wrap()`` puts the model in DDP, and
    ``train_step(micro_batches, epoch)`` takes one optimizer step on batches from ``ASRDataset``.
    """

    def __init__(self, cfg: TrainConfig, progress: bool = True):
        check_config(cfg)
        self.cfg = cfg
        self.dist = Dist.from_env()
        self.is_main = self.dist.is_main
        self.progress = progress and self.is_main
        self.exp = Path(cfg.exp_dir)
        self.ckpt_dir = self.exp / "checkpoints"
        if self.is_main:
            self.exp.mkdir(parents=True, exist_ok=True)
        if cfg.threads > 0:
            torch.set_num_threads(cfg.threads)
        # Tiny float32 gradients become denormals, which make CPU matmuls several times slower.
        torch.set_flush_denormal(True)
        self.device = self.dist.device(cfg.device)
        self.precision = resolve_precision(cfg.precision, self.device)
        if self.device.type == "cuda":  # the CPU keeps full float32 (its "high" may mean bf16 passes)
            torch.set_float32_matmul_precision(matmul_precision(cfg.tf32))
            torch.backends.cudnn.allow_tf32 = cfg.tf32  # convolutions and cuDNN LSTMs too, not just matmuls
        self.optim = cfg.optim
        if cfg.optim.schedule == "cosine" and cfg.optim.total_steps <= 0:
            if cfg.max_steps <= 0:
                raise ValueError("schedule cosine needs optim.total_steps (or max_steps) to know where it ends")
            self.optim = replace(cfg.optim, total_steps=cfg.max_steps)
        self.tokenizer = Tokenizer.load(cfg.data.tokenizer)
        self.metrics_path = self.exp / "metrics.jsonl"
        self.metrics_records = 0  # lines in metrics.jsonl (rank 0); checkpoints remember it
        self.tb = None
        self.model: ASRModel | None = None
        self.ddp = None
        self.step = 0
        self.train_seconds = 0.0
        self.wall_seconds = 0.0
        self.ctc_warmup_end: int | None = None  # the step the transducer joined at (None: not yet)
        self.ctc_errors: list[tuple[int, int]] = []  # the last 10 warm-up steps' (token errors, reference tokens)
        self._interrupt: int | None = None  # the signal that asked training to stop (run() catches them)
        for what, paths in (("data.train", cfg.data.train), ("data.dev", cfg.data.dev), ("init_from", [cfg.init_from] if cfg.init_from else [])):
            for p in paths:
                if not Path(p).is_file():
                    raise FileNotFoundError(f"{what}: {p} is not a file" if Path(p).exists() else f"{what}: {p} not found")
        if self.is_main:
            self.check_exp_dir()

    # ------------------------------------------------------------------ setup
    def _seed(self, seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)

    def setup(self, train_cuts: CutSet | None = None) -> None:
        """Process group (under torchrun), seeds, model with feature statistics from
        ``train_cuts`` (computed on rank 0, broadcast), optimizer, grad scaler."""
        cfg = self.cfg
        self.dist.init(self.device, cfg.ddp_timeout_minutes)
        # Ranks draw different dropout masks; their initial weights come from rank 0 (DDP).
        self._seed(cfg.seed + self.dist.rank)
        self.model = ASRModel(cfg.model, cfg.features, self.tokenizer).to(self.device)
        if train_cuts is not None:
            F = cfg.features.num_mel_bins
            if self.is_main:
                mean, std = feature_stats(train_cuts, cfg.features)
                stats = torch.stack([mean, std]).to(self.device)
            else:
                stats = torch.zeros(2, F, device=self.device)
            stats = self.dist.broadcast_tensor(stats)
            self.model.set_feature_stats(stats[0], stats[1])
        self.frozen: list[torch.nn.Parameter] = []
        if cfg.init_from:
            taken = set(init_weights(self.model, cfg.init_from, cfg.init_modules, cfg.features))
            if cfg.init_freeze_steps > 0:
                self.frozen = [p for n, p in self.model.named_parameters() if n in taken]
        if self.dist.enabled and self.device.type == "cpu":
            import numba

            pool, threads = numba.config.NUMBA_NUM_THREADS, torch.get_num_threads()
            if pool > threads:
                log.warning("numba's thread pool has %d threads for %d torch thread(s) per process: %d processes on one "
                            "machine spin-wait for each other's cores (set NUMBA_NUM_THREADS=%d, or OMP_NUM_THREADS "
                            "before anything imports numba)", pool, threads, self.dist.world_size, threads)
            elif pool < threads:
                log.warning("the transducer loss runs on %d thread(s) (numba's pool: NUMBA_NUM_THREADS, from "
                            "OMP_NUM_THREADS under torchrun), torch on %d: raise OMP_NUM_THREADS to %d", pool, threads, threads)
        n_params = sum(p.numel() for p in self.model.parameters())
        log.info("model: %s encoder + %s head, %.2fM parameters; %s, %s, %d process(es)", cfg.model.encoder, cfg.model.head,
                 n_params / 1e6, self.device, self.precision, self.dist.world_size)
        # the fused kernel: one pass over all 318 tensors of the mini Conformer takes 4.8 ms on
        # this CPU against 14.5 ms for the default per-tensor loop (2 threads; the GradScaler
        # hands a fused AdamW its scale and inf flag itself)
        params = list(self.model.parameters())
        fused = self.device.type in ("cpu", "cuda") and all(p.is_floating_point() for p in params)
        self.opt = torch.optim.AdamW(params, lr=cfg.optim.lr, betas=cfg.optim.betas, weight_decay=cfg.optim.weight_decay,
                                     fused=fused or None)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.step = 0
        self.train_seconds = 0.0
        self.wall_seconds = 0.0

    def wrap(self) -> None:
        """Wrap the model in DistributedDataParallel (after resuming: DDP starts every rank
        from rank 0's weights)."""
        if not self.dist.enabled:
            self.ddp = None
            return
        from torch.nn.parallel import DistributedDataParallel

        self.ddp = DistributedDataParallel(
            self.model,
            device_ids=[self.device.index] if self.device.type == "cuda" else None,
            find_unused_parameters=self.cfg.find_unused_parameters,
        )

    def _autocast(self):
        if self.precision == "fp32":
            return nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16 if self.precision == "bf16" else torch.float16)

    # ------------------------------------------------------------------ one step
    def train_step(self, micro_batches: list[dict], epoch: int) -> dict:
        """One optimizer step on this rank's ``micro_batches`` (more than one: gradient
        accumulation, each micro-batch weighted equally).

        Each micro-batch's loss is the per-token mean over the global micro-batch of all ranks:
        this rank's loss sum over the token count summed over ranks, times the world size,
        which DDP's averaging of gradients over ranks cancels. Returns the step's global
        per-token "loss", "tokens", "unalignable", "frames", "padded_frames", and "grad_norm"
        and "lr", or "skipped" (the reason) when the update did not reach the weights.
        Every rank takes the same branch.
        """
        net = self.ddp if self.ddp is not None else self.model
        ctc_only = self.in_ctc_warmup()
        freeze = bool(self.frozen) and self.step < self.cfg.init_freeze_steps
        if self.ddp is None:  # frozen weights need no gradient at all (a cheaper backward)
            for p in self.frozen:
                p.requires_grad_(not freeze)
        n = len(micro_batches)
        res = {"loss_sum": 0.0, "tokens": 0.0, "unalignable": 0, "frames": 0, "padded_frames": 0, "ctc_errors": 0}
        extra: dict = {}
        for i, batch in enumerate(micro_batches):
            x = batch["features"].to(self.device, non_blocking=True)
            lens = batch["feature_lens"].to(self.device)
            res["frames"] += int(batch["feature_lens"].sum())
            res["padded_frames"] += int(x.shape[0] * x.shape[1])
            last = i == n - 1
            with nullcontext() if self.ddp is None or last else self.ddp.no_sync():
                with self._autocast():
                    out = net(x, lens, batch["tokens"], ctc_only=ctc_only)
                loss = out["loss"]
                local_tokens = int(out["tokens"])
                res["unalignable"] += int(out["unalignable"].sum())
                finite = bool(torch.isfinite(loss))
                g_sum, g_tokens, g_bad, g_errors = self.dist.sum([float(out["loss_sum"]) if finite else 0.0, local_tokens,
                                                                  0 if finite else 1, out.get("ctc_errors", 0)], self.device)
                if g_bad:
                    self.opt.zero_grad(set_to_none=True)
                    return {**res, "skipped": "nonfinite_loss", "loss": math.nan}
                if self.dist.enabled:
                    loss = loss * (local_tokens * self.dist.world_size / max(1.0, g_tokens))
                if n > 1:
                    loss = loss / n
                self.scaler.scale(loss).backward()
            res["loss_sum"] += g_sum
            res["tokens"] += g_tokens
            res["ctc_errors"] += int(g_errors)
            extra = {k: v for k, v in out.items() if k.endswith("_loss") and isinstance(v, float)}
        if freeze and self.ddp is not None:  # DDP reduces every registered gradient: drop the frozen ones after
            for p in self.frozen:
                p.grad = None
        if self.scaler.is_enabled():
            self.scaler.unscale_(self.opt)
        max_norm = self.optim.grad_clip if self.optim.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        if not torch.isfinite(grad_norm):
            if self.scaler.is_enabled():
                self.scaler.update()  # fp16 overflow: a smaller loss scale next time
            self.opt.zero_grad(set_to_none=True)
            return {**res, "skipped": "nonfinite_grad", "grad_norm": float(grad_norm)}
        self.step += 1
        lr = lr_at(self.step, self.optim, epoch)
        for g in self.opt.param_groups:
            g["lr"] = lr
        self.scaler.step(self.opt)
        self.scaler.update()
        self.opt.zero_grad(set_to_none=True)
        res.update(extra)
        res.update(loss=res["loss_sum"] / max(1.0, res["tokens"]), grad_norm=float(grad_norm), lr=lr)
        if ctc_only:
            self.ctc_errors = (self.ctc_errors + [(res["ctc_errors"], int(res["tokens"]))])[-10:]
            res["ctc_accuracy"] = 1.0 - res["ctc_errors"] / max(1.0, res["tokens"])
        return res

    def in_ctc_warmup(self) -> bool:
        """Whether the next step trains the CTC head alone (``ModelConfig.ctc_warmup_steps``,
        ``ctc_warmup_accuracy``, ``ctc_warmup_max_steps``). The warm-up lasts ``ctc_warmup_steps``
        steps and, with ``ctc_warmup_accuracy`` > 0, after them until the CTC head's greedy token
        accuracy (1 - token error rate) on the last 10 steps' training batches reaches it, or to
        ``ctc_warmup_max_steps``. Every warm-up logs that accuracy (``ctc_accuracy`` in
        metrics.jsonl) and the value it ended at. Meant for encoders that leave the CTC plateau
        late (BPE-256 on the mini Conformer: barely off it after 1500-1800 steps, where a fixed
        900-step warm-up left a transducer that deleted 89% of the words). It does not rescue a stuck
        run: on the mini corpus (characters) the recipe's model read 0.57 of its tokens at step
        450 with seed 42 and at most 0.35 from step 180 to 680 with seed 7 under DDP, whose
        transducer, joining at 450, never learnt (WER 95%; docs/mini_results.md); a warning
        says so when the limit ends a warm-up below the accuracy. The step it ends at is
        checkpointed, so a resumed run decides as the uninterrupted one did."""
        m = self.cfg.model
        if self.model.transducer is None or self.model.ctc is None or self.ctc_warmup_end is not None:
            return False
        if self.step < m.ctc_warmup_steps:
            return True
        errors, tokens = (sum(c) for c in zip(*self.ctc_errors)) if self.ctc_errors else (0, 0)
        acc = 1.0 - errors / tokens if tokens else 0.0
        limit = bool(m.ctc_warmup_max_steps) and self.step >= m.ctc_warmup_max_steps
        if m.ctc_warmup_accuracy <= 0 or acc >= m.ctc_warmup_accuracy or limit:
            self.ctc_warmup_end = self.step
            if self.ctc_errors and limit and acc < m.ctc_warmup_accuracy:
                log.warning("step %d: the CTC warm-up ends at ctc_warmup_max_steps with the CTC head's token accuracy at "
                            "%.2f on the last 10 batches, below ctc_warmup_accuracy %g: the encoder may be stuck (on the "
                            "mini corpus one run stayed at or below 0.35 from step 180 to 680 of CTC alone and ended at WER "
                            "95%%); another seed may do better", self.step, acc, m.ctc_warmup_accuracy)
            elif self.ctc_errors:
                log.info("step %d: the CTC warm-up ends (CTC token accuracy %.2f on the last 10 batches): the transducer "
                         "joins", self.step, acc)
            return False
        if self.step == m.ctc_warmup_steps:
            log.info("step %d: CTC token accuracy %.2f on the last 10 batches, below ctc_warmup_accuracy %g: the CTC "
                     "warm-up goes on until it is reached%s", self.step, acc, m.ctc_warmup_accuracy,
                     f" or to step {m.ctc_warmup_max_steps}" if m.ctc_warmup_max_steps else "")
        return True

    # ------------------------------------------------------------------ logs
    def _log_metrics(self, record: dict) -> None:
        if not self.is_main:
            return
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        self.metrics_records += 1
        if self.tb is not None:
            step = record.get("step", 0)
            for k, v in record.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("step", "epoch"):
                    self.tb.add_scalar(f"{record.get('kind', 'train')}/{k}", v, step)

    def _truncate_metrics(self, keep: int, step: int) -> None:
        """Keep the first ``keep`` records of metrics.jsonl (all if < 0), minus any record after
        ``step``: what a killed run logged after its checkpoint goes."""
        kept = []
        if self.metrics_path.is_file():
            for line in self.metrics_path.read_text().splitlines():
                if 0 <= keep <= len(kept):
                    break
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    break  # a line cut short by the kill
                if rec.get("step", 0) > step:
                    break
                kept.append(line)
            tmp = self.metrics_path.with_name(f".{self.metrics_path.name}.tmp{os.getpid()}")
            tmp.write_text("".join(line + "\n" for line in kept))
            os.replace(tmp, self.metrics_path)
        self.metrics_records = len(kept)

    # ------------------------------------------------------------------ checkpoints
    def _checkpoints(self) -> list[Path]:
        """This run's step checkpoints, oldest first (other files in the directory ignored)."""
        found = [p for p in self.ckpt_dir.glob("ckpt-*.pt") if p.stem.split("-", 1)[1].isdigit()]
        return sorted(found, key=lambda p: int(p.stem.split("-")[1]))

    def check_exp_dir(self) -> None:
        """Before anything is written (rank 0): an exp dir whose checkpoints are of another model
        (its ``config.yaml`` names another model, features or tokenizer) is a ValueError. Resuming
        there failed on every checkpoint, started over and rotated the new run's checkpoints out
        behind the old run's higher-numbered ones. An exp dir with results but no checkpoint
        starts over with a warning that they will be replaced."""
        if not self._checkpoints():
            old = [n for n in ("model.pt", "metrics.jsonl") if (self.exp / n).is_file() and (self.exp / n).stat().st_size]
            if old:
                log.warning("%s has %s but no checkpoint to resume from: training starts from scratch and replaces them",
                            self.exp, " and ".join(old))
            return
        saved = self.exp / "config.yaml"
        try:
            before = load_yaml(TrainConfig, saved)
        except (FileNotFoundError, ConfigError) as e:
            log.warning("cannot read %s (%s): the checkpoints there are not checked against this config", saved, e)
            return

        def same(a, b) -> bool:
            return json.dumps(to_dict(a), sort_keys=True) == json.dumps(to_dict(b), sort_keys=True)

        diff = [name for name, a, b in (("model", before.model, self.cfg.model), ("features", before.features, self.cfg.features))
                if not same(a, b)]
        if Path(before.data.tokenizer).resolve() != Path(self.cfg.data.tokenizer).resolve():
            diff.append(f"data.tokenizer ({before.data.tokenizer})")
        if diff:
            raise ValueError(f"{self.exp} holds checkpoints of a run with another {', '.join(diff)} (its config.yaml): resuming "
                             f"would mix two models; use a new --exp-dir, or delete {self.ckpt_dir} to start over there")

        def flat(d: dict, prefix: str = "") -> dict:
            out = {}
            for k, v in d.items():
                out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
            return out

        old, new = flat(to_dict(before)), flat(to_dict(self.cfg))
        changed = [k for k in sorted(set(old) | set(new)) if k != "exp_dir" and old.get(k) != new.get(k)]
        if changed:
            log.warning("resuming in %s with settings that differ from its config.yaml: %s; the run goes on with the new ones",
                        self.exp, ", ".join(f"{k} ({old.get(k)!r} -> {new.get(k)!r})" for k in changed[:6])
                        + (" ..." if len(changed) > 6 else ""))

    def _save(self, epoch: int, batch_in_epoch: int, tag: str | None = None, progress: dict | None = None) -> None:
        """Checkpoint (collective: every rank's RNG states and epoch counters go in; rank 0
        writes). ``progress``: this rank's counters of the epoch so far (mid-epoch saves)."""
        ranks = self.dist.gather({"rng": _rng_state(self.device), "progress": progress or {}})
        if not self.is_main:
            return
        state = {
            "model": self.model.to_checkpoint(),
            "optimizer": self.opt.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "epoch": epoch,
            "batch_in_epoch": batch_in_epoch,
            "world_size": self.dist.world_size,
            "rng": [r["rng"] for r in ranks],  # one per rank
            "epoch_progress": [r["progress"] for r in ranks],
            "metrics_records": self.metrics_records,
            "train_seconds": self.train_seconds,
            "wall_seconds": self.wall_seconds,
            "ctc_warmup_end": self.ctc_warmup_end,
            "ctc_errors": self.ctc_errors,
        }
        path = self.ckpt_dir / f"ckpt-{self.step}.pt"
        save_atomic(state, path)
        if tag is not None:
            save_atomic({**state["model"], "meta": {"epoch": epoch, "step": self.step}}, self.ckpt_dir / f"{tag}.pt")
        for old in self._checkpoints()[: -self.cfg.keep_last]:
            old.unlink(missing_ok=True)
        keep_epochs = max(self.cfg.keep_last, self.cfg.average_last)
        epochs = sorted(self.ckpt_dir.glob("epoch-*.pt"), key=lambda p: int(p.stem.split("-")[1]))
        for old in epochs[:-keep_epochs]:
            old.unlink(missing_ok=True)

    def _load_state(self, state: dict) -> None:
        self.model.load_state_dict(state["model"]["state_dict"])
        self.opt.load_state_dict(state["optimizer"])
        scaler = state.get("scaler") or {}
        if self.scaler.is_enabled() and scaler:
            self.scaler.load_state_dict(scaler)

    def resume(self) -> tuple[int, int]:
        """Load the newest readable checkpoint (rank 0 picks it, every rank loads it).
        Returns (epoch, batches of it already trained on); (1, 0) for a fresh start. The
        counters of a part-trained epoch are left in ``self.resumed_progress``."""
        self.resumed_progress = {}
        chosen, state, failed = None, None, []
        if self.is_main:
            ours, pieces = self.tokenizer.to_bytes(), self.tokenizer.pieces()
            for path in reversed(self._checkpoints()):
                try:
                    state = read_checkpoint(path)
                    theirs = (state.get("model") or {}).get("tokenizer") if isinstance(state, dict) else None
                    # the pieces and their ids, not the file's bytes (a retrain on the same text by
                    # another sentencepiece version writes other bytes for the same vocabulary)
                    if theirs is not None and bytes(theirs) != ours and Tokenizer.from_bytes(bytes(theirs)).pieces() != pieces:
                        raise ValueError(f"it was trained with another tokenizer than {self.cfg.data.tokenizer} is now")
                    self._load_state(state)
                except Exception as e:
                    log.warning("cannot resume from %s (%s); trying the previous checkpoint", path, e)
                    failed.append(f"{path.name}: {e}")
                    state = None
                    continue
                chosen = str(path)
                break
        # no checkpoint could be loaded: starting over would replace the run's results, and its
        # new checkpoints would be rotated out behind the unreadable higher-numbered ones
        chosen, failed = self.dist.broadcast((chosen, failed))
        if chosen is None and failed:
            raise ValueError(f"none of the {len(failed)} checkpoint(s) in {self.ckpt_dir} can be resumed from ("
                             + "; ".join(failed[:3]) + (" ..." if len(failed) > 3 else "") + f"): delete {self.ckpt_dir} "
                             "to start over there, or use another --exp-dir")
        if chosen is None:
            if self.is_main:
                self._truncate_metrics(0, 0)  # a fresh start: one trajectory in the log
            return 1, 0
        if not self.is_main:
            state = read_checkpoint(chosen)
            self._load_state(state)
        self.step = int(state["step"])
        self.train_seconds = float(state.get("train_seconds", 0.0))
        self.wall_seconds = float(state.get("wall_seconds", 0.0))
        self.ctc_warmup_end = state.get("ctc_warmup_end")
        self.ctc_errors = [tuple(map(int, e)) for e in state.get("ctc_errors", [])]
        epoch, batch = int(state["epoch"]), int(state["batch_in_epoch"])
        rngs = state["rng"]
        rngs = [rngs] if isinstance(rngs, dict) else list(rngs)
        saved_world = int(state.get("world_size", len(rngs)))
        if saved_world == self.dist.world_size and len(rngs) == saved_world:
            _set_rng_state(rngs[self.dist.rank], self.device)
            progress = state.get("epoch_progress") or [{}] * saved_world
            self.resumed_progress = progress[self.dist.rank] if batch > 0 else {}
        else:
            log.warning("checkpoint %s was written by %d process(es), this run has %d: training goes on, but with fresh "
                        "RNG streams and the epoch position rescaled, so not exactly as before", chosen, saved_world, self.dist.world_size)
            self._seed(self.cfg.seed + self.dist.rank + 7919 * self.step)
            batch = batch * saved_world // self.dist.world_size
        if self.is_main:
            self._truncate_metrics(int(state.get("metrics_records", -1)), self.step)
        log.info("resumed from %s: epoch %d, batch %d, step %d", chosen, epoch, batch, self.step)
        return epoch, batch

    # ------------------------------------------------------------------ run
    def run(self) -> ASRModel:
        """Train (see the class docstring). SIGINT (Ctrl-C) or SIGTERM stops after the step in
        progress with a checkpoint: :class:`TrainingInterrupted` says where (a second signal stops
        at once). The exp dir is locked while this runs: a second run on it is refused."""
        lock = lock_exp_dir(self.exp) if self.is_main else None
        if self.is_main:  # a killed run's half-written checkpoints (.ckpt-N.pt.tmpPID)
            for stale in self.ckpt_dir.glob(".*.pt.tmp*"):
                log.info("removing %s, a checkpoint an earlier run did not finish writing", stale)
                stale.unlink(missing_ok=True)
        self._restore_signals = lambda: None
        try:
            return self._run()
        finally:
            self._restore_signals()
            if lock is not None:
                lock.close()
            if self.tb is not None:
                self.tb.close()
                self.tb = None
            self.dist.close()

    def _catch_signals(self) -> None:
        """From here to the end of ``run``: SIGINT and SIGTERM set ``self._interrupt`` (only
        that: logging in a handler can interrupt a write to the same stream), and the loop saves
        and stops at the next step boundary; the second one raises KeyboardInterrupt. Before
        (reading data, resuming) the default: stop at once, nothing trained yet to lose."""
        self._interrupt = None
        if threading.current_thread() is not threading.main_thread():
            return

        def handler(signum, frame):
            if self._interrupt is not None:
                raise KeyboardInterrupt
            self._interrupt = signum

        before = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}

        def restore():
            for sig, h in before.items():
                signal.signal(sig, h)
        self._restore_signals = restore

    def _interrupted(self) -> bool:
        """Whether any rank got SIGINT/SIGTERM (collective: every rank stops at the same step)."""
        return self.dist.any([self._interrupt is not None], self.device)[0]

    def _stop_interrupted(self, saved: bool, epoch: int, batch: int, progress: dict | None) -> None:
        """Save a checkpoint here unless one was just written, and raise TrainingInterrupted."""
        if not saved:
            self._save(epoch, batch, progress=progress)
        what = signal.Signals(self._interrupt).name if self._interrupt else "a signal on another rank"
        if self.is_main:
            log.warning("%s: stopping with a checkpoint at step %d", what, self.step)
        raise TrainingInterrupted(what, self.step, self.ckpt_dir / f"ckpt-{self.step}.pt")

    def _run(self) -> ASRModel:
        cfg = self.cfg
        W, R = self.dist.world_size, self.dist.rank
        # one global shuffle, the same on every rank: the sampler then shuffles each epoch within a
        # window of cuts (lhotse's buffer), which over manifests in corpus order (LibriSpeech's
        # train-clean-100, -360, other-500, speaker by speaker) would leave whole parts apart; the
        # feature statistics and the bucket bins, estimated from the first cuts, see all parts
        train_cuts = _load_cuts(cfg.data.train, cfg.data.max_cut_duration).shuffle(rng=random.Random(cfg.seed))
        dev_sets = {split_name(p): _load_cuts([p]) for p in cfg.data.dev} if self.is_main else {}
        log.info("training on %d cuts (%.2f h)", len(train_cuts), sum(c.duration for c in train_cuts) / 3600)

        self.setup(train_cuts)
        start_epoch, skip_batches = self.resume()
        budget = cfg.max_minutes * 60 if cfg.max_minutes > 0 else math.inf
        # a finished run started again: its epochs, steps or time are spent (raise them to go on)
        stop = (start_epoch > cfg.max_epochs or bool(cfg.max_steps and self.step >= cfg.max_steps)
                or (self.step > 0 and self.wall_seconds >= budget))
        if stop and self.is_main:
            log.info("epoch %d, step %d, %.1f min: this run's max_epochs / max_steps / max_minutes are spent; nothing to "
                     "train (raise them to train on)", start_epoch - 1, self.step, self.wall_seconds / 60)
        elif self.is_main:  # the settings this exp dir's checkpoints go on with (not rewritten when nothing trains)
            save_yaml(cfg, self.exp / "config.yaml")
        self.wrap()
        if self.is_main:
            from torch.utils.tensorboard import SummaryWriter

            # a resumed run drops the events the killed run wrote after its checkpoint
            self.tb = SummaryWriter(str(self.exp / "tensorboard"), purge_step=self.step + 1 if self.step else None)
        dataset = ASRDataset(self.tokenizer, cfg.features, cfg.data.augment, seed=cfg.seed)
        eval_dataset = ASRDataset(self.tokenizer, cfg.features, None)
        sampler = make_sampler(train_cuts, cfg.data.sampler, train=True, seed=cfg.seed, world_size=W, rank=R)
        sorted_sampler = None
        if cfg.data.sortagrad_epochs > 0:
            sorted_sampler = make_sampler(train_cuts.sort_by_duration(ascending=True), cfg.data.sampler, train=False, world_size=W, rank=R,
                                          by_duration=False)
        bad_in_a_row = 0
        wall0 = time.perf_counter() - self.wall_seconds  # resumed runs keep their spent time
        self._catch_signals()
        last_epoch = start_epoch if skip_batches else start_epoch - 1  # the last epoch trained on, in part or whole
        for epoch in range(start_epoch, cfg.max_epochs + 1):
            if stop:
                break
            epoch_sampler = sorted_sampler if epoch <= cfg.data.sortagrad_epochs else sampler
            epoch_sampler.set_epoch(epoch)
            batches = _EpochBatches(epoch_sampler, skip_batches, cfg.seed, epoch, R)
            it = iter(make_loader(dataset, batches, cfg.data.sampler.num_workers, pin_memory=self.device.type == "cuda"))
            progress = getattr(self, "resumed_progress", {}) if skip_batches else {}
            stats: Counter = Counter(progress.get("stats", {}))  # summed over the epoch
            skipped: Counter = Counter(progress.get("skipped", {}))
            t_epoch = time.perf_counter() - progress.get("seconds", 0.0)  # a resumed epoch's time so far counts

            def progress_now() -> dict:  # this rank's counters of the epoch so far, for a mid-epoch checkpoint
                return {"stats": dict(stats), "skipped": dict(skipped), "seconds": time.perf_counter() - t_epoch}

            pbar = tqdm(desc=f"epoch {epoch}", unit="batch", disable=not self.progress, dynamic_ncols=True)
            batch_idx = skip_batches
            skip_batches = 0
            exhausted = False
            while not exhausted:
                group: list[dict] = []
                t0 = time.perf_counter()
                while len(group) < cfg.optim.accum_grad:
                    t_data = time.perf_counter()
                    batch = next(it, None)
                    stats["data_seconds"] += time.perf_counter() - t_data  # waiting for the loader
                    # every rank must agree: the epoch ends for all when one rank runs dry, and a
                    # batch whose cuts were all unreadable on one rank is skipped by all
                    exhausted, empty = self.dist.any([batch is None, batch is not None and not batch["cut_ids"]], self.device)
                    if exhausted:
                        break
                    batch_idx += 1
                    pbar.update(1)
                    skipped.update(batch["skipped"])
                    if empty:
                        if batch["cut_ids"]:
                            skipped["batches_dropped_with_another_rank"] += 1
                        continue
                    group.append(batch)
                if not group:
                    break
                res = self.train_step(group, epoch)
                stats["frames"] += res["frames"]
                stats["padded_frames"] += res["padded_frames"]
                if res["unalignable"]:
                    skipped["unalignable"] += res["unalignable"]
                if "skipped" in res:
                    bad_in_a_row += 1
                    skipped[f"{res['skipped']}_batches"] += len(group)
                    log.warning("step %d: %s (loss %s, grad norm %s); update skipped (%d in a row)", self.step, res["skipped"],
                                res.get("loss"), res.get("grad_norm"), bad_in_a_row)
                    if bad_in_a_row >= cfg.max_bad_steps:
                        what = "losses" if res["skipped"] == "nonfinite_loss" else "gradients"
                        raise RuntimeError(f"{bad_in_a_row} non-finite {what} in a row: stopping (lower the lr?)")
                    continue
                bad_in_a_row = 0
                stats["loss_sum"] += res["loss_sum"]
                stats["tokens"] += res["tokens"]
                self.train_seconds += time.perf_counter() - t0
                if self.step % cfg.log_every == 0:
                    rec = {"kind": "train", "epoch": epoch, "step": self.step, "loss": res["loss"], "lr": res["lr"], "grad_norm": res["grad_norm"]}
                    rec.update({k: v for k, v in res.items() if (k.endswith("_loss") and k != "loss") or k == "ctc_accuracy"})
                    if self.scaler.is_enabled():
                        rec["loss_scale"] = float(self.scaler.get_scale())
                    self._log_metrics(rec)
                    pbar.set_postfix(loss=f"{rec['loss']:.3f}", lr=f"{res['lr']:.2e}")
                saved = bool(cfg.save_every_steps and self.step % cfg.save_every_steps == 0)
                if saved:
                    self._save(epoch, batch_idx, progress=progress_now())
                self.wall_seconds = time.perf_counter() - wall0
                over_budget, interrupted = self.dist.any([self.wall_seconds >= budget, self._interrupt is not None], self.device)
                if interrupted:
                    pbar.close()
                    self._stop_interrupted(saved, epoch, batch_idx, progress_now())
                if (cfg.max_steps and self.step >= cfg.max_steps) or over_budget:
                    stop = True
                    break
            pbar.close()
            del it  # stops the data-loader workers
            last = stop or epoch == cfg.max_epochs
            # stopped inside the epoch (max_steps or the time budget): a longer run goes on from here
            partial = stop and not exhausted
            resume_at, resume_batch, epoch_progress = (epoch, batch_idx, progress_now()) if partial else (epoch + 1, 0, None)
            frames, padded = self.dist.sum([stats["frames"], stats["padded_frames"]], self.device)
            if self.dist.enabled:
                skipped = sum((Counter(s) for s in self.dist.gather(dict(skipped))), Counter())
            pad = 1.0 - frames / max(1.0, padded)
            train_loss = stats["loss_sum"] / max(1, stats["tokens"])
            epoch_seconds = time.perf_counter() - t_epoch
            data_wait = min(1.0, stats["data_seconds"] / max(1e-9, epoch_seconds))  # this rank's (rank 0's in the log)
            rec = {"kind": "epoch", "epoch": epoch, "step": self.step, "train_loss": train_loss, "padding_fraction": pad,
                   "epoch_seconds": epoch_seconds, "data_wait_fraction": round(data_wait, 4), "skipped": dict(skipped)}
            if partial:
                rec["partial"] = True
            msg = f"epoch {epoch}: train loss {train_loss:.3f}, padding {100 * pad:.1f}%, waiting for data {100 * data_wait:.0f}%"
            if self.is_main and (last or epoch % cfg.valid_every_epochs == 0):
                for name, cuts in dev_sets.items():
                    ev = self.validate(cuts, eval_dataset) if self._interrupt is None else None
                    if ev is None or ev["stopped"]:  # a signal (e.g. torchrun's SIGTERM, which SIGKILLs after a
                        # grace period) cuts validation short: the checkpoint below is written at once
                        log.warning("%s: validation of epoch %d stopped; %s has no WER this epoch",
                                    signal.Signals(self._interrupt).name, epoch, name)
                        msg += f", {name} - (interrupted)"
                        continue
                    d, dev_skipped = ev["wer_detail"], sum(ev["skipped"].values())
                    if not d["words"]:  # nothing decoded: no rate to give (it read as 0.00%)
                        log.warning("validation on %s: none of its %d cuts could be decoded (%s): no loss or WER", name,
                                    min(len(cuts), cfg.data.dev_max_cuts), ev["skipped"] or "no reference words")
                        ev["loss"] = ev["wer"] = None
                    rec.update({f"{name}_loss": ev["loss"], f"{name}_wer": ev["wer"], f"{name}_words": d["words"],
                                f"{name}_sub": d["sub"], f"{name}_del": d["del"], f"{name}_ins": d["ins"],
                                f"{name}_skipped": dev_skipped})
                    msg += (f", {name} loss {ev['loss']:.3f} WER {ev['wer']:.2f}%" if ev["wer"] is not None else f", {name} -")
                    if dev_skipped:
                        msg += f" ({dev_skipped} cut(s) unreadable, skipped)"
            self.dist.barrier()  # the other ranks wait here while rank 0 validates
            if skipped:
                msg += f", skipped {dict(skipped)}"
            if self.is_main:
                log.info(msg)
            self.wall_seconds = time.perf_counter() - wall0
            rec["wall_seconds"] = round(self.wall_seconds, 1)
            self._log_metrics(rec)
            saved = last or epoch % cfg.save_every_epochs == 0
            if saved:
                self._save(resume_at, resume_batch, tag=f"epoch-{epoch}", progress=epoch_progress)
            if not last and self._interrupted():  # e.g. during validation (the last epoch goes on to the final model)
                self._stop_interrupted(saved, resume_at, resume_batch, epoch_progress)
            last_epoch = epoch
        if self.tb is not None:
            self.tb.close()
            self.tb = None
        final = self.model
        if self.is_main:
            final = self._final_model(last_epoch)
            final.save(self.exp / "model.pt", meta={"epochs": last_epoch, "steps": self.step, "train_seconds": round(self.train_seconds, 1),
                                                    "wall_seconds": round(self.wall_seconds, 1), "world_size": W, "precision": self.precision})
            plot_curves(self.metrics_path, self.exp / "curves.png")
            table = write_valid_table(self.metrics_path, self.exp / "valid_wer.md")
            if table:
                log.info("validation at the end of training:\n%s", table)
            log.info("wrote %s, %s and %s", self.exp / "model.pt", self.exp / "curves.png", self.exp / "valid_wer.md")
        self.dist.barrier()
        return final.cpu().eval()

    def validate(self, cuts: CutSet, dataset: ASRDataset) -> dict:
        """Loss and greedy WER of the (unwrapped) model on ``dev_max_cuts`` cuts: a fixed random
        sample (the same every epoch and run), not the manifest's first cuts (a few speakers)."""
        if len(cuts) > self.cfg.data.dev_max_cuts:
            cuts = cuts.shuffle(rng=random.Random(0)).subset(first=self.cfg.data.dev_max_cuts)
        # world_size/rank given: lhotse would otherwise take rank 0's share of torchrun's WORLD_SIZE
        sampler = make_sampler(cuts, self.cfg.data.sampler, train=False, world_size=1, rank=0)
        decode = None
        if self.model.transducer is not None and self.ctc_warmup_end is None and self.model.ctc is not None \
                and (self.step < self.cfg.model.ctc_warmup_steps or self.cfg.model.ctc_warmup_accuracy > 0):
            # the transducer has not trained yet: its CTC head's WER
            log.info("validation in the CTC warm-up (step %d): decoding the CTC head", self.step)

            def decode(x, lens):
                return self.model.decode(x, lens, use_ctc=True)
        return evaluate(self.model, make_loader(dataset, sampler), decode=decode, stop=lambda: self._interrupt is not None)

    def _final_model(self, last_epoch: int) -> ASRModel:
        n = max(1, self.cfg.average_last)
        every = self.cfg.save_every_epochs  # the epochs that write a file, and the last
        wanted = [self.ckpt_dir / f"epoch-{e}.pt" for e in range(max(1, last_epoch - n + 1), last_epoch + 1)
                  if e % every == 0 or e == last_epoch]
        ref = self.model.state_dict()
        paths, avg = [], None  # summed one file at a time (ten of a large model's would not fit at once)
        for p in wanted if n > 1 else []:
            if not p.is_file():
                continue
            try:
                sd = read_checkpoint(p)["state_dict"]
                if set(sd) != set(ref) or any(sd[k].shape != ref[k].shape for k in ref):
                    raise ValueError("its weights are not this model's")
            except (ValueError, KeyError, TypeError) as e:
                log.warning("final model: %s left out of the average (%s)", p, e)
                continue
            paths.append(p)
            avg = {k: v.double().clone() for k, v in sd.items()} if avg is None else {k: avg[k] + sd[k].double() for k in avg}
        if n > 1 and len(paths) < len(wanted):
            log.warning("final model: average_last = %d, but only %d of the epoch checkpoints %s are usable%s", n, len(paths),
                        ", ".join(p.stem for p in wanted), "" if len(paths) > 1 else ": the final model is the last weights")
        if len(paths) <= 1:
            return self.model.cpu().eval()
        self.model.load_state_dict({k: (v / len(paths)).to(ref[k].dtype) for k, v in avg.items()})
        log.info("final model: average of %s", ", ".join(p.stem for p in paths))
        return self.model.cpu().eval()


class TrainingInterrupted(Exception):
    """SIGINT or SIGTERM stopped training at a step boundary; ``checkpoint`` resumes it."""

    def __init__(self, signal_name: str, step: int, checkpoint: Path):
        super().__init__(f"{signal_name} at step {step}: saved {checkpoint}; run the same command again to resume from there")
        self.signal_name, self.step, self.checkpoint = signal_name, step, checkpoint


def lock_exp_dir(exp: Path):
    """An exclusive lock on ``exp/.lock`` (held by the returned open file until it is closed or
    the process ends), or a ValueError naming the run that holds it."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        return None
    exp.mkdir(parents=True, exist_ok=True)
    f = open(exp / ".lock", "a+")
    try:  # a POSIX record lock: this process's only (flock's would pass to forked data-loader workers, which can
        #   outlive a killed trainer by seconds and refuse its restart)
        fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno not in (errno.EACCES, errno.EAGAIN):  # a file system without POSIX locks (NFS without lockd)
            log.warning("cannot lock %s (%s): a second run on this exp dir would not be refused", exp / ".lock", e)
            f.close()
            return None
        f.seek(0)
        pid = f.read().strip() or "?"
        f.close()
        raise ValueError(f"another training run (pid {pid}) is using {exp}: wait for it to end, or use another --exp-dir") from None
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f


class _EpochBatches:
    """One epoch of a sampler's batches, the first ``skip`` dropped (mid-epoch resume), each
    with the seed of its augmentation: ``batch_seed(seed, epoch, index, rank)``."""

    def __init__(self, sampler, skip: int, seed: int, epoch: int, rank: int):
        self.sampler, self.skip, self.seed, self.epoch, self.rank = sampler, skip, seed, epoch, rank

    def __iter__(self):
        for i, cuts in enumerate(self.sampler):
            if i >= self.skip:
                yield SeededCuts(cuts, batch_seed(self.seed, self.epoch, i, self.rank))


def _rng_state(device: torch.device) -> dict:
    """This process's python, numpy, torch (and CUDA) RNG states as tensors and builtins
    (what ``torch.load(weights_only=True)`` reads back)."""
    py = random.getstate()
    npy = np.random.get_state()
    state = {
        "python": [py[0], torch.tensor(py[1], dtype=torch.int64), py[2]],
        "numpy": [npy[0], torch.from_numpy(npy[1].astype(np.int64)), int(npy[2]), int(npy[3]), float(npy[4])],
        "torch": torch.get_rng_state(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    py = state["python"]
    random.setstate((int(py[0]), tuple(int(v) for v in py[1].tolist()), py[2]))
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), int(n[2]), int(n[3]), float(n[4])))
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def write_valid_table(metrics_path: Path, out_md: Path) -> str:
    """The last validation in metrics.jsonl as a markdown table (split, loss, WER, words,
    sub/del/ins), written to ``out_md``; returns it ("" when there was no validation)."""
    recs = [json.loads(line) for line in metrics_path.read_text().splitlines()] if metrics_path.is_file() else []
    rec = next((r for r in reversed(recs) if r.get("kind") == "epoch" and any(k.endswith("_wer") for k in r)), None)
    if rec is None:
        return ""
    splits = sorted(k[: -len("_wer")] for k in rec if k.endswith("_wer"))
    lines = [f"Validation after epoch {rec['epoch']} (step {rec['step']}), greedy decoding.", "",
             "| split | loss | WER % | words | sub | del | ins |", "|---|---:|---:|---:|---:|---:|---:|"]
    for s in splits:
        loss, wer = rec[f"{s}_loss"], rec[f"{s}_wer"]
        lines.append(f"| {s} | {'-' if loss is None else f'{loss:.4f}'} | {'-' if wer is None else f'{wer:.2f}'} | "
                     f"{rec.get(f'{s}_words', '')} | {rec.get(f'{s}_sub', '')} | {rec.get(f'{s}_del', '')} | "
                     f"{rec.get(f'{s}_ins', '')} |")
    table = "\n".join(lines) + "\n"
    out_md.write_text(table)
    return table


def validated_points(epochs: list[dict], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of ``key`` (e.g. ``dev_wer``) over the epoch records that have it: dev
    metrics exist only on validated epochs, and a None between two of them would break the
    plotted line into isolated markers."""
    valid = [r for r in epochs if r.get(key) is not None]
    return [r["step"] for r in valid], [r[key] for r in valid]


def plot_curves(metrics_path: Path, out_png: Path) -> None:
    """Loss (train steps, per-epoch train/dev) and dev WER against steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = [json.loads(line) for line in open(metrics_path)] if metrics_path.is_file() else []
    steps = [r for r in recs if r.get("kind") == "train"]
    epochs = [r for r in recs if r.get("kind") == "epoch"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    if steps:
        ax1.plot([r["step"] for r in steps], [r["loss"] for r in steps], lw=0.8, alpha=0.6, label="train (per step)")
    if epochs:
        ax1.plot([r["step"] for r in epochs], [r["train_loss"] for r in epochs], "o-", label="train (epoch)")
        for ax, suffix, marker in ((ax1, "_loss", "s-"), (ax2, "_wer", "o-")):
            for key in sorted({k for r in epochs for k in r if k.endswith(suffix) and k != "train_loss"}):
                ax.plot(*validated_points(epochs, key), marker, label=key.removesuffix(suffix))
    ax1.set_xlabel("step"), ax1.set_ylabel("loss per token"), ax1.set_yscale("log"), ax1.legend(), ax1.grid(alpha=0.3)
    ax2.set_xlabel("step"), ax2.set_ylabel("WER %"), ax2.grid(alpha=0.3)
    if ax2.get_legend_handles_labels()[0]:  # no dev set: no lines to name
        ax2.legend()
    ax1.set_title("loss"), ax2.set_title("validation WER (greedy)")
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
