"""What teaches a TDT blank jumps: the logit under-normalization ``sigma``.

A toy task where every label is held for 3-8 frames (its evidence on each of them) and a
bidirectional LSTM encoder sees all of it, so a blank may safely jump to the next label. The
TDT head and loss are the toolkit's own (``TransducerHead("tdt")``, ``kernels``); greedy search
counts its decisions. With sigma 0.02 (NeMo's hybrid default) the head learns to step every
blank frame by frame; with 0.05 it jumps them and decodes with far fewer joint calls. The mini
corpus's BPE Conformer showed the same (docs/mini_results.md, "Blank jumps come from
sigma").
"""

from __future__ import annotations

import random

import pytest
import torch
from torch import nn

from asr.decoding.bench import count_greedy_steps
from asr.decoding.transducer import greedy_search
from asr.heads.transducer import TransducerConfig, TransducerHead

V = 6  # blank + 5 labels


def _batch(n: int, rng: random.Random) -> tuple[torch.Tensor, torch.Tensor, list[list[int]]]:
    xs, ys = [], []
    for _ in range(n):
        y, rows = [], []
        for _ in range(rng.randint(4, 8)):
            label = rng.randint(1, V - 1)
            y.append(label)
            for i in range(rng.randint(3, 8)):  # the label's frames; the first one is marked
                row = [0.0] * (V + 1)
                row[label], row[V] = 1.0, float(i == 0)
                rows.append(row)
        xs.append(torch.tensor(rows) + 0.3 * torch.randn(len(rows), V + 1))
        ys.append(y)
    x = nn.utils.rnn.pad_sequence(xs, batch_first=True)
    return x, torch.tensor([len(v) for v in xs]), ys


class _Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(V + 1, 64, batch_first=True, bidirectional=True)
        self.out = nn.Linear(128, 64)

    def forward(self, x):
        return self.out(self.lstm(x)[0])


def _train_and_count(sigma: float, steps: int = 800) -> tuple[dict, int, int]:
    """Train a toy TDT at ``sigma``; its greedy decisions on 30 new utterances, the joint calls,
    and how many of those utterances it got wrong."""
    torch.manual_seed(0)
    rng = random.Random(0)
    enc = _Encoder()
    head = TransducerHead("tdt", 64, V, TransducerConfig(pred_dim=32, joint_dim=64, sigma=sigma, omega=0.0, dropout=0.0))
    opt = torch.optim.Adam([*enc.parameters(), *head.parameters()], 3e-3)
    for _ in range(steps):
        x, lens, ys = _batch(16, rng)
        loss, _ = head.loss(enc(x), lens, ys)
        opt.zero_grad()
        (loss.sum() / sum(map(len, ys))).backward()
        opt.step()
    enc.eval()
    head.eval()
    decisions: dict[str, int] = {}
    calls = wrong = 0
    with torch.no_grad():
        for _ in range(30):
            x, lens, ys = _batch(1, rng)
            e = enc(x)
            got = count_greedy_steps(head, e, lens)
            calls += got["joint_calls"]
            for k, n in got["decisions"].items():
                decisions[k] = decisions.get(k, 0) + n
            wrong += greedy_search(head, e, lens)[0][0].tokens != ys[0]
    return decisions, calls, wrong


@pytest.mark.slow
def test_sigma_teaches_a_tdt_blank_jumps():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same arithmetic on every machine
    try:
        low, low_calls, low_wrong = _train_and_count(0.02)
        high, high_calls, high_wrong = _train_and_count(0.05)
    finally:
        torch.set_num_threads(threads)

    def long_blanks(d):  # the share of blank decisions that jump 2 frames or more
        blanks = {k: n for k, n in d.items() if k.startswith("blank")}
        return sum(n for k, n in blanks.items() if k != "blank 1") / max(1, sum(blanks.values()))

    assert long_blanks(low) < 0.1, low
    assert long_blanks(high) > 0.5, high
    assert high_calls < 0.75 * low_calls, (high_calls, low_calls)
    assert low_wrong <= 10 and high_wrong <= 10, (low_wrong, high_wrong)  # both learned the task
