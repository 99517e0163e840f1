"""Input validation shared by every loss. Each check raises a ValueError naming the bad value."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
INT_DTYPES = (torch.int32, torch.int64)
REDUCTIONS = ("none", "sum", "mean")


def check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction={reduction!r} is not one of {REDUCTIONS}")


def check_same_device(**tensors: Tensor) -> None:
    for name, t in tensors.items():
        if t is not None and not isinstance(t, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    devices = {name: t.device for name, t in tensors.items() if t is not None}
    if len(set(devices.values())) > 1:
        listing = ", ".join(f"{name} on {dev}" for name, dev in devices.items())
        raise ValueError(f"all tensors must be on one device, got {listing}")


def check_index(name: str, value, what: str) -> None:
    """A Python or numpy integer (not a bool, not 1.5); ``what`` says what it counts."""
    if isinstance(value, bool) or not hasattr(type(value), "__index__"):
        raise ValueError(f"{name} must be {what}, got {value!r}")


def check_float(name: str, x: Tensor, ndim: int) -> None:
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{name}.dtype = {x.dtype}; expected one of float16, bfloat16, float32, float64")
    if x.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(x.shape)}")


def check_int(name: str, x: Tensor, ndim: int) -> None:
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in INT_DTYPES:
        raise ValueError(f"{name}.dtype = {x.dtype}; expected torch.int32 or torch.int64")
    if x.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(x.shape)}")


def check_targets_and_lengths(
    targets: Tensor,
    logit_lengths: Tensor,
    target_lengths: Tensor,
    B: int,
    T: int,
    U: int,
    V: int,
    blank: int,
    *,
    lengths_name: str = "logit_lengths",
) -> None:
    """targets (B, U) int; logit_lengths, target_lengths (B,) int; V = number of tokens."""
    check_int("targets", targets, 2)
    check_int(lengths_name, logit_lengths, 1)
    check_int("target_lengths", target_lengths, 1)
    if targets.shape[0] != B:
        raise ValueError(f"targets.shape[0] = {targets.shape[0]} does not match the batch size {B}")
    if targets.shape[1] != U:
        raise ValueError(
            f"targets.shape[1] = {targets.shape[1]} must equal U = {U} (the lattice has U+1 label positions)"
        )
    for name, x in ((lengths_name, logit_lengths), ("target_lengths", target_lengths)):
        if x.shape[0] != B:
            raise ValueError(f"{name}.shape = {tuple(x.shape)} does not match the batch size {B}")
    check_index("blank", blank, "an int token id")
    if not 0 <= blank < V:
        raise ValueError(f"blank = {blank} is out of range [0, {V}) for a vocabulary of {V} tokens")
    ll = logit_lengths.detach().cpu().long()
    tl = target_lengths.detach().cpu().long()
    for b in range(B):
        if ll[b] > T:
            raise ValueError(f"{lengths_name}[{b}] = {int(ll[b])} is larger than the time dimension T = {T}")
        if ll[b] < 1:
            raise ValueError(f"{lengths_name}[{b}] = {int(ll[b])}; every utterance needs at least one frame")
        if tl[b] > U:
            raise ValueError(f"target_lengths[{b}] = {int(tl[b])} is larger than targets.shape[1] = {U}")
        if tl[b] < 0:
            raise ValueError(f"target_lengths[{b}] = {int(tl[b])} is negative")
    if U > 0:
        tg = targets.detach().cpu().long()
        valid = torch.arange(U)[None, :] < tl[:, None]
        bad_blank = valid & (tg == blank)
        if bad_blank.any():
            b, u = (int(i) for i in bad_blank.nonzero()[0])
            raise ValueError(f"targets[{b}, {u}] = {blank} equals the blank id; targets must not contain blank")
        bad_range = valid & ((tg < 0) | (tg >= V))
        if bad_range.any():
            b, u = (int(i) for i in bad_range.nonzero()[0])
            raise ValueError(f"targets[{b}, {u}] = {int(tg[b, u])} is out of range [0, {V})")


def check_durations(durations: Sequence[int]) -> list[int]:
    if durations is None or len(durations) == 0:
        raise ValueError("durations must be a non-empty list of non-negative ints, e.g. [0, 1, 2, 3, 4]")
    out = []
    for i, d in enumerate(durations):
        if int(d) != d or d < 0:
            raise ValueError(f"durations[{i}] = {d!r} must be a non-negative integer")
        out.append(int(d))
    if len(set(out)) != len(out):
        raise ValueError(f"durations = {out} contains repeated values")
    if max(out) < 1:
        raise ValueError(f"durations = {out} needs at least one value > 0 (a blank must advance time)")
    return out


def check_blank_stops(blank_stops: Tensor | None, B: int, T: int, like: Tensor, tdt: bool = True) -> Tensor | None:
    """A TDT loss's ``blank_stops``: (B, T) ints on ``like``'s device, as contiguous int64;
    refused for an RNN-T (``tdt`` False)."""
    if blank_stops is None:
        return None
    if not tdt:
        raise ValueError("blank_stops limits TDT blank jumps; pass durations (an RNN-T blank always moves one frame)")
    check_int("blank_stops", blank_stops, 2)
    if tuple(blank_stops.shape) != (B, T):
        raise ValueError(f"blank_stops.shape = {tuple(blank_stops.shape)}; expected ({B}, {T}), one per frame")
    check_same_device(blank_stops=blank_stops, logits=like)
    return blank_stops.to(torch.int64).contiguous()


def check_finite_number(name: str, value: float) -> float:
    value = float(value)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"{name} = {value} must be a finite number")
    return value


def check_s_begin(s_begin: Tensor) -> None:
    """Pruned losses' window starts: label positions, so >= 0."""
    if s_begin.numel() and int(s_begin.min()) < 0:
        raise ValueError(f"s_begin holds {int(s_begin.min())}: window starts are label positions >= 0")
