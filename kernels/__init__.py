"""Transducer losses: exact reference, numba (CPU), Triton (GPU), fused joint+loss, pruned."""
