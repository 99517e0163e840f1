"""Batches for training and evaluation: lhotse samplers, on-the-fly fbank, augmentation.

A lhotse sampler yields CutSets; ``ASRDataset`` turns each into a padded feature batch. Audio is
loaded per cut (lhotse resamples lazily to the feature rate), downmixed to mono, optionally
speed-perturbed and mixed with noise at a random SNR, turned into 80-bin fbank, and
SpecAugment-ed. A cut whose audio cannot be read or is not finite is skipped and counted in the
batch's ``"skipped"`` field; the trainer sums those counts and logs them.

Reproducible augmentation: the trainer hands the dataset ``SeededCuts(cuts, seed)`` instead of a
bare CutSet, with a seed derived from (run seed, epoch, batch index, rank). Every random draw of
that batch's augmentation (speed, noise choice/SNR/offset, SpecAugment's masks) then comes from
that seed alone, inside the batch, with the caller's global RNG states left untouched. So a batch
looks the same whether it is made in the main process or in any data-loader worker, and whether
or not the batches before it were made at all (a resumed run skips them).
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from lhotse import CutSet
from lhotse.dataset import DynamicBucketingSampler, DynamicCutSampler, SimpleCutSampler
from lhotse.dataset.cut_transforms import CutMix, PerturbSpeed
from lhotse.dataset.signal_transforms import SpecAugment

from .features import FeatureConfig
from .tokenizer import Tokenizer

__all__ = ["ASRDataset", "AugmentConfig", "SamplerConfig", "SeededCuts", "batch_seed", "load_noise_cuts", "make_loader", "make_sampler"]

log = logging.getLogger(__name__)


@dataclass
class AugmentConfig:
    speed_factors: list[float] = field(default_factory=lambda: [0.9, 1.1])
    speed_prob: float = 0.0  # probability a cut is speed-perturbed (0 = off)
    noise_manifest: str | None = None  # a lhotse RecordingSet/CutSet of noise (mini corpus, MUSAN)
    noise_prob: float = 0.0
    noise_snr: tuple[float, float] = (10.0, 20.0)
    spec_augment: bool = True
    num_feature_masks: int = 2
    feature_mask_size: int = 15
    num_frame_masks: int = 4
    frame_mask_size: int = 40
    max_frames_mask_fraction: float = 0.15
    time_warp_factor: int = 0


@dataclass
class SamplerConfig:
    max_duration: float = 200.0  # seconds of audio per batch
    num_buckets: int = 10
    shuffle: bool = True
    drop_last: bool = False
    num_workers: int = 1


def load_noise_cuts(path: str | Path) -> CutSet:
    """A CutSet of noise from a lhotse RecordingSet or CutSet manifest."""
    from lhotse import RecordingSet, load_manifest

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"noise manifest not found: {path}")
    m = load_manifest(path)
    if isinstance(m, RecordingSet):
        m = CutSet.from_manifests(recordings=m)
    if not isinstance(m, CutSet) or len(m) == 0:
        raise ValueError(f"{path}: expected a non-empty RecordingSet or CutSet of noise")
    return m.to_eager()


class SeededCuts(NamedTuple):
    """One sampler batch and the seed of all its augmentation draws (see the module doc)."""

    cuts: CutSet
    seed: int


def batch_seed(*key: int) -> int:
    """A well-mixed 63-bit seed from integers, e.g. ``batch_seed(seed, epoch, index, rank)``."""
    return int(np.random.SeedSequence([int(k) % 2**63 for k in key]).generate_state(2, np.uint64)[0] >> np.uint64(1))


@contextmanager
def _isolated_global_rng(seed: int):
    """Seed python's, numpy's and torch's global CPU RNGs for the body, then put back the
    states they had (lhotse's SpecAugment draws from the global generators)."""
    py, nps, ts = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.default_generator.manual_seed(seed)  # the CPU's only: torch.manual_seed would reseed the GPUs' (dropout) too
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(nps)
        torch.set_rng_state(ts)


class ASRDataset(torch.utils.data.Dataset):
    """Maps a CutSet (one batch from a sampler) to padded features and token ids.

    The item is a CutSet (augmentation draws from the dataset's own generator, seeded once) or a
    ``SeededCuts`` (every draw derived from its seed: reproducible, see the module doc).

    Returns a dict:
        features: (B, T, F) float32, zero-padded
        feature_lens: (B,) int64
        tokens: list of B lists of token ids
        texts: list of B reference strings
        cut_ids: list of B cut ids
        skipped: dict reason -> count of cuts dropped from this batch
    """

    def __init__(
        self,
        tokenizer: Tokenizer | None,
        features: FeatureConfig = FeatureConfig(),
        augment: AugmentConfig | None = None,
        seed: int = 0,
    ):
        self.tokenizer = tokenizer
        self.features = features
        self.augment = augment
        self.noise = None
        self.spec_augment = None
        if augment is not None:
            if augment.noise_prob > 0:
                if not augment.noise_manifest:
                    raise ValueError("augment.noise_prob > 0 needs augment.noise_manifest (a noise RecordingSet)")
                self.noise = load_noise_cuts(augment.noise_manifest)
            elif augment.noise_manifest:
                log.warning("augment.noise_manifest %s is set but augment.noise_prob is 0: no noise is mixed in",
                            augment.noise_manifest)
            if augment.spec_augment:
                self.spec_augment = SpecAugment(
                    time_warp_factor=augment.time_warp_factor or None,
                    num_feature_masks=augment.num_feature_masks,
                    features_mask_size=augment.feature_mask_size,
                    num_frame_masks=augment.num_frame_masks,
                    frames_mask_size=augment.frame_mask_size,
                    max_frames_mask_fraction=augment.max_frames_mask_fraction,
                )
        self.cut_transforms = self._cut_transforms(random.Random(seed))

    def _cut_transforms(self, rng: random.Random) -> list:
        """Speed perturbation and noise mixing, both drawing from ``rng``."""
        aug, out = self.augment, []
        if aug is None:
            return out
        if aug.speed_prob > 0:
            out.append(PerturbSpeed(factors=aug.speed_factors, p=aug.speed_prob, randgen=rng))
        if self.noise is not None:
            out.append(CutMix(cuts=self.noise, snr=aug.noise_snr, p=aug.noise_prob, seed=rng, random_mix_offset=True))
        return out

    def load_features(self, cut) -> np.ndarray:
        """One cut's (T, F) features; raises ValueError when its audio is unusable."""
        audio = cut.load_audio()
        audio = np.asarray(audio, dtype=np.float32)
        if audio.ndim == 2:
            audio = audio.mean(axis=0) if audio.shape[0] > 1 else audio[0]
        if audio.size == 0:
            raise ValueError("empty audio")
        if not np.isfinite(audio).all():
            raise ValueError("audio has NaN or inf samples")
        from serve.features import SAMPLE_LIMIT  # numpy only (serve/__init__ imports no onnxruntime)

        peak = float(np.abs(audio).max())
        if peak > SAMPLE_LIMIT:  # what inference refuses (integer PCM stored as floats?)
            raise ValueError(f"samples beyond +-{SAMPLE_LIMIT:g} (peak {peak:.4g}): not float audio in [-1, 1]")
        if audio.size < self.features.window_samples:
            raise ValueError("audio shorter than one feature window")
        return self.features.compute(audio)

    def __getitem__(self, item: CutSet | SeededCuts) -> dict:
        if isinstance(item, SeededCuts):
            with _isolated_global_rng(item.seed):
                return self._batch(item.cuts, self._cut_transforms(random.Random(item.seed)))
        return self._batch(item, self.cut_transforms)

    def _batch(self, cuts: CutSet, cut_transforms: list) -> dict:
        for tf in cut_transforms:
            cuts = tf(cuts)
        skipped: Counter = Counter()
        feats, texts, ids = [], [], []
        for cut in cuts:
            try:
                f = self.load_features(cut)
            except Exception as e:
                reason = ("nonfinite_audio" if "NaN" in str(e) else "unnormalized_audio" if "beyond +-" in str(e)
                          else "unreadable_audio")
                skipped[reason] += 1
                log.warning("skipping cut %s: %s: %s", cut.id, type(e).__name__, e)
                continue
            feats.append(torch.from_numpy(f))
            texts.append(cut.supervisions[0].text if cut.supervisions else "")
            ids.append(cut.id)
        lens = torch.tensor([f.shape[0] for f in feats], dtype=torch.int64)
        F = self.features.num_mel_bins
        x = torch.zeros(len(feats), int(lens.max()) if feats else 0, F)
        for i, f in enumerate(feats):
            x[i, : f.shape[0]] = f
        if self.spec_augment is not None and len(feats):
            x = self.spec_augment(x)
            for i, n in enumerate(lens.tolist()):  # masks must not write into padding
                x[i, n:] = 0
        tokens = self.tokenizer.encode_batch(texts) if self.tokenizer is not None else []
        return {"features": x, "feature_lens": lens, "tokens": tokens, "texts": texts, "cut_ids": ids, "skipped": dict(skipped)}


def make_sampler(cuts: CutSet, cfg: SamplerConfig, train: bool, seed: int = 0, world_size: int | None = None, rank: int | None = None,
                 by_duration: bool = True):
    """Training: ``DynamicBucketingSampler`` by duration (rank-aware). Evaluation: longest cuts
    first (``by_duration``; else in the given order), so that a batch holds cuts of similar
    length: on the mini test set a third of a manifest-order batch was padding, 8% sorted. The
    longest batch comes first, so one that does not fit in memory fails at once."""
    if train:
        import warnings

        warnings.filterwarnings("ignore", message="You are using Dynamic(Bucketing|Cut)Sampler with an eagerly read CutSet")
        common = dict(max_duration=cfg.max_duration, shuffle=cfg.shuffle, drop_last=cfg.drop_last, seed=seed,
                      world_size=world_size, rank=rank)
        buckets = min(cfg.num_buckets, len(cuts))
        if buckets < 2:  # one bucket (asked for, or one cut): no bucketing, which lhotse's needs 2 for
            return DynamicCutSampler(cuts, **common)
        return DynamicBucketingSampler(cuts, num_buckets=buckets, **common,
                                       num_cuts_for_bins_estimate=min(len(cuts), 10000))
    if by_duration:
        cuts = cuts.sort_by_duration(ascending=False)
    return SimpleCutSampler(cuts, max_duration=cfg.max_duration, shuffle=False, world_size=world_size, rank=rank)


def make_loader(dataset: ASRDataset, sampler, num_workers: int = 0, pin_memory: bool = False) -> torch.utils.data.DataLoader:
    """A DataLoader over a sampler's batches. It has a generator of its own: starting one draws
    its worker base seed from that, not from torch's global RNG (which exact resume restores).
    ``pin_memory`` (for a CUDA device) lets the trainer's host-to-device copies run asynchronously."""
    return torch.utils.data.DataLoader(
        dataset,
        sampler=sampler,
        batch_size=None,
        num_workers=num_workers,
        persistent_workers=False,
        pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(0),
        worker_init_fn=_ignore_interrupts if num_workers else None,
    )


def _ignore_interrupts(worker_id: int) -> None:
    """Data-loader workers ignore Ctrl-C (the terminal sends it to the whole process group): the
    trainer stops them itself after saving a checkpoint at the next step. SIGTERM gets its
    default action back (a forked worker would inherit the trainer's handler)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
