"""Streaming encoders: chunk-by-chunk equals the whole utterance, padding never leaks,
bad input and bad state are clear ValueErrors. Tiny configs keep this fast on 2 cores."""

from __future__ import annotations

import pytest
import torch

from asr.encoders import build_encoder, stream
from asr.encoders.base import make_pad_mask
from asr.encoders.conformer import ConformerConfig

ATOL = 1e-4

pytestmark = [pytest.mark.filterwarnings("ignore:LSTM with projections"), pytest.mark.usefixtures("one_thread")]

# family -> tiny config (fast) for the exactness tests.
TINY: dict[str, dict] = {
    "lstm": dict(input_dim=20, input_size=24, hidden_size=32, proj_size=16, num_layers=2, chunk_size=3),
    "quartznet": dict(
        input_dim=20,
        num_blocks=2,
        repeat=2,
        channels=[16, 24],
        kernels=[5, 7],
        prologue_channels=16,
        prologue_kernel=5,
        epilogue_channels=[24, 32],
        epilogue_kernels=[5, 1],
        epilogue_dilations=[2, 1],
        chunk_size=3,
    ),
    "citrinet": dict(
        input_dim=20,
        channels=16,
        repeat=2,
        kernels=[[3, 5], [5], [7]],
        prologue_kernel=3,
        epilogue_channels=24,
        epilogue_kernel=5,
        se_window=6,
        se_reduction=4,
        chunk_size=2,
    ),
    "ssm": dict(
        input_dim=20,
        d_model=16,
        num_layers=2,
        d_state=4,
        expand=2,
        conv_kernel=3,
        subsampling=4,
        subsampling_channels=8,
        chunk_size=3,
    ),
    "conformer": dict(
        input_dim=20,
        d_model=32,
        num_layers=2,
        num_heads=4,
        conv_kernel=5,
        subsampling_channels=8,
        att_contexts=[[6, 0], [6, 1], [4, 3], [0, 2]],
        att_context_probs=[0.4, 0.3, 0.2, 0.1],
        inference_context=[6, 1],
    ),
}


def _available() -> list[str]:
    from asr.encoders.presets import FAMILIES

    out = []
    for name in TINY:
        try:
            FAMILIES[name]()
        except ImportError:
            continue
        out.append(name)
    return out


FAMS = _available()


def _batch(input_dim: int, lens: list[int], t: int | None = None, seed: int = 0,
           dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    t = t or max(lens)
    x = torch.randn(len(lens), t, input_dim, generator=g).to(dtype)
    return x, torch.tensor(lens, dtype=torch.int64)


def _tiny(name: str, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    enc = build_encoder(name, **{**TINY[name], **kw})
    for m in enc.modules():  # non-trivial BatchNorm statistics, as after training
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return enc.eval()


def _assert_valid_close(a: torch.Tensor, b: torch.Tensor, lens: torch.Tensor, atol: float = ATOL) -> None:
    n = int(lens.max())
    m = make_pad_mask(lens, n).unsqueeze(-1)
    diff = ((a[:, :n] - b[:, :n]).abs() * m).max().item()
    assert diff <= atol, f"max abs diff on valid frames {diff:.2e} > {atol}"


def _lens_for(enc) -> list[int]:
    p = enc.streaming_params()
    shift = p["shift"]
    # mixed lengths: not multiples of the window, one shorter than a window, one exact.
    return [3 * shift + 5, shift - 3 if shift > 3 else 1, 2 * shift, 1]


def _check_stream_equals_forward(enc, atol: float = ATOL, dtype: torch.dtype = torch.float32) -> None:
    """stream() == forward() on the valid frames, for lengths around the window size."""
    lens = _lens_for(enc)
    x, x_lens = _batch(enc.input_dim, lens, dtype=dtype)
    with torch.no_grad():
        y, y_lens = enc(x, x_lens)
        ys, ys_lens = stream(enc, x, x_lens)
    assert torch.equal(y_lens, ys_lens)
    assert torch.equal(y_lens, -(-x_lens // enc.subsampling))
    assert y.shape == (x.size(0), -(-x.size(1) // enc.subsampling), enc.output_dim)
    assert ys.shape == y.shape
    _assert_valid_close(y, ys, y_lens, atol)


@pytest.mark.parametrize("name", FAMS)
def test_interface_attributes(name):
    enc = _tiny(name)
    p = enc.streaming_params()
    for key in ("window", "shift", "lookahead", "chunk_size", "subsampling", "latency_ms"):
        assert key in p, key
    assert p["window"] == p["shift"] + p["lookahead"]
    assert p["shift"] == p["chunk_size"] * enc.subsampling
    assert isinstance(enc.subsampling, int) and isinstance(enc.output_dim, int)
    s1 = [s.shape for s in enc.init_state(1)]
    s3 = [s.shape for s in enc.init_state(3)]
    assert len(s1) == len(s3) > 0


@pytest.mark.parametrize("name", FAMS)
def test_stream_equals_forward(name):
    _check_stream_equals_forward(_tiny(name))


@pytest.mark.parametrize("name", FAMS)
def test_padding_does_not_leak(name):
    enc = _tiny(name)
    x, x_lens = _batch(enc.input_dim, [37, 20, 5])
    g = torch.Generator().manual_seed(1)
    garbage = torch.cat([x, 100 * torch.randn(x.size(0), 29, x.size(2), generator=g)], dim=1)
    # overwrite the padded tail of shorter utterances with garbage too
    garbage[1, 20:] = 50.0
    garbage[2, 5:] = -7.0
    with torch.no_grad():
        y, y_lens = enc(x, x_lens)
        yg, yg_lens = enc(garbage, x_lens)
        ysg, _ = stream(enc, garbage, x_lens)
    assert torch.equal(y_lens, yg_lens)
    _assert_valid_close(y, yg, y_lens)
    _assert_valid_close(y, ysg, y_lens)


@pytest.mark.parametrize("name", FAMS)
def test_batch_independence(name):
    enc = _tiny(name)
    x, x_lens = _batch(enc.input_dim, [41, 17])
    with torch.no_grad():
        y, _ = enc(x, x_lens)
        y1, l1 = enc(x[1:2, :17], x_lens[1:2])
    _assert_valid_close(y[1:2], y1, l1)


@pytest.mark.parametrize("name", FAMS)
def test_state_shapes_fixed(name):
    enc = _tiny(name)
    p = enc.streaming_params()
    state = enc.init_state(2)
    shapes = [s.shape for s in state]
    x = torch.randn(2, p["window"], enc.input_dim)
    lens = torch.tensor([p["window"], p["window"]])
    with torch.no_grad():
        for _ in range(5):
            y, y_lens, state = enc.forward_chunk(x, lens, state)
            assert [s.shape for s in state] == shapes
            assert y.shape == (2, p["chunk_size"], enc.output_dim)
            assert y_lens.tolist() == [p["chunk_size"]] * 2


@pytest.mark.parametrize("name", FAMS)
def test_bad_input(name):
    enc = _tiny(name)
    x, x_lens = _batch(enc.input_dim, [10, 7])
    with pytest.raises(ValueError, match="features per frame"):
        enc(torch.randn(2, 10, enc.input_dim + 1), x_lens)
    with pytest.raises(ValueError, match=r"\[0, T=10\]"):
        enc(x, torch.tensor([11, 7]))
    with pytest.raises(ValueError, match=r"\[0, T=10\]"):
        enc(x, torch.tensor([-1, 7]))
    with pytest.raises(ValueError, match="x_lens"):
        enc(x, torch.tensor([10]))
    p = enc.streaming_params()
    chunk = torch.randn(2, p["window"], enc.input_dim)
    lens = torch.tensor([p["window"]] * 2)
    with pytest.raises(ValueError, match="batch size"):
        enc.forward_chunk(chunk, lens, enc.init_state(3))
    with pytest.raises(ValueError, match="window"):
        enc.forward_chunk(torch.randn(2, p["window"] + 1, enc.input_dim), lens, enc.init_state(2))
    other = build_encoder(name, **{**TINY[name], **_other_config(name)})
    with pytest.raises(ValueError, match="state"):
        enc.forward_chunk(chunk, lens, other.init_state(2))


def _other_config(name: str) -> dict:
    return {
        "lstm": {"hidden_size": 40},
        "conformer": {"d_model": 24},
        "quartznet": {"prologue_channels": 24},
        "citrinet": {"channels": 24},
        "ssm": {"d_state": 3},
    }[name]


def test_unknown_family_and_key():
    with pytest.raises(ValueError, match="unknown encoder"):
        build_encoder("transformer")
    with pytest.raises(ValueError, match="hiden_size"):
        build_encoder("lstm", hiden_size=3)
    with pytest.raises(ValueError, match="preset"):
        build_encoder("lstm", preset="huge")


def test_lstm_chunk_size_does_not_change_outputs():
    enc = _tiny("lstm")
    x, x_lens = _batch(enc.input_dim, [50, 13])
    with torch.no_grad():
        y, _ = enc(x, x_lens)
        enc.set_chunk_size(1)
        y1, l1 = stream(enc, x, x_lens)
    _assert_valid_close(y, y1, l1)


CONFORMER_CONTEXTS = [(6, 0), (6, 1), (4, 3), (0, 2), (5, 4), (5, 1)]


@pytest.mark.parametrize("context", CONFORMER_CONTEXTS)
@pytest.mark.parametrize("causal", [True, False])
def test_conformer_every_context_streams_exactly(context, causal):
    enc = _tiny("conformer", causal_subsampling=causal)
    enc.set_context(*context)
    p = enc.streaming_params()
    assert p["left_context"] == context[0] and p["right_context"] == context[1]
    assert p["chunk_size"] == context[1] + 1
    assert p["lookahead"] == (0 if causal else 14)
    _check_stream_equals_forward(enc)


def test_conformer_subsampling_4x():
    enc = _tiny("conformer", subsampling=4, causal_subsampling=True)
    enc.set_context(3, 2)
    _check_stream_equals_forward(enc)


def test_conformer_state_layout_follows_sherpa_contract():
    enc = _tiny("conformer", causal_subsampling=False)
    enc.set_context(6, 1)
    attn, conv, processed = enc.init_state(3)
    assert attn.shape == (2, 6, 3, 32)  # (layers, left_context, batch, dim)
    assert conv.shape == (2, 4, 3, 32)  # (layers, kernel - 1, batch, dim)
    assert processed.shape == (3,) and processed.dtype == torch.int64
    enc2 = _tiny("conformer", causal_subsampling=True)
    assert enc2.init_state(3)[3].shape == (3, 14, 20)


def test_conformer_context_changes_outputs_and_state():
    enc = _tiny("conformer")
    x, x_lens = _batch(20, [64, 40])
    with torch.no_grad():
        enc.set_context(6, 0)
        y0, _ = enc(x, x_lens)
        s0 = enc.init_state(2)
        enc.set_context(4, 3)
        y3, _ = enc(x, x_lens)
        assert not torch.allclose(y0, y3)
        with pytest.raises(ValueError, match="state"):
            enc.forward_chunk(torch.zeros(2, 32, 20), torch.tensor([32, 32]), s0)
    with pytest.raises(ValueError, match="context"):
        enc.set_context(-1, 2)


def test_conformer_multi_lookahead_sampling_in_train_mode():
    enc = _tiny("conformer")
    enc.train()
    torch.manual_seed(0)
    seen = {enc._active_context() for _ in range(200)}
    assert seen == {(6, 0), (6, 1), (4, 3), (0, 2)}
    enc.eval()
    assert {enc._active_context() for _ in range(10)} == {(6, 1)}
    x, x_lens = _batch(20, [50, 30])
    enc.train()
    y, y_lens = enc(x, x_lens)
    y.sum().backward()
    assert all(p.grad is not None for p in enc.parameters() if p.requires_grad)


@pytest.mark.parametrize("name", ["ssm", "conformer"])
def test_lookahead_subsampling_layout_streams_exactly(name):
    enc = _tiny(name, causal_subsampling=False)
    p = enc.streaming_params()
    assert p["lookahead"] == p["pad_length"] == 2 * enc.subsampling - 2
    _check_stream_equals_forward(enc)


def test_ssm_long_stream_stays_exact():
    """FFT convolution (whole utterance) vs closed-form recurrence over many windows."""
    enc = _tiny("ssm", chunk_size=2)
    x, x_lens = _batch(enc.input_dim, [960, 701])
    with torch.no_grad():
        y, y_lens = enc(x, x_lens)
        ys, ys_lens = stream(enc, x, x_lens)
    assert torch.equal(y_lens, ys_lens)
    _assert_valid_close(y, ys, y_lens)


@pytest.mark.parametrize("name", FAMS)
def test_train_mode_backward(name):
    enc = _tiny(name).train()
    x, x_lens = _batch(enc.input_dim, [45, 30])
    y, y_lens = enc(x, x_lens)
    assert torch.isfinite(y).all()
    (y * make_pad_mask(y_lens, y.size(1)).unsqueeze(-1)).pow(2).mean().backward()
    missing = [n for n, p in enc.named_parameters() if p.grad is None]
    assert not missing, missing


@pytest.mark.parametrize("name", FAMS)
def test_small_preset_size(name):
    from asr.encoders.presets import count_parameters

    enc = build_encoder(name, preset="small")
    assert 5e6 <= count_parameters(enc) <= 10e6
    assert enc.input_dim == 80


def test_published_sizes():
    from asr.encoders.presets import count_parameters

    assert abs(count_parameters(build_encoder("quartznet", preset="15x5")) - 18.9e6) < 0.1e6
    assert abs(count_parameters(build_encoder("citrinet", preset="256")) - 9.5e6) < 0.5e6


def test_parameter_table_rows(capsys):
    from asr.encoders import parameter_table

    rows = parameter_table(families=["lstm"])
    assert [r["preset"] for r in rows] == ["small", "medium", "large"]
    assert "lstm" in capsys.readouterr().out


def test_bench_runs_tiny():
    from asr.encoders.bench import bench_encoder
    from asr.encoders.presets import PRESETS

    PRESETS["lstm"]["_tiny_test"] = TINY["lstm"] | {"input_dim": 80}
    try:
        row = bench_encoder("lstm", "_tiny_test", batch=2, utt_seconds=1.0, latency_windows=5, long_minutes=0.2, repeats=1)
    finally:
        del PRESETS["lstm"]["_tiny_test"]
    for k in ("throughput", "p50_ms", "p95_ms", "at_10s_ms", "at_long_ms"):
        assert row[k] > 0


@pytest.mark.parametrize("groups", [1, 2, 5])
@pytest.mark.parametrize("left,right,length", [(6, 0, 23), (5, 1, 23), (4, 3, 9), (0, 2, 11), (13, 2, 40)])
def test_conformer_grouped_mask_equals_dense_chunk_mask(left, right, length, groups):
    """The grouped (memory-linear) mask sees exactly the keys of the dense chunked mask, for
    groups of one chunk, of a few chunks, and of about `left` frames."""
    from asr.encoders.conformer import ConformerEncoder

    chunk = right + 1
    t = 41
    group = chunk * (max(1, -(-left // chunk)) if groups == 5 else groups)
    n = -(-t // group)
    lens = torch.tensor([length, t])
    m = ConformerEncoder._attention_mask(torch.zeros(2, dtype=torch.int64), lens, n, group, left, chunk)
    dense = torch.zeros(2, n * group, n * group + left, dtype=torch.bool)  # keys offset by `left`
    for k in range(n):
        dense[:, k * group : (k + 1) * group, k * group : k * group + left + group] = m[:, k]
    dense = dense[:, :t, left : left + t]
    q = torch.arange(t)[:, None]
    j = torch.arange(t)[None, :]
    start = q // chunk * chunk
    ref = (j >= start - left) & (j < start + chunk)
    for b in range(2):
        assert torch.equal(dense[b], ref & (j < lens[b]))


def test_conformer_query_group_size():
    """query_group: a multiple of the chunk near GROUP_FRAMES, never longer than the utterance
    (rounded up to a chunk); the whole-utterance forward's outputs do not depend on it."""
    from asr.encoders.base import mask_frames
    from asr.encoders.conformer import GROUP_FRAMES, query_group

    for left in (0, 4, 128):
        for chunk in (1, 2, 3, 13, 14, 40):
            g = query_group(left, chunk)
            assert g % chunk == 0 and g >= GROUP_FRAMES and g - chunk < GROUP_FRAMES
            for frames in (1, 5, 17, 300):
                gf = query_group(left, chunk, frames)
                assert gf % chunk == 0 and gf <= max(g, chunk) and gf < frames + chunk
    enc = build_encoder("conformer", **TINY["conformer"]).eval()
    torch.manual_seed(3)
    x, lens = torch.randn(2, 150, 20), torch.tensor([150, 97])
    left, right = enc.context
    with torch.no_grad():
        xs = enc.subsample(mask_frames(x, lens))
        ys = enc.output_lengths(lens)
        ref = enc._layers_whole(xs, ys, (right + 1) * 7, left, right + 1)
        got, _ = enc(x, lens)
    for b, n in enumerate(ys.tolist()):
        torch.testing.assert_close(got[b, :n], ref[b, :n], atol=1e-5, rtol=1e-5)


def test_lstm_recurrent_projection_streams_exactly():
    enc = _tiny("lstm", projection="recurrent")
    h, c = enc.init_state(2)
    assert h.shape == (2, 2, 16) and c.shape == (2, 2, 32)  # LSTMP: h is projected
    _check_stream_equals_forward(enc)


class _ChunkModule(torch.nn.Module):
    def __init__(self, enc):
        super().__init__()
        self.enc = enc

    def forward(self, x, x_lens, *state):
        y, y_lens, new = self.enc.forward_chunk(x, x_lens, list(state))
        return (y, y_lens, *new)


@pytest.mark.parametrize("name", FAMS)
def test_forward_chunk_exports_to_onnx(name, tmp_path):
    """forward_chunk traces with torch.onnx.export(dynamo=False) and onnxruntime reproduces
    three streamed windows, state carried through."""
    ort = pytest.importorskip("onnxruntime")
    import warnings

    enc = _tiny(name)
    p = enc.streaming_params()
    b, w = 2, p["window"]
    state = enc.init_state(b)
    lens = torch.tensor([w, w - 1])
    names = [f"state{i}" for i in range(len(state))]
    wrapper = _ChunkModule(enc).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper,
            (torch.randn(b, w, enc.input_dim), lens, *state),
            str(tmp_path / "enc.onnx"),
            dynamo=False,
            opset_version=17,
            input_names=["x", "x_lens", *names],
        )
    enc.eval()  # the exporter restores the wrapper's (train) mode recursively
    sess = ort.InferenceSession(str(tmp_path / "enc.onnx"))
    onnx_state = [s.numpy() for s in state]
    g = torch.Generator().manual_seed(3)
    for _ in range(3):
        x = torch.randn(b, w, enc.input_dim, generator=g)
        with torch.no_grad():
            y, _, state = enc.forward_chunk(x, lens, state)
        out = sess.run(None, {"x": x.numpy(), "x_lens": lens.numpy(), **dict(zip(names, onnx_state))})
        onnx_state = out[2:]
        assert abs(out[0] - y.numpy()).max() < ATOL


@pytest.mark.slow
@pytest.mark.parametrize("name", ["lstm", "conformer", "quartznet", "citrinet", "ssm"])
def test_small_presets_stream_exactly(name):
    """Real sizes: the small preset of every family (every default Conformer look-ahead),
    BatchNorm statistics from a training pass, 6 s utterances of mixed lengths. In float64, to
    1e-9: in float32 the deep convolution stacks (QuartzNet, Citrinet) round chunk-wise and
    whole convolutions differently (3e-4 and 1e-3 on outputs of magnitude ~65 on one VM, within
    1e-4 on the VM before it); in float64 every family differed by at most 7e-12 (measured at
    the Conformer's default look-ahead)."""
    torch.manual_seed(0)
    enc = build_encoder(name, preset="small")
    for m in enc.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.momentum = None
    with torch.no_grad():
        enc.train()(torch.randn(4, 300, 80), torch.full((4,), 300))
    enc.eval().double()
    contexts = enc.contexts if name == "conformer" else [None]
    for ctx in contexts:
        if ctx is not None:
            enc.set_context(*ctx)
        _check_stream_equals_forward(enc, atol=1e-9, dtype=torch.float64)
        x, x_lens = _batch(80, [600, 437, 5], dtype=torch.float64)
        with torch.no_grad():
            y, y_lens = enc(x, x_lens)
            ys, _ = stream(enc, x, x_lens)
        _assert_valid_close(y, ys, y_lens, atol=1e-9)


@pytest.mark.parametrize("name", FAMS)
def test_rebuild_from_config(name):
    import dataclasses

    enc = _tiny(name)
    again = build_encoder(enc.family, **dataclasses.asdict(enc.config))
    assert again.config == enc.config
    again.load_state_dict(enc.state_dict())
    same = build_encoder(name, config=enc.config)
    assert same.config == enc.config


def test_wrong_config_type_is_named():
    with pytest.raises(ValueError, match="d_model"):
        build_encoder("conformer", d_model="big")
    with pytest.raises(ValueError, match="att_context_probs"):
        build_encoder("conformer", att_contexts=[[4, 0], [4, 1]], att_context_probs=[1.0])
    with pytest.raises(ValueError, match="subsampling"):
        build_encoder("conformer", subsampling=3)


def test_config_values_no_model_can_mean_are_refused():
    from asr.heads.transducer import TransducerConfig

    for fam in FAMS:
        with pytest.raises(ValueError, match=r"dropout is a dropout probability in \[0, 1\), got 1.0"):
            build_encoder(fam, dropout=1.0)
    with pytest.raises(ValueError, match="att_context_probs"):
        build_encoder("conformer", att_contexts=[[4, 0], [4, 1]], att_context_probs=[float("nan"), 1.0])
    with pytest.raises(ValueError, match="attention context"):
        build_encoder("conformer", inference_context=[])  # used to mean "the first trained context"
    with pytest.raises(ValueError, match="preset= or config=, not both"):  # the config's fields hid the preset
        build_encoder("conformer", preset="large", config=ConformerConfig())
    from asr.encoders.conformer import ConformerEncoder

    assert ConformerEncoder(ConformerConfig(att_contexts=((4, 0), (4, 1)))).contexts == [(4, 0), (4, 1)]  # tuples
    for bad, msg in [(dict(omega=2.0), "omega"), (dict(sigma=-0.1), "sigma"), (dict(fastemit_lambda=-1.0), "fastemit"),
                     (dict(pred_dim=0), "pred_dim"), (dict(joint_dim=0), "joint_dim"), (dict(prune_range=1), "prune_range"),
                     (dict(dropout=1.0), "dropout")]:
        with pytest.raises(ValueError, match=msg):
            TransducerConfig(**bad)


def test_single_context_conformer_trains_at_its_context():
    """With one trained context, training used the inference context instead (set by
    ``inference_context`` or ``set_context``): a model trained at (8, 0) while meant for (8, 2)."""
    enc = build_encoder("conformer", input_dim=20, d_model=32, num_layers=1, subsampling_channels=8,
                        att_contexts=[[8, 2]], inference_context=[8, 0])
    enc.train()
    assert enc._active_context() == (8, 2)
    enc.set_context(4, 0)
    assert enc._active_context() == (8, 2)
    enc.eval()
    assert enc._active_context() == (4, 0)


@pytest.mark.parametrize("name", FAMS)
def test_no_frames_wrong_dtype_and_nan_padding(name):
    """No frames give no outputs (the convolutions used to fail); float64 features for float32
    weights are a clear error; NaN in the padding stays out of the outputs (the convolutional
    encoders masked by multiplying, and NaN * 0 is NaN)."""
    enc = _tiny(name).eval()
    F_ = enc.input_dim
    with torch.no_grad():
        y, yl = enc(torch.zeros(2, 0, F_), torch.tensor([0, 0]))
        assert y.shape == (2, 0, enc.output_dim) and yl.tolist() == [0, 0]
        with pytest.raises(ValueError, match="x is torch.float64 but the encoder's weights are torch.float32"):
            enc(torch.zeros(1, 9, F_, dtype=torch.float64), torch.tensor([9]))
        x = torch.randn(2, 37, F_)
        y0, yl0 = enc(x, torch.tensor([37, 21]))
        x[1, 21:] = float("nan")
        y1, yl1 = enc(x, torch.tensor([37, 21]))
    assert torch.isfinite(y1).all()
    _assert_valid_close(y0, y1, yl0, atol=0)


def test_conformer_attention_matches_dense_reference():
    """Grouped relative-position attention == a dense T x T formula:
    score(i, j) = ((q_i + u) . k_j + (q_i + v) . P(i - j)) / sqrt(dk) over the chunked mask."""
    import math

    from asr.encoders.conformer import ChunkedRelPosAttention, ConformerConfig, ConformerEncoder, rel_positions

    torch.manual_seed(0)
    b, t, d, h, left, chunk = 2, 23, 16, 2, 5, 2
    att = ChunkedRelPosAttention(d, h, 0.0).eval()
    x = torch.randn(b, t, d)
    lens = torch.tensor([23, 14])
    group = chunk * 3
    n = -(-t // group)
    xp = torch.nn.functional.pad(x, (0, 0, 0, n * group - t))
    enc = ConformerEncoder(ConformerConfig(d_model=d, num_heads=h, num_layers=1))
    win = enc._window(torch.zeros(2, dtype=torch.int64), lens, n, group, left, chunk, x.dtype)
    seq = torch.cat([x.new_zeros(b, left, d), xp], dim=1)
    with torch.no_grad():
        got = att(xp, seq, win)[:, :t]
        dk = d // h
        q = att.q(x).view(b, t, h, dk)
        k = att.k(x).view(b, t, h, dk)
        v = att.v(x).view(b, t, h, dk)
        pe = att.pos(rel_positions(2 * t - 1, d, -(t - 1), x.device, x.dtype)).view(2 * t - 1, h, dk)
        i = torch.arange(t)[:, None]
        j = torch.arange(t)[None, :]
        p_ij = pe[(i - j) + (t - 1)]  # (T, T, H, dk): embedding of distance i - j
        scores = torch.einsum("bihd,bjhd->bhij", q + att.bias_u, k)
        scores = scores + torch.einsum("bihd,ijhd->bhij", q + att.bias_v, p_ij)
        scores = scores / math.sqrt(dk)
        start = i // chunk * chunk
        visible = (j >= start - left) & (j < start + chunk)
        visible = visible[None, None] & (j < lens[:, None, None, None])
        probs = torch.softmax(scores.masked_fill(~visible, float("-inf")), dim=-1)
        want = att.out(torch.einsum("bhij,bjhd->bihd", probs, v).reshape(b, t, d))
    m = make_pad_mask(lens, t).unsqueeze(-1)  # padded queries have no visible key (NaN above)
    assert torch.where(m, (got - want).abs(), torch.zeros(())).max() < 1e-5


def test_conformer_lookahead_is_used_and_bounded():
    """Frame 0 of a chunk sees the rest of its chunk (look-ahead) and nothing after it."""
    enc = _tiny("conformer")
    enc.set_context(6, 3)  # chunks of 4 encoder frames = 32 feature frames
    x, x_lens = _batch(20, [96])
    with torch.no_grad():
        y, _ = enc(x, x_lens)
        x2 = x.clone()
        x2[:, 24:32] += 1.0  # last encoder frame of chunk 0
        y2, _ = enc(x2, x_lens)
        x3 = x.clone()
        x3[:, 32:] += 1.0  # everything after chunk 0
        y3, _ = enc(x3, x_lens)
    assert (y2[:, 0] - y[:, 0]).abs().max() > 1e-3  # look-ahead reaches frame 0
    assert torch.allclose(y3[:, :4], y[:, :4], atol=1e-6)  # nothing beyond the chunk does


def test_s4d_matches_complex_recurrence():
    """FFT kernel path and windowed closed form == the textbook ZOH recurrence in complex128."""
    from asr.encoders.ssm import S4D

    torch.manual_seed(0)
    e, n, t = 3, 4, 37
    ssm = S4D(e, n, 1e-2, 1e-1)
    u = torch.randn(2, e, t)
    dt = torch.exp(ssm.log_dt.double())[:, None]
    a = torch.complex(-torch.exp(ssm.log_a_re.double()), ssm.a_im.double())
    ab = torch.exp(dt * a)
    bb = (ab - 1) / a
    c = torch.complex(ssm.c[0].double(), ssm.c[1].double())
    h = torch.zeros(2, e, n, dtype=torch.complex128)
    ref = []
    for i in range(t):
        h = ab * h + u[:, :, i, None].double()
        ref.append(2 * (c * bb * h).sum(-1).real + ssm.d.double() * u[:, :, i].double())
    ref = torch.stack(ref, dim=-1)
    with torch.no_grad():
        full = ssm(u)
        state = torch.zeros(2, 2, e, n)
        parts = []
        for i in range(0, t, 5):
            y, state = ssm.forward_chunk(u[:, :, i : i + 5], state)
            parts.append(y)
        chunked = torch.cat(parts, dim=-1)
    assert (full.double() - ref).abs().max() < 1e-4
    assert (chunked.double() - ref).abs().max() < 1e-4
    final = torch.complex(state[0].double(), state[1].double())
    assert (final - h).abs().max() < 1e-4


@pytest.mark.parametrize("factor", [4, 8])
def test_subsampling_output_varies_with_the_input_at_init(factor):
    """At initialization the subsampling's output must carry the input, not a constant vector:
    with PyTorch's default init it was ~98% one static vector (time-varying energy 1.7%)."""
    from asr.encoders.subsampling import ConvSubsampling

    torch.manual_seed(0)
    sub = ConvSubsampling(80, 144, factor, 144, causal=True)
    x = torch.randn(2, 800, 80)  # standardized features
    with torch.no_grad():
        y = sub(x)
    varying = (y - y.mean(dim=1, keepdim=True)).pow(2).mean() / y.pow(2).mean()
    assert varying > 0.2, float(varying)
    assert 0.3 < float(y.pow(2).mean().sqrt()) < 3.0  # the scale is preserved, roughly


def test_s4d_kernel_stays_float32_under_autocast():
    """Mixed precision leaves the SSM's convolution kernel in float32 (autocast would round the
    sum over states to bf16 before the float32 FFT, away from the streaming recurrence)."""
    from asr.encoders.ssm import S4D

    torch.manual_seed(0)
    ssm = S4D(8, 16, 1e-3, 1e-1)
    with torch.no_grad():
        ref = ssm.kernel(300)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            k = ssm.kernel(300)
    assert k.dtype == torch.float32 and torch.equal(k, ref)


def test_run_lstm_keeps_the_cpu_autocast_dtype():
    from asr.encoders.base import run_lstm

    lstm = torch.nn.LSTM(8, 8, batch_first=True)
    x = torch.randn(2, 5, 8)
    torch.testing.assert_close(run_lstm(lstm, x)[0], lstm(x)[0], rtol=0, atol=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert run_lstm(lstm, x)[0].dtype == lstm(x)[0].dtype == torch.bfloat16


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_run_lstm_is_float32_under_cuda_bf16_autocast():
    """cuDNN RNN autocast casts to float16 whatever autocast's dtype; a bf16 run has no grad
    scaler, so the LSTMs run in float32 there (and in float16 under fp16 autocast)."""
    from asr.encoders.base import run_lstm

    lstm = torch.nn.LSTM(8, 8, batch_first=True).cuda()
    x = torch.randn(2, 5, 8, device="cuda", requires_grad=True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y, (h, c) = run_lstm(lstm, x)
    assert y.dtype == h.dtype == torch.float32
    y.sum().backward()
    assert torch.isfinite(x.grad).all() and all(torch.isfinite(p.grad).all() for p in lstm.parameters())
    with torch.autocast("cuda", dtype=torch.float16):
        assert run_lstm(lstm, x)[0].dtype == torch.float16
