"""The ONNX runtime reproduces torch streaming: tokens and frames of
``asr.decoding.streaming.StreamingRecognizer`` for every head and decoder, encoder outputs of
``forward_chunk``, with streams fed in random pieces at several sample rates and decoded
together; int8 files run; the last word survives; endpoints follow the documented policy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from asr.data.audio import resample
from asr.decoding.beam import modified_beam_search
from asr.decoding.transducer import greedy_search
from serve import EndpointConfig, EndpointRule, Recognizer

from .helpers import build, feed, knf_features, synthetic_audio, torch_stream


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models run fastest single-threaded


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    cache: dict = {}

    def get(**kw):
        key = tuple(sorted(kw.items()))
        if key not in cache:
            cache[key] = build(tmp_path_factory.mktemp("serve"), **kw)
        return cache[key]

    return get


NO_ENDPOINT = EndpointConfig(enabled=False)
RATES = [16000, 8000, 44100]

# name -> (build arguments, [(decoding, use_ctc), ...])
CASES = {
    "conformer-ctc": (dict(family="conformer", head="ctc"), [("greedy", True)]),
    "lstm-ctc": (dict(family="lstm", head="ctc"), [("greedy", True)]),
    "conformer-rnnt": (dict(family="conformer", head="rnnt"), [("greedy", False), ("beam", False)]),
    "lstm-rnnt-lstm-predictor": (dict(family="lstm", head="rnnt", predictor="lstm"), [("greedy", False), ("beam", False)]),
    "conformer-tdt": (dict(family="conformer", head="tdt"), [("greedy", False), ("beam", False)]),
    "lstm-tdt-lstm-predictor": (dict(family="lstm", head="tdt", predictor="lstm"), [("greedy", False), ("beam", False)]),
    "conformer-hybrid-ctc-head": (dict(family="conformer", head="rnnt", ctc_weight=0.3), [("greedy", True), ("greedy", False)]),
    "lstm-hybrid-tdt-ctc-head": (dict(family="lstm", head="tdt", ctc_weight=0.3), [("greedy", True)]),
    # a pruned TDT exports as a TDT: the runtime must read its durations
    "lstm-hybrid-pruned-tdt": (dict(family="lstm", head="pruned_tdt", ctc_weight=0.3), [("greedy", False), ("greedy", True)]),
    "conformer-noncausal-subsampling": (dict(family="conformer", head="rnnt", causal_subsampling=False), [("greedy", False)]),
    # raw random transducers: up to max_symbols=10 labels on one frame
    "lstm-rnnt-random": (dict(family="lstm", head="rnnt", emitting=False), [("greedy", False)]),
    "conformer-tdt-random": (dict(family="conformer", head="tdt", emitting=False, seed=1), [("greedy", False)]),
}


def _audios(seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Three recordings at 16, 8 and 44.1 kHz (lengths that end inside a window), and what
    they are at 16 kHz after whole-file resampling (what the torch reference decodes)."""
    raw = [synthetic_audio(1.63 + 0.44 * i, seed=20 + i + seed, sr=r) for i, r in enumerate(RATES)]
    return raw, [resample(a, r, 16000) for a, r in zip(raw, RATES)]


@pytest.mark.parametrize("case", list(CASES))
def test_runtime_equals_torch_streaming(case, built):
    kw, decodings = CASES[case]
    model, out = built(**kw)
    raw, at16k = _audios()
    emitting = kw.get("emitting", True)
    for decoding, use_ctc in decodings:
        rec = Recognizer(out, decoding=decoding, use_ctc=use_ctc, endpoint=NO_ENDPOINT)
        streams = [rec.create_stream() for _ in raw]
        assert feed(rec, streams, raw, rates=RATES, seed=len(case)) > 0, "no encoder call batched several streams"
        got = []
        for s, audio in zip(streams, at16k):
            ref = torch_stream(model, audio, decoding, use_ctc=use_ctc)
            r = s.result()
            assert r.is_final and not rec.is_ready(s)
            assert (r.token_ids, r.frames) == (ref.tokens, ref.frames), f"{case} {decoding} ctc={use_ctc}"
            # kaldi-native-fbank vs lhotse features and the resampler differ in the last bits
            assert r.score == pytest.approx(ref.score, rel=1e-4, abs=5e-3)
            t = model.hyp_to_transcript(ref)
            assert (r.text, r.tokens, r.timestamps) == (t.text, t.tokens, t.timestamps)
            got.append(r.token_ids)
        if emitting:
            assert len({tok for g in got for tok in g}) >= 3, f"the test model should emit several tokens: {got}"
            assert len({tuple(g) for g in got}) == len(got), "every stream should have its own transcript"
        elif not use_ctc:
            most = max(np.bincount(s.result().frames).max() for s in streams if s.result().frames)
            assert most == 10, "the random model should hit max_symbols on a frame"


@pytest.mark.parametrize("family", ["lstm", "conformer"])
def test_runtime_ctc_guard_equals_torch(family, built):
    """``Recognizer(ctc_guard=P)`` (``ctc_guard.onnx``): a hybrid TDT's blank jumps guarded by
    its CTC head as torch's ``StreamingRecognizer(ctc_guard=P)`` guards them, streams fed in
    pieces and decoded together; P at the 80th percentile of the blank probability, so that
    most frames stop a jump and some let it pass."""
    model, out = built(family=family, head="pruned_tdt", ctc_weight=0.3)
    raw, at16k = _audios(seed=3)
    with torch.no_grad():
        feats = torch.from_numpy(knf_features(at16k[0], model.features))[None]
        enc, _ = model.encode(feats, torch.tensor([feats.shape[1]]))
        p = float(model.ctc(enc)[0, :, model.transducer.blank].exp().quantile(0.8))
    assert 0.0 < p < 1.0
    rec = Recognizer(out, ctc_guard=p, endpoint=NO_ENDPOINT)
    streams = [rec.create_stream() for _ in raw]
    feed(rec, streams, raw, rates=RATES, seed=4)
    changed = 0
    for s, audio in zip(streams, at16k):
        ref = torch_stream(model, audio, ctc_guard=p)
        assert (s.result().token_ids, s.result().frames) == (ref.tokens, ref.frames)
        assert s.result().score == pytest.approx(ref.score, rel=1e-4, abs=5e-3)
        free = torch_stream(model, audio)  # a jump cut short adds blank steps, and their scores
        changed += (free.tokens, free.frames) != (ref.tokens, ref.frames) or abs(free.score - ref.score) > 0.1
    assert changed, "the guard should change some stream's decisions"
    with pytest.raises(ValueError, match="greedy search"):
        Recognizer(out, decoding="beam", ctc_guard=p)
    with pytest.raises(ValueError, match=r"in \(0, 1\)"):
        Recognizer(out, ctc_guard=1.5)
    _, rnnt = built(family=family, head="rnnt", ctc_weight=0.3)
    with pytest.raises(ValueError, match="applies to a hybrid TDT"):
        Recognizer(rnnt, ctc_guard=p)


def _lms(model, tmp_path):
    """A token 3-gram and a word 2-gram (ARPA files) that pull the tiny models' beams away from
    what they decode alone: the token LM favours a few pieces, the word LM knows three words."""
    from asr.decoding.lexicon import train_word_lm
    from asr.decoding.lm import NgramLM

    tok = model.tokenizer
    rng = np.random.default_rng(0)
    V = len(tok)
    favoured = [5, 9, 12]
    seqs = [list(rng.choice(favoured, size=int(rng.integers(3, 9)))) + list(rng.integers(2, V, size=2)) for _ in range(60)]
    token = tmp_path / "token.arpa"
    NgramLM.train(seqs, 3, V).save_arpa(token, tok.pieces())
    lm, symbols = train_word_lm(["the fox jumps", "the lazy dog", "lazy fox", "the dog jumps over the fox"], 2)
    word = tmp_path / "word.arpa"
    lm.save_arpa(word, symbols)
    return token, word


@pytest.mark.parametrize("family, head, predictor", [("conformer", "rnnt", "stateless"), ("lstm", "tdt", "lstm")])
def test_runtime_lm_fusion_equals_torch(family, head, predictor, built, tmp_path):
    """``Recognizer(decoding="beam", lm=ARPA, lm_unit=...)``: a token n-gram and a lexicon word
    LM fused into the runtime's beam search give torch's ``StreamingRecognizer(fusion=...)``
    tokens and frames, streams fed in pieces and decoded together, and change the transcripts."""
    from asr.decoding.lexicon import load_lm
    from asr.decoding.lm import LMFusion

    model, out = built(family=family, head=head, predictor=predictor)
    raw, at16k = _audios(seed=5)
    token, word = _lms(model, tmp_path)
    tok = model.tokenizer
    for path, unit, weight, bonus in [(token, "token", 0.8, 0.5), (word, "word", 0.6, 1.0)]:
        rec = Recognizer(out, decoding="beam", lm=path, lm_unit=unit, lm_weight=weight, token_bonus=bonus, endpoint=NO_ENDPOINT)
        assert f"{unit} LM {path.name}" in repr(rec)
        streams = [rec.create_stream() for _ in raw]
        feed(rec, streams, raw, rates=RATES, seed=6)
        fusion = LMFusion(load_lm(path, unit, tok.pieces(), tok.encode_batch), weight, bonus)
        changed = 0
        for s, audio in zip(streams, at16k):
            ref = torch_stream(model, audio, "beam", fusion=fusion)
            r = s.result()
            assert (r.token_ids, r.frames) == (ref.tokens, ref.frames), f"{family} {head} {unit} LM"
            assert r.score == pytest.approx(ref.score, rel=1e-4, abs=5e-3)
            changed += ref.tokens != torch_stream(model, audio, "beam").tokens
        assert changed, f"the {unit} LM should change some transcript"
        if unit == "word":  # the search keeps to the LM's words (a stream may end inside one)
            words = {"the", "fox", "jumps", "lazy", "dog", "over"}
            assert all(set(s.result().text.split()[:-1]) <= words for s in streams), [s.result().text for s in streams]


def test_runtime_lm_errors(built, tmp_path):
    model, out = built(family="conformer", head="rnnt")
    token, word = _lms(model, tmp_path)
    with pytest.raises(ValueError, match="decoding='beam'"):
        Recognizer(out, lm=token)
    with pytest.raises(ValueError, match="weight must be >= 0"):  # checked before the LM loads
        Recognizer(out, decoding="beam", lm=tmp_path / "missing.arpa", lm_weight=-1.0)
    with pytest.raises(ValueError, match="lm_unit must be 'token' or 'word'"):
        Recognizer(out, decoding="beam", lm=tmp_path / "missing.arpa", lm_unit="words")
    with pytest.raises(ValueError, match="token LM, not a word LM"):
        Recognizer(out, decoding="beam", lm=token, lm_unit="word")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Recognizer(out, decoding="beam", lm=tmp_path / "missing.arpa", lm_unit="word")
    _, hybrid = built(family="conformer", head="rnnt", ctc_weight=0.3)
    with pytest.raises(ValueError, match="CTC decoding is greedy"):
        Recognizer(hybrid, decoding="beam", use_ctc=True, lm=token)
    # an export made before bpe.model was written: a word LM cannot be spelled, a token LM still loads
    import json
    import shutil

    old = tmp_path / "old_export"
    shutil.copytree(out, old)
    (old / "bpe.model").unlink()
    card = json.loads((old / "model.json").read_text())
    del card["tokenizer"]
    (old / "model.json").write_text(json.dumps(card))
    with pytest.raises(ValueError, match="export the model again"):
        Recognizer(old, decoding="beam", lm=word, lm_unit="word")
    Recognizer(old, decoding="beam", lm=token)


@pytest.mark.parametrize("family, encoder", [("conformer", {}), ("conformer", {"causal_subsampling": False}), ("lstm", {}),
                                             ("ssm", {}), ("citrinet", {})])
def test_encoder_output_equals_torch_forward_chunk(family, encoder, built):
    """The runtime's windowing (pieces -> features -> windows of ``window`` frames advanced by
    ``shift``, zero-padded last windows with their valid lengths, states batched and split)
    gives torch's streaming encoder output within 1e-4 (fp32)."""
    model, out = built(family=family, head="rnnt", emitting=False, **encoder)
    _, audios = _audios(seed=1)
    rec = Recognizer(out, endpoint=NO_ENDPOINT, keep_encoder_out=True)
    streams = [rec.create_stream() for _ in audios]
    feed(rec, streams, audios, seed=3)
    p = model.encoder.streaming_params()
    W, S = p["window"], p["shift"]
    for s, audio in zip(streams, audios):
        x = model.normalize(torch.from_numpy(knf_features(audio, model.features)))
        state, want = model.encoder.init_state(1), []
        with torch.no_grad():
            for i in range(0, x.shape[0], S):
                valid = min(x.shape[0] - i, W)
                win = torch.nn.functional.pad(x[i : i + W], (0, 0, 0, W - valid))
                y, yl, state = model.encoder.forward_chunk(win[None], torch.tensor([valid]), state)
                want.append(y[0, : int(yl[0])])
        want = torch.cat(want).numpy()
        got = s.encoder_out()
        assert got.shape == want.shape
        assert np.abs(got - want).max() <= 1e-4
        assert s.windows_run == len(range(0, x.shape[0], S))


def test_int8_files_run(built):
    _, out = built(family="conformer", head="rnnt", ctc_weight=0.3, int8=True)
    _, audios = _audios(seed=2)
    fp32 = Recognizer(out, endpoint=NO_ENDPOINT, keep_encoder_out=True)
    for use_ctc in (False, True):
        rec = Recognizer(out, int8=True, use_ctc=use_ctc, endpoint=NO_ENDPOINT, keep_encoder_out=True)
        assert all(p.name.endswith(".int8.onnx") for p in rec.model.files.values())
        assert rec.model.size_bytes() > 0
        streams = [rec.create_stream() for _ in audios]
        feed(rec, streams, audios, seed=4)
        assert all(s.result().is_final and s.result().token_ids for s in streams)
        if not use_ctc:  # the quantized encoder ran: close to fp32, not equal
            ref = fp32.create_stream()
            ref.accept_waveform(16000, audios[0])
            ref.input_finished()
            fp32.decode(ref)
            a, b = streams[0].encoder_out(), ref.encoder_out()
            rel = np.sqrt(((a - b) ** 2).mean() / (b**2).mean())
            assert 0 < rel < 0.1, f"int8 encoder output relative RMS error {rel:.3g}"


def test_last_word_is_not_dropped(built):
    """Audio that ends in the middle of a token: the zero-padded final windows decode it, and
    the result equals torch's whole-utterance decoding; only full windows would lose it."""
    model, out = built(family="conformer", head="rnnt")
    full = synthetic_audio(3.0, seed=31)
    p = model.encoder.streaming_params()
    for n in range(16000, len(full), 480):  # the first cut whose last encoder frame emits
        audio = full[:n]
        feats = torch.from_numpy(knf_features(audio, model.features))
        with torch.no_grad():
            whole = model.decode(feats[None], torch.tensor([feats.shape[0]]))[0]
        last = -(-feats.shape[0] // model.encoder.subsampling) - 1
        if whole.frames and whole.frames[-1] == last and feats.shape[0] % p["shift"]:
            break
    else:
        pytest.fail("no cut of the audio ends on an emitting frame")
    rec = Recognizer(out, endpoint=NO_ENDPOINT)
    s = rec.create_stream()
    s.accept_waveform(16000, audio)
    s.input_finished()
    rec.decode(s)
    r = s.result()
    assert (r.token_ids, r.frames) == (whole.tokens, whole.frames)
    full_windows = (feats.shape[0] - p["window"]) // p["shift"] + 1
    assert s.windows_run > full_windows
    assert r.frames[-1] >= full_windows * p["shift"] // model.encoder.subsampling, "the last token lies past the full windows"


def _torch_segments(model, audio: np.ndarray, config: EndpointConfig, frame_seconds: float, decoding: str,
                    silent: frozenset = frozenset({0, 1}), fusion=None) -> list[tuple]:
    """The documented endpoint policy, in torch: windows through forward_chunk (encoder state
    never reset), the decoder (greedy or beam search) continued window by window; after every
    window the rules on the current segment, speech ending at its last token that writes
    something (not in ``silent``); at an endpoint the segment closes and the decoder
    restarts (with ``fusion``, its LM context at ``<s>``)."""
    lm = fusion.kwargs() if fusion is not None else {}
    x = model.normalize(torch.from_numpy(knf_features(audio, model.features)))
    p = model.encoder.streaming_params()
    W, S = p["window"], p["shift"]
    state, dec, seg_start, done, segments = model.encoder.init_state(1), None, 0, 0, []
    with torch.no_grad():
        for i in range(0, x.shape[0], S):
            valid = min(x.shape[0] - i, W)
            y, yl, state = model.encoder.forward_chunk(torch.nn.functional.pad(x[i : i + W], (0, 0, 0, W - valid))[None],
                                                       torch.tensor([valid]), state)
            if decoding == "greedy":
                hyps, dec = greedy_search(model.transducer, y, yl, state=dec)
            else:
                hyps, dec = modified_beam_search(model.transducer, y, yl, beam=4, state=dec, **lm)
            done += int(yl[0])
            frames = [f + seg_start for f in hyps[0].frames]
            spoken = [f for f, tok in zip(hyps[0].frames, hyps[0].tokens) if tok not in silent]
            last = spoken[-1] if spoken else None
            rule = config.detect(done - seg_start, last, frame_seconds)
            if rule is not None:
                segments.append((hyps[0].tokens, frames, rule))
                dec, seg_start = None, done
    if hyps[0].tokens and dec is not None:
        segments.append((hyps[0].tokens, [f + seg_start for f in hyps[0].frames], None))
    return segments


@pytest.mark.parametrize("decoding", ["greedy", "beam", "beam_lm"])
def test_endpoints_close_segments_and_restart_the_decoder(tmp_path, decoding):
    """Two streams decoded together: speech, a pause (rule2), speech; and speech, a pause
    (rule2), a long silence (rule1, an empty segment), speech. Segments, their tokens, frames
    and rules equal the policy computed in torch (``beam_lm``: beam search with a token LM,
    whose context restarts with every segment)."""

    def silence(sec):
        # digital silence: these tiny random encoders fire on faint noise as readily as on the
        # synthetic "speech" (and once at a stream's start), which would leave no pause
        return np.zeros(int(sec * 16000), np.float32)

    a = np.concatenate([synthetic_audio(1.4, seed=41), silence(1.5), synthetic_audio(1.2, seed=42), silence(0.3)])
    b = np.concatenate([synthetic_audio(1.0, seed=43), silence(4.0), synthetic_audio(1.0, seed=44), silence(0.013)])
    # the emitting model fires on the top frames of the audio it is set on (these streams); a
    # high blank logit keeps beam search, which sums the many token paths, blank in silence
    model, out = build(tmp_path, family="conformer", head="rnnt", calib=np.concatenate([a, b]), beta=3.0, gain=12.0)
    config = EndpointConfig(rule2=EndpointRule(True, 0.8, 0.0))
    fusion = None
    if decoding == "beam_lm":
        from asr.decoding.lexicon import load_lm
        from asr.decoding.lm import LMFusion

        token, _ = _lms(model, tmp_path)
        fusion = LMFusion(load_lm(token, "token", model.tokenizer.pieces()), 0.8, 0.5)
    method = "greedy" if decoding == "greedy" else "beam"
    rec = Recognizer(out, decoding=method, endpoint=config, lm=fusion.lm if fusion else None, lm_weight=0.8, token_bonus=0.5)
    streams = [rec.create_stream() for _ in (a, b)]
    feed(rec, streams, [a, b], seed=6)
    for s, audio in zip(streams, (a, b)):
        want = _torch_segments(model, audio, config, rec.frame_seconds, method, fusion=fusion)
        got = [(r.token_ids, r.frames, r.endpoint) for r in s.segments]
        assert got == want
        assert want[0][2] == "rule2" and want[0][0], [(w[1], w[2]) for w in want]  # speech, then a pause
        assert all(r.is_final for r in s.segments) and s.result().is_final
        assert [r.segment for r in s.segments] == list(range(len(s.segments)))
        assert s.segments[1].start == s.segments[0].end > 0
        # the last frame, padded at the input's end, reaches past it; no segment's end does
        assert len(audio) / 16000 - rec.frame_seconds < s.transcript().end <= len(audio) / 16000 == s.seconds_received
        assert s.result().end <= s.seconds_received and all(r.end <= s.seconds_received for r in s.segments)
        assert s.transcript().token_ids == [t for w in want for t in w[0]]
        assert s.transcript().text == " ".join(r.text for r in s.segments if r.text)
        assert all(r.text == r.text.strip() for r in s.segments)  # a final word-start piece leaves no space
    if fusion is not None:  # the LM moves the segments (else this case could not fail)
        assert any(_torch_segments(model, audio, config, rec.frame_seconds, method) != [(r.token_ids, r.frames, r.endpoint)
                                                                                      for r in s.segments]
                   for s, audio in zip(streams, (a, b)))
        return
    # b's long silence ends an empty segment by rule1 (beam search may first close one or two
    # rule2 segments there, each holding a token its restarted search emits at once)
    assert any(r.text == "" and r.endpoint == "rule1" for r in streams[1].segments[1:])


@pytest.mark.parametrize("decoding", ["greedy", "beam"])
def test_tokens_that_write_nothing_are_not_speech(tmp_path, decoding):
    """A pause where the model decodes only word boundaries (or <unk>) is silence to the
    endpointer: rule2 does not close a segment that wrote nothing (``asr stream`` on noise
    printed a run of empty rule2 finals, a lone word boundary counting as speech). The same
    model decoded twice, the second time with the tokens of its second burst renamed to the
    word boundary in tokens.txt: the same tokens, the segments of the policy in torch with
    those tokens silent."""
    a = np.concatenate([synthetic_audio(1.4, seed=41), np.zeros(24000, np.float32), synthetic_audio(1.2, seed=42),
                        np.zeros(4800, np.float32)])
    model, out = build(tmp_path, family="conformer", head="rnnt", calib=a, beta=3.0, gain=12.0)
    a = np.concatenate([a, np.zeros(48000, np.float32)])  # 3 s more of silence after the second burst
    config = EndpointConfig(rule2=EndpointRule(True, 0.8, 0.0))

    def decode():
        rec = Recognizer(out, decoding=decoding, endpoint=config)
        s = rec.create_stream()
        feed(rec, [s], [a], seed=3)
        return rec, s

    rec, s = decode()
    first = s.segments
    assert [r.endpoint for r in first[:2]] == ["rule2", "rule2"] and first[0].text and first[1].text, first
    quiet = set(first[1].token_ids)
    assert set(first[0].token_ids) - quiet, "the first burst must keep a token that writes"
    lines = (out / "tokens.txt").read_text(encoding="utf-8").splitlines()
    (out / "tokens.txt").write_text("".join(f"\u2581 {i}\n" if i in quiet else line + "\n" for i, line in enumerate(lines)),
                                    encoding="utf-8")
    rec, s = decode()
    assert rec.model.silent_ids == quiet | {0, 1, 2}
    assert s.transcript().token_ids == [t for r in first for t in r.token_ids]
    want = _torch_segments(model, a, config, rec.frame_seconds, decoding, silent=frozenset(rec.model.silent_ids))
    assert [(r.token_ids, r.frames, r.endpoint) for r in s.segments] == want
    assert not any(r.endpoint == "rule2" and not r.text for r in s.segments), [(r.text, r.endpoint) for r in s.segments]
    assert s.segments[1].endpoint == "rule1", [(r.text, r.endpoint) for r in s.segments]


def test_endpoint_rules():
    c, fs = EndpointConfig(), 0.04
    assert c.detect(59, None, fs) is None  # 2.36 s of nothing
    assert c.detect(60, None, fs) == "rule1"  # 2.4 s of nothing
    assert c.detect(99, 69, fs) is None  # speech up to frame 69, then 29 frames = 1.16 s of silence
    assert c.detect(100, 69, fs) == "rule2"  # 30 frames = 1.2 s
    assert c.detect(100, 70, fs) is None
    assert c.detect(499, 498, fs) is None and c.detect(500, 499, fs) == "rule3"  # 20 s, still talking
    assert EndpointConfig(enabled=False).detect(10_000, None, fs) is None
    assert c.detect(0, None, fs) is None
    with pytest.raises(ValueError):
        EndpointRule(True, -1.0, 0.0)
    with pytest.raises(ValueError):  # NaN used to pass the check and turn the rule off
        EndpointRule(True, float("nan"), 0.0)
