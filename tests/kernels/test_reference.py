"""The references against brute-force enumeration of every alignment."""

from __future__ import annotations

import math

import pytest
import torch

from kernels.reference import rnnt_bruteforce, rnnt_loss_reference, tdt_bruteforce, tdt_loss_reference


@pytest.mark.parametrize("T,U", [(1, 0), (1, 2), (3, 0), (3, 2), (2, 4), (4, 3)])
def test_rnnt_reference_equals_enumeration(T: int, U: int) -> None:
    g = torch.Generator().manual_seed(T * 10 + U)
    logits = torch.randn(1, T, U + 1, 5, generator=g, dtype=torch.float64)
    targets = torch.randint(1, 5, (1, U), generator=g)
    ref = rnnt_loss_reference(logits, targets, torch.tensor([T]), torch.tensor([U]), reduction="none")
    assert math.isclose(float(ref[0]), rnnt_bruteforce(logits[0], targets[0].tolist()), rel_tol=1e-12)


@pytest.mark.parametrize("durations", [[0, 1, 2], [1, 2], [0, 2, 3], [0, 1, 2, 3, 4]])
@pytest.mark.parametrize("T,U", [(1, 0), (1, 1), (3, 2), (4, 3), (2, 4)])
def test_tdt_reference_equals_enumeration(durations: list[int], T: int, U: int) -> None:
    g = torch.Generator().manual_seed(T * 10 + U)
    V = 4
    logits = torch.randn(1, T, U + 1, V + len(durations), generator=g, dtype=torch.float64)
    targets = torch.randint(1, V, (1, U), generator=g)
    ref = tdt_loss_reference(logits, targets, torch.tensor([T]), torch.tensor([U]), durations, sigma=0.05,
                             reduction="none")
    brute = tdt_bruteforce(logits[0], targets[0].tolist(), durations, sigma=0.05)
    if math.isinf(brute):
        assert math.isinf(float(ref[0]))
    else:
        assert math.isclose(float(ref[0]), brute, rel_tol=1e-12)


@pytest.mark.parametrize("durations", [[0, 1, 2, 3], [1, 2, 4]])
@pytest.mark.parametrize("T,U", [(3, 1), (5, 2), (6, 3)])
def test_tdt_reference_with_blank_stops_equals_enumeration(durations: list[int], T: int, U: int) -> None:
    """Blank stops drop exactly the alignments with a blank landing past its frame's stop, and
    the loss rises by what they carried."""
    g = torch.Generator().manual_seed(T * 7 + U)
    V = 4
    logits = torch.randn(1, T, U + 1, V + len(durations), generator=g, dtype=torch.float64)
    targets = torch.randint(1, V, (1, U), generator=g)
    stops = torch.arange(T)[None, :] + torch.randint(1, 3, (1, T), generator=g)
    stops[0, :2] = torch.tensor([1, 2])  # the blanks of frames 0 and 1 longer than one frame are cut
    args = (logits, targets, torch.tensor([T]), torch.tensor([U]), durations)
    ref = tdt_loss_reference(*args, sigma=0.05, reduction="none", blank_stops=stops)
    brute = tdt_bruteforce(logits[0], targets[0].tolist(), durations, sigma=0.05, blank_stops=stops[0].tolist())
    assert math.isclose(float(ref[0]), brute, rel_tol=1e-12)
    free = tdt_bruteforce(logits[0], targets[0].tolist(), durations, sigma=0.05)
    assert brute > free + 1e-9  # some alignment jumped past a stop
    open_stops = torch.full((1, T), T + max(durations))
    assert math.isclose(float(tdt_loss_reference(*args, sigma=0.05, reduction="none", blank_stops=open_stops)[0]),
                        free, rel_tol=1e-12)


def test_tdt_impossible_lattice_is_inf() -> None:
    # durations [2] only: a blank from t=0 lands on t=2, so T=3 is never reached exactly.
    logits = torch.randn(1, 3, 1, 4 + 1, dtype=torch.float64)
    assert math.isinf(tdt_bruteforce(logits[0], [], [2]))
    ref = tdt_loss_reference(logits, torch.zeros(1, 0, dtype=torch.long), torch.tensor([3]), torch.tensor([0]), [2])
    assert math.isinf(float(ref))
