"""Transducer losses: exact reference, numba (CPU), Triton (GPU), fused joint+loss, pruned.

Public API (see kernels/README.md):
    rnnt_loss, tdt_loss                 losses over materialized logits (B, T, U+1, V [+ D])
    fused_transducer_loss               joint + loss without building the logits
    pruned_rnnt_loss                    k2-style simple loss + pruned exact loss, one call
                                        (the pruned TDT loss with durations=)
    rnnt_loss_simple, get_prune_ranges, prune_pred, rnnt_loss_pruned, tdt_loss_pruned   its pieces
    use_backend                         force "numba" or "triton" (tests)
"""

from ._backend import use_backend
from .fused import fused_transducer_loss
from .losses import rnnt_loss, tdt_loss
from .pruned import (
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
