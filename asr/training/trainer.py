"""One trainer for every model: config, loop, validation, checkpoints, logs and plots.

Run by ``asr train --config conf.yaml``. Per step: a bucketed batch, the model's loss
(mean per token over alignable utterances), AdamW with warmup, gradient clipping and
optional accumulation. Steps whose loss or gradients are not finite never reach the weights:
they are skipped, logged, and training stops after ``max_bad_steps`` in a row.

Each epoch logs the padding fraction (padded frames / all frames), the cuts skipped and why,
validation loss and greedy WER. Checkpoints are written atomically every
``save_every_steps`` and each epoch, the last ``keep_last`` kept; a run restarted on the same
``exp_dir`` resumes from the newest readable one (a corrupt one falls back to the previous).
At the end ``model.pt`` (weights averaged over the last ``average_last`` epoch checkpoints),
``metrics.jsonl``, TensorBoard events and ``curves.png`` are in ``exp_dir``.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from lhotse import CutSet
from tqdm import tqdm

from ..config import save_yaml
from ..data.dataset import ASRDataset, AugmentConfig, SamplerConfig, make_loader, make_sampler
from ..data.features import FeatureConfig
from ..data.tokenizer import Tokenizer
from ..decoding.wer import WER
from ..models import ASRModel, ModelConfig, read_checkpoint, save_atomic

__all__ = ["DataConfig", "OptimConfig", "TrainConfig", "Trainer", "evaluate", "lr_at"]

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
    schedule: Literal["noam", "cosine", "constant"] = "noam"
    total_steps: int = 0  # cosine decays to min_lr at this step (0: estimated from the budget)
    min_lr: float = 1e-5
    grad_clip: float = 5.0
    accum_grad: int = 1


@dataclass
class TrainConfig:
    exp_dir: str = "exp/run"
    seed: int = 42
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
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
    device: str = "auto"
    threads: int = 0  # torch intra-op threads; 0 leaves torch's default


def lr_at(step: int, cfg: OptimConfig) -> float:
    """Learning rate for optimizer step ``step`` (1-based)."""
    step = max(1, step)
    warm = max(1, cfg.warmup_steps)
    if cfg.schedule == "constant":
        return cfg.lr * min(1.0, step / warm)
    if cfg.schedule == "noam":  # linear warmup, then inverse square root, peak = lr
        return cfg.lr * min(step / warm, math.sqrt(warm / step))
    total = max(cfg.total_steps, warm + 1)
    if step <= warm:
        return cfg.lr * step / warm
    frac = min(1.0, (step - warm) / (total - warm))
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * frac))


def _load_cuts(paths: list[str], max_duration: float | None = None) -> CutSet:
    """Eager CutSet from manifests, dropping cuts longer than ``max_duration`` seconds."""
    if not paths:
        raise ValueError("no cut manifests given")
    cuts = []
    for p in paths:
        if not Path(p).is_file():
            raise FileNotFoundError(f"cut manifest not found: {p} (run `asr prepare` first)")
        cuts.extend(c for c in CutSet.from_file(p) if max_duration is None or c.duration <= max_duration)
    return CutSet.from_cuts(cuts)


@torch.no_grad()
def feature_stats(cuts: CutSet, features: FeatureConfig, max_cuts: int = 300) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std of the features of up to ``max_cuts`` cuts (unreadable ones skipped)."""
    ds = ASRDataset(None, features, None)
    total, total_sq, n = 0.0, 0.0, 0
    for i, cut in enumerate(cuts):
        if i >= max_cuts:
            break
        try:
            f = torch.from_numpy(ds.load_features(cut)).double()
        except Exception:
            continue
        total = total + f.sum(0)
        total_sq = total_sq + (f * f).sum(0)
        n += f.shape[0]
    if n == 0:
        raise ValueError("no readable training audio to compute feature statistics from")
    mean = total / n
    std = (total_sq / n - mean * mean).clamp_min(1e-6).sqrt()
    return mean.float(), std.float()


@torch.no_grad()
def evaluate(model: ASRModel, loader, max_batches: int | None = None, progress: bool = False, desc: str = "decode") -> dict:
    """Loss and greedy WER over a loader. Returns a dict with 'loss', 'wer', 'results'."""
    model.eval()
    wer = WER()
    loss_sum, tokens = 0.0, 0
    results = []
    skipped: Counter = Counter()
    device = model.feat_mean.device
    frames = 0
    t0 = time.perf_counter()
    audio_seconds = 0.0
    for i, batch in enumerate(tqdm(loader, desc=desc, disable=not progress, leave=False)):
        if max_batches is not None and i >= max_batches:
            break
        skipped.update(batch["skipped"])
        if not batch["cut_ids"]:
            continue
        x, lens = batch["features"].to(device), batch["feature_lens"].to(device)
        audio_seconds += float(lens.sum()) * model.features.frame_shift
        out = model(x, lens, batch["tokens"])
        loss_sum += float(out["loss_sum"])
        tokens += out["tokens"]
        frames += out["frames"]
        for cid, ref, hyp in zip(batch["cut_ids"], batch["texts"], model.decode(x, lens)):
            text = model.tokenizer.decode(hyp.tokens)
            s, d, ins = wer.add(ref, text)
            results.append({"id": cid, "ref": ref, "hyp": text, "sub": s, "del": d, "ins": ins})
    elapsed = time.perf_counter() - t0
    model.train()
    return {
        "loss": loss_sum / max(1, tokens),
        "wer": wer.wer,
        "wer_detail": wer.as_dict(),
        "results": results,
        "skipped": dict(skipped),
        "rtfx": audio_seconds / max(elapsed, 1e-9),
    }


class Trainer:
    def __init__(self, cfg: TrainConfig, progress: bool = True):
        self.cfg = cfg
        self.progress = progress
        self.exp = Path(cfg.exp_dir)
        self.ckpt_dir = self.exp / "checkpoints"
        self.exp.mkdir(parents=True, exist_ok=True)
        if cfg.threads > 0:
            torch.set_num_threads(cfg.threads)
        # Tiny float32 gradients become denormals, which make CPU matmuls several times slower.
        torch.set_flush_denormal(True)
        dev = cfg.device
        self.device = torch.device("cuda" if dev == "auto" and torch.cuda.is_available() else ("cpu" if dev == "auto" else dev))
        self.tokenizer = Tokenizer.load(cfg.data.tokenizer)
        self.metrics_path = self.exp / "metrics.jsonl"

    # ------------------------------------------------------------------ setup
    def _seed(self, seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)

    def _log_metrics(self, record: dict) -> None:
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            step = record.get("step", 0)
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("step", "epoch"):
                    self.tb.add_scalar(f"{record.get('kind', 'train')}/{k}", v, step)

    def _checkpoints(self) -> list[Path]:
        return sorted(self.ckpt_dir.glob("ckpt-*.pt"), key=lambda p: int(p.stem.split("-")[1]))

    def _save(self, epoch: int, batch_in_epoch: int, tag: str | None = None) -> None:
        state = {
            "model": self.model.to_checkpoint(),
            "optimizer": self.opt.state_dict(),
            "step": self.step,
            "epoch": epoch,
            "batch_in_epoch": batch_in_epoch,
            "rng": {
                "python": random.getstate(),
                "numpy": np.random.get_state(),
                "torch": torch.get_rng_state(),
            },
            "train_seconds": self.train_seconds,
            "wall_seconds": self.wall_seconds,
        }
        path = self.ckpt_dir / f"ckpt-{self.step}.pt"
        # python/numpy RNG states are tuples of ints and arrays: store them as tensors/lists
        state["rng"] = _rng_to_tensors(state["rng"])
        save_atomic(state, path)
        if tag is not None:
            save_atomic({**state["model"], "meta": {"epoch": epoch, "step": self.step}}, self.ckpt_dir / f"{tag}.pt")
        for old in self._checkpoints()[: -self.cfg.keep_last]:
            old.unlink(missing_ok=True)
        keep_epochs = max(self.cfg.keep_last, self.cfg.average_last)
        epochs = sorted(self.ckpt_dir.glob("epoch-*.pt"), key=lambda p: int(p.stem.split("-")[1]))
        for old in epochs[:-keep_epochs]:
            old.unlink(missing_ok=True)

    def _try_resume(self) -> tuple[int, int]:
        for path in reversed(self._checkpoints()):
            try:
                state = read_checkpoint(path)
                self.model.load_state_dict(state["model"]["state_dict"])
                self.opt.load_state_dict(state["optimizer"])
            except Exception as e:
                log.warning("cannot resume from %s (%s); trying the previous checkpoint", path, e)
                continue
            self.step = int(state["step"])
            self.train_seconds = float(state.get("train_seconds", 0.0))
            self.wall_seconds = float(state.get("wall_seconds", 0.0))
            _rng_from_tensors(state["rng"])
            log.info("resumed from %s: epoch %d, batch %d, step %d", path, state["epoch"], state["batch_in_epoch"], self.step)
            return int(state["epoch"]), int(state["batch_in_epoch"])
        return 1, 0

    # ------------------------------------------------------------------ run
    def run(self) -> ASRModel:
        cfg = self.cfg
        self._seed(cfg.seed)
        save_yaml(cfg, self.exp / "config.yaml")
        train_cuts = _load_cuts(cfg.data.train, cfg.data.max_cut_duration)
        dev_sets = {Path(p).name.replace("cuts_", "").split(".")[0]: _load_cuts([p]) for p in cfg.data.dev}
        log.info("training on %d cuts (%.2f h)", len(train_cuts), sum(c.duration for c in train_cuts) / 3600)

        self.model = ASRModel(cfg.model, cfg.features, self.tokenizer).to(self.device)
        mean, std = feature_stats(train_cuts, cfg.features)
        self.model.set_feature_stats(mean.to(self.device), std.to(self.device))
        n_params = sum(p.numel() for p in self.model.parameters())
        log.info("model: %s encoder + %s head, %.2fM parameters", cfg.model.encoder, cfg.model.head, n_params / 1e6)

        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.optim.lr, betas=cfg.optim.betas, weight_decay=cfg.optim.weight_decay)
        self.step = 0
        self.train_seconds = 0.0
        self.wall_seconds = 0.0
        start_epoch, skip_batches = self._try_resume()

        from torch.utils.tensorboard import SummaryWriter

        self.tb = SummaryWriter(str(self.exp / "tensorboard"))
        dataset = ASRDataset(self.tokenizer, cfg.features, cfg.data.augment, seed=cfg.seed)
        eval_dataset = ASRDataset(self.tokenizer, cfg.features, None)
        sampler = make_sampler(train_cuts, cfg.data.sampler, train=True, seed=cfg.seed)
        sorted_sampler = None
        if cfg.data.sortagrad_epochs > 0:
            sorted_sampler = make_sampler(train_cuts.sort_by_duration(ascending=True), cfg.data.sampler, train=False)
        bad_in_a_row = 0
        budget = cfg.max_minutes * 60 if cfg.max_minutes > 0 else math.inf
        wall0 = time.perf_counter() - self.wall_seconds  # resumed runs keep their spent time
        stop = False
        epoch = start_epoch
        for epoch in range(start_epoch, cfg.max_epochs + 1):
            epoch_sampler = sorted_sampler if epoch <= cfg.data.sortagrad_epochs else sampler
            epoch_sampler.set_epoch(epoch)
            batches = _SkipFirst(epoch_sampler, skip_batches)
            loader = make_loader(dataset, batches, cfg.data.sampler.num_workers)
            stats = Counter()
            skipped = Counter()
            t_epoch = time.perf_counter()
            pbar = tqdm(loader, desc=f"epoch {epoch}", disable=not self.progress, dynamic_ncols=True)
            batch_idx = skip_batches
            skip_batches = 0
            for batch in pbar:
                batch_idx += 1
                t0 = time.perf_counter()
                skipped.update(batch["skipped"])
                if not batch["cut_ids"]:
                    continue
                x = batch["features"].to(self.device)
                lens = batch["feature_lens"].to(self.device)
                stats["frames"] += int(lens.sum())
                stats["padded_frames"] += int(x.shape[0] * x.shape[1])
                out = self.model(x, lens, batch["tokens"])
                n_bad = int(out["unalignable"].sum())
                if n_bad:
                    skipped["unalignable"] += n_bad
                loss = out["loss"] / cfg.optim.accum_grad
                if not torch.isfinite(loss):
                    bad_in_a_row += 1
                    skipped["nonfinite_loss_batches"] += 1
                    log.warning("step %d: loss is %s; batch skipped (%d in a row)", self.step, float(loss), bad_in_a_row)
                    self.opt.zero_grad(set_to_none=True)
                    if bad_in_a_row >= cfg.max_bad_steps:
                        raise RuntimeError(f"{bad_in_a_row} non-finite losses in a row: stopping (lower the lr?)")
                    continue
                loss.backward()
                stats["micro"] += 1
                stats["loss_sum"] += float(out["loss_sum"])
                stats["tokens"] += out["tokens"]
                if stats["micro"] % cfg.optim.accum_grad:
                    continue
                grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optim.grad_clip)
                if not torch.isfinite(grad_norm):
                    bad_in_a_row += 1
                    skipped["nonfinite_grad_batches"] += 1
                    log.warning("step %d: gradient norm is %s; update skipped", self.step, float(grad_norm))
                    self.opt.zero_grad(set_to_none=True)
                    if bad_in_a_row >= cfg.max_bad_steps:
                        raise RuntimeError(f"{bad_in_a_row} non-finite gradients in a row: stopping")
                    continue
                bad_in_a_row = 0
                self.step += 1
                lr = lr_at(self.step, cfg.optim)
                for g in self.opt.param_groups:
                    g["lr"] = lr
                self.opt.step()
                self.opt.zero_grad(set_to_none=True)
                self.train_seconds += time.perf_counter() - t0
                if self.step % cfg.log_every == 0:
                    rec = {"kind": "train", "epoch": epoch, "step": self.step, "loss": float(out["loss"].detach()), "lr": lr, "grad_norm": float(grad_norm)}
                    self._log_metrics(rec)
                    pbar.set_postfix(loss=f"{rec['loss']:.3f}", lr=f"{lr:.2e}")
                if cfg.save_every_steps and self.step % cfg.save_every_steps == 0:
                    self._save(epoch, batch_idx)
                self.wall_seconds = time.perf_counter() - wall0
                if (cfg.max_steps and self.step >= cfg.max_steps) or self.wall_seconds >= budget:
                    stop = True
                    break
            last = stop or epoch == cfg.max_epochs
            pad = 1.0 - stats["frames"] / max(1, stats["padded_frames"])
            train_loss = stats["loss_sum"] / max(1, stats["tokens"])
            rec = {"kind": "epoch", "epoch": epoch, "step": self.step, "train_loss": train_loss, "padding_fraction": pad,
                   "epoch_seconds": time.perf_counter() - t_epoch, "skipped": dict(skipped)}
            msg = f"epoch {epoch}: train loss {train_loss:.3f}, padding {100 * pad:.1f}%"
            for name, cuts in dev_sets.items() if last or epoch % cfg.valid_every_epochs == 0 else ():
                ev = evaluate(self.model, make_loader(eval_dataset, make_sampler(cuts.subset(first=min(len(cuts), cfg.data.dev_max_cuts)), cfg.data.sampler, train=False)))
                rec[f"{name}_loss"] = ev["loss"]
                rec[f"{name}_wer"] = ev["wer"]
                msg += f", {name} loss {ev['loss']:.3f} WER {ev['wer']:.2f}%"
            if skipped:
                msg += f", skipped {dict(skipped)}"
            log.info(msg)
            self._log_metrics(rec)
            self.wall_seconds = time.perf_counter() - wall0
            rec["wall_seconds"] = round(self.wall_seconds, 1)
            if last or epoch % cfg.save_every_epochs == 0:
                self._save(epoch + 1, 0, tag=f"epoch-{epoch}")
            if stop:
                break
        self.tb.close()
        final = self._final_model(epoch)
        final.save(self.exp / "model.pt", meta={"epochs": epoch, "steps": self.step, "train_seconds": round(self.train_seconds, 1), "wall_seconds": round(self.wall_seconds, 1)})
        plot_curves(self.metrics_path, self.exp / "curves.png")
        log.info("wrote %s and %s", self.exp / "model.pt", self.exp / "curves.png")
        return final

    def _final_model(self, last_epoch: int) -> ASRModel:
        n = max(1, self.cfg.average_last)
        paths = [self.ckpt_dir / f"epoch-{e}.pt" for e in range(last_epoch - n + 1, last_epoch + 1)]
        paths = [p for p in paths if p.is_file()]
        if len(paths) <= 1:
            return self.model.cpu().eval()
        avg = None
        for p in paths:
            sd = read_checkpoint(p)["state_dict"]
            avg = {k: v.double().clone() for k, v in sd.items()} if avg is None else {k: avg[k] + sd[k].double() for k in avg}
        ref = self.model.state_dict()
        self.model.load_state_dict({k: (v / len(paths)).to(ref[k].dtype) for k, v in avg.items()})
        log.info("final model: average of %s", ", ".join(p.stem for p in paths))
        return self.model.cpu().eval()


class _SkipFirst:
    """Iterates a sampler, dropping its first ``n`` batches (mid-epoch resume)."""

    def __init__(self, sampler, n: int):
        self.sampler, self.n = sampler, n

    def __iter__(self):
        for i, batch in enumerate(self.sampler):
            if i >= self.n:
                yield batch


def _rng_to_tensors(rng: dict) -> dict:
    py = rng["python"]
    np_state = rng["numpy"]
    return {
        "python": [py[0], torch.tensor(py[1], dtype=torch.int64), py[2]],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": rng["torch"],
    }


def _rng_from_tensors(rng: dict) -> None:
    py = rng["python"]
    random.setstate((py[0], tuple(int(v) for v in py[1].tolist()), py[2]))
    n = rng["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(rng["torch"])


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
        for key in sorted(k for k in epochs[-1] if k.endswith("_loss") and k != "train_loss"):
            ax1.plot([r["step"] for r in epochs], [r.get(key) for r in epochs], "s-", label=key.replace("_loss", ""))
        for key in sorted(k for k in epochs[-1] if k.endswith("_wer")):
            ax2.plot([r["step"] for r in epochs], [r.get(key) for r in epochs], "o-", label=key.replace("_wer", ""))
    ax1.set_xlabel("step"), ax1.set_ylabel("loss per token"), ax1.set_yscale("log"), ax1.legend(), ax1.grid(alpha=0.3)
    ax2.set_xlabel("step"), ax2.set_ylabel("WER %"), ax2.legend() if epochs else None, ax2.grid(alpha=0.3)
    ax1.set_title("loss"), ax2.set_title("validation WER (greedy)")
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
