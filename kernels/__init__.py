"""Transducer losses: exact reference, numba (CPU), Triton (GPU), fused joint+loss, pruned.

Public API (see kernels/README.md):
    rnnt_loss, tdt_loss                 losses over materialized logits (B, T, U+1, V [+ D])
    fused_transducer_loss               joint + loss without building the logits
    pruned_rnnt_loss                    k2-style simple loss + pruned exact loss, one call
                                        (the pruned TDT loss with durations=)
    rnnt_loss_simple, get_prune_ranges, prune_pred, rnnt_loss_pruned, tdt_loss_pruned   its pieces
    use_backend                         force "numba" or "triton" (tests)

Threads: numba's CPU kernels launch a pool of ``NUMBA_NUM_THREADS`` threads (numba's default:
every core) and run on as many of them as torch's intra-op pool has (``torch.get_num_threads()``).
When ``OMP_NUM_THREADS`` is set and ``NUMBA_NUM_THREADS`` is not, importing this package before
numba sets ``NUMBA_NUM_THREADS`` to the same number: torchrun sets ``OMP_NUM_THREADS=1`` for each
process, and two DDP processes on 2 cores, each with a 2-thread numba pool, spent most of every
step in the idle pool threads' OpenMP spin-waits (the mini Conformer: 4-10 s a step against 0.6 s).
"""

import os as _os
import sys as _sys

_omp = _os.environ.get("OMP_NUM_THREADS", "")
if "numba" not in _sys.modules and _omp.isascii() and _omp.isdigit() and "NUMBA_NUM_THREADS" not in _os.environ:
    _os.environ["NUMBA_NUM_THREADS"] = str(max(1, int(_omp)))

from ._backend import use_backend  # noqa: E402  (numba is imported from here on)
from .fused import fused_transducer_loss  # noqa: E402
from .losses import rnnt_loss, tdt_loss  # noqa: E402
from .pruned import (  # noqa: E402
    PrunedRNNTLoss,
    get_prune_ranges,
    prune_pred,
    pruned_rnnt_loss,
    rnnt_loss_pruned,
    rnnt_loss_simple,
    tdt_loss_pruned,
)

__all__ = [
    "rnnt_loss",
    "tdt_loss",
    "fused_transducer_loss",
    "pruned_rnnt_loss",
    "PrunedRNNTLoss",
    "rnnt_loss_simple",
    "get_prune_ranges",
    "prune_pred",
    "rnnt_loss_pruned",
    "tdt_loss_pruned",
    "use_backend",
]
