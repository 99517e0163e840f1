"""The ``asr`` command.

    asr prepare   corpus -> cleaned lhotse cut manifests (+ tokenizer); builds the mini corpus
    asr train     train a model from a YAML config
    asr decode    WER of a model on cut manifests, with per-utterance results
    asr transcribe  text (and timestamps) for audio files (--onnx DIR: the torch-free runtime)
    asr stream      live recognition from a microphone (--mic) or simulated from a file (ONNX runtime)
    asr serve       live recognition server: WebSocket + web page (ONNX runtime)
    asr bench       benchmarks: runtime (serve.bench), server load (serve.loadtest), search (asr.decoding.bench)
    asr tokenizer   train a sentencepiece tokenizer on cut manifests
    asr prepare-noise  MUSAN -> noise manifest for augmentation
    asr info        describe a model file
    asr export      ONNX files (streaming, offline, int8, sherpa-onnx) of a model file

Each subcommand has ``--help``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections import Counter
from pathlib import Path

__all__ = ["main"]

log = logging.getLogger("asr")


class _StderrHandler(logging.StreamHandler):
    """A console handler that writes to whatever ``sys.stderr`` is when a record is emitted, not
    the stream of the moment it was made: a caller that swaps ``sys.stderr`` after ``main()``
    (pytest's capture, a notebook, ``contextlib.redirect_stderr``) and closes the old one would
    otherwise get "--- Logging error ---" and lose the record."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:  # StreamHandler.__init__ assigns it; nothing to keep
        pass


def _setup_logging(verbose: bool, log_file: Path | None = None) -> None:
    handlers: list[logging.Handler] = [_StderrHandler()]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file))
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        handlers=handlers,
        force=True,
    )
    for noisy in ("lhotse", "matplotlib", "numba", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # lhotse's recipes log progress through the root logger: keep only their warnings.
    for h in handlers:
        h.addFilter(lambda r: r.name != "root" or r.levelno >= logging.WARNING)
    import warnings

    warnings.filterwarnings("ignore", message="LSTM with projections is not supported with oneDNN")


def _parse_overrides(items: list[str]) -> dict:
    """['optim.lr=1e-3', 'max_epochs=3'] -> {'optim.lr': 0.001, 'max_epochs': 3} (YAML-typed)."""
    import yaml

    out: dict = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"error: --set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        try:
            out[key] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise SystemExit(f"error: --set {item}: the value is not valid YAML ({' '.join(str(e).split())})") from None
    return out


# ---------------------------------------------------------------------- prepare
def cmd_prepare(args: argparse.Namespace) -> None:

    from .data.manifests import SkipCounter, load_cuts, prepare_cuts
    from .data.tokenizer import Tokenizer

    out = Path(args.out)
    man_dir = out / "manifests"
    if out.exists() and not out.is_dir():
        raise SystemExit(f"error: --out {out} is a file; prepare writes a directory")
    if args.corpus != "mini" and not Path(args.corpus).exists():
        raise SystemExit(f"error: corpus not found: {args.corpus} (a LibriSpeech directory, a Kaldi data dir, a lhotse "
                         "manifest or a JSONL file; or 'mini' to build the embedded corpus)")
    if args.jobs < 1:
        raise SystemExit(f"error: --jobs must be >= 1, got {args.jobs}")
    parts = args.parts
    if args.corpus == "mini":
        import signal

        from .data.corpus import SPLITS, MiniCorpusConfig, build_mini_librispeech
        from .config import load_yaml

        unknown = sorted((set(parts or []) | set(args.train_parts or [])) - set(SPLITS))
        if unknown:  # before the build, not after it
            raise SystemExit(f"error: {' '.join(unknown)}: not a part of the mini corpus ({', '.join(SPLITS)})")
        seed = {} if args.seed is None else {"seed": args.seed}  # --seed wins over the YAML's
        terminated = []

        def on_term(signum, frame):  # unwinds like Ctrl-C: the pool's workers are stopped, not orphaned
            terminated.append(signum)
            raise KeyboardInterrupt

        previous = signal.signal(signal.SIGTERM, on_term)
        try:  # a bad config, a missing TTS program or WordNet, a full or read-only disk: one line
            cfg = load_yaml(MiniCorpusConfig, args.corpus_config, seed) if args.corpus_config else MiniCorpusConfig(**seed)
            stats = build_mini_librispeech(out / "corpus", cfg, num_jobs=args.jobs)
        except (OSError, ValueError, RuntimeError) as e:  # ConfigError is a ValueError
            raise SystemExit(f"error: {e}") from None
        except KeyboardInterrupt:
            print(f"\ninterrupted by {'SIGTERM' if terminated else 'SIGINT'}: the same command resumes the build in "
                  f"{out / 'corpus'}", file=sys.stderr)
            raise SystemExit(143 if terminated else 130) from None
        finally:
            signal.signal(signal.SIGTERM, previous)
        log.info("mini corpus: %s", json.dumps({k: v for k, v in stats.items() if k in ("hours", "utterances")}))
        source = out / "corpus" / "LibriSpeech"
        parts = parts or list(SPLITS)
        train_parts = args.train_parts or ["train"]
    else:
        source = Path(args.corpus)
        train_parts = args.train_parts or []

    tokenizer = None
    from .data.manifests import detect_source, librispeech_split_dirs

    try:
        if args.tokenizer:
            tokenizer = Tokenizer.load(args.tokenizer)
        kind = detect_source(source)
        if kind == "librispeech":
            names = [d.name for d in librispeech_split_dirs(source, parts)]
        else:
            names = [args.name or source.name.split(".")[0]]
    except (OSError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    unknown = sorted(set(train_parts) - set(names))
    if unknown:
        raise SystemExit(f"error: --train-parts {' '.join(unknown)}: not among the parts found ({', '.join(names)})")
    if tokenizer is None and not args.no_tokenizer and not train_parts:
        log.warning("no --train-parts given: no tokenizer is trained (name the training parts, or give --tokenizer, "
                    "or --no-tokenizer to silence this)")
    man_dir.mkdir(parents=True, exist_ok=True)

    def load(name: str, tok) -> tuple:
        skipped = SkipCounter()
        try:
            cuts = load_cuts(source, parts=[name] if kind == "librispeech" else None, skipped=skipped, num_jobs=args.jobs)
        except (OSError, ValueError) as e:  # a transcript that is not UTF-8, a manifest that does not parse ...
            raise SystemExit(f"error: {name}: {e}") from None
        # Training cuts must be spellable; evaluation cuts keep their text as the reference. A
        # lhotse manifest's files have not been opened yet: their headers are read here.
        cuts = prepare_cuts(cuts, skipped=skipped, min_duration=args.min_duration,
                            tokenizer=tok if name in train_parts else None, check_audio=kind == "lhotse")
        return cuts, skipped

    prepared = {}
    if tokenizer is None and not args.no_tokenizer and train_parts:
        for name in train_parts:
            prepared[name] = load(name, None)
        if not any(len(prepared[n][0]) for n in train_parts):
            raise SystemExit(f"error: no usable cuts in {', '.join(train_parts)} to train a tokenizer on: "
                             + "; ".join(f"{n}: {prepared[n][1].summary()}" for n in train_parts))
        tok_dir = out / ("lang_char" if args.model_type == "char" else f"lang_{args.model_type}{args.vocab_size}")
        # Trained on exactly the training parts' texts (character coverage 1.0): every cut is spellable.
        tokenizer = Tokenizer.train((c.supervisions[0].text for n in train_parts for c in prepared[n][0]), args.vocab_size,
                                    args.model_type, tok_dir)
        log.info("trained a %s tokenizer with %d tokens on %s -> %s", args.model_type, len(tokenizer),
                 " + ".join(train_parts), tok_dir)
    summary, empty = {}, []
    for name in names:
        cuts, skipped = prepared.pop(name) if name in prepared else load(name, tokenizer)
        path = man_dir / f"cuts_{name}.jsonl.gz"
        if len(cuts) == 0:
            empty.append(name)
            path.unlink(missing_ok=True)  # an earlier run's
        else:
            cuts.to_file(path)
        hours = sum(c.duration for c in cuts) / 3600
        summary[name] = {"cuts": len(cuts), "hours": round(hours, 3), "skipped": dict(skipped.counts)}
        log.info("%s: %d cuts, %.2f h -> %s (%s)", name, len(cuts), hours, path if len(cuts) else "nothing written",
                 skipped.summary())
    (out / "prepare_summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    if empty:
        raise SystemExit(f"error: no usable cuts in {', '.join(empty)}: every utterance was skipped (the counts above say why; "
                         "run with -v to see each)")


# ---------------------------------------------------------------------- train
def cmd_train(args: argparse.Namespace) -> None:
    from .config import ConfigError, load_yaml
    from .training.trainer import TrainConfig, Trainer, TrainingInterrupted, lock_exp_dir, check_config

    overrides = _parse_overrides(args.set or [])
    if args.exp_dir:
        overrides["exp_dir"] = args.exp_dir
    try:  # a config that cannot run fails here, in one line, before the run starts
        cfg = load_yaml(TrainConfig, args.config, overrides)
        check_config(cfg)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    rank = int(os.environ.get("RANK", "0") or 0)  # torchrun: only rank 0 writes train.log
    exp = Path(cfg.exp_dir)
    if exp.exists() and not exp.is_dir():
        raise SystemExit(f"error: exp_dir {exp} is a file, not a directory")
    try:  # another run on this exp dir: refused before this one writes to its train.log
        lock = lock_exp_dir(exp) if rank == 0 else None  # noqa: F841 - held until this process ends
    except (OSError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    try:  # files, data paths, the exp dir (another model's checkpoints there): before the run starts
        _setup_logging(args.verbose, exp / "train.log" if rank == 0 else None)
        if rank != 0 and not args.verbose:
            logging.getLogger().setLevel(logging.WARNING)
        trainer = Trainer(cfg, progress=not args.no_progress)
    except (OSError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    try:
        trainer.run()
    except TrainingInterrupted as e:
        logging.getLogger("asr").warning("training interrupted by %s", e)
        print(f"interrupted by {e}", file=sys.stderr)
        raise SystemExit(130 if e.signal_name == "SIGINT" else 143) from None
    except (OSError, ValueError, RuntimeError) as e:  # bad data, a full disk, a diverged run: one line; the traceback in train.log
        import traceback

        if rank == 0:
            with open(exp / "train.log", "a") as f:
                f.write(f"training stopped:\n{traceback.format_exc()}")
        raise SystemExit(f"error: {e}" + (f" (the traceback is in {exp / 'train.log'})" if rank == 0 else "")) from None


# ---------------------------------------------------------------------- decode
def _write_decode_split(out_dir: Path, what: str, table: dict, name: str, results: list[dict], row: dict) -> None:
    """One split's ``results_<split>.txt`` (REF/HYP per cut), and ``wer.json`` rewritten with
    every split finished so far (``table``: name -> row, updated here), for ``asr decode`` on a
    model file or on ONNX files: a long decode that fails or is stopped keeps the splits it
    finished."""
    with open(out_dir / f"results_{name}.txt", "w") as f:
        for r in results:
            f.write(f"{r['id']}\tREF: {r['ref']}\n{r['id']}\tHYP: {r['hyp']}\n")
    table[name] = row
    tmp = out_dir / ".wer.json.tmp"
    tmp.write_text(json.dumps({"decoding": what, "splits": table}, indent=2))
    tmp.replace(out_dir / "wer.json")


def _print_decode_table(out_dir: Path, table: dict) -> None:
    print(f"{'split':<14}{'WER %':>8}{'words':>8}{'sub':>7}{'del':>7}{'ins':>7}{'RTFx':>8}{'skipped':>9}")
    for name, r in table.items():
        wer = f"{r['wer']:>8.2f}" if r["words"] else f"{'-':>8}"  # no reference words: no rate to give
        skipped = sum((r.get("skipped") or {}).values())
        print(f"{name:<14}{wer}{r['words']:>8}{r['sub']:>7}{r['del']:>7}{r['ins']:>7}{r['rtfx']:>8.1f}{skipped:>9}")
    print(f"(per-utterance results in {out_dir}; skipped cuts, by reason, in wer.json)")


def _out_dir(path: Path) -> Path:
    """``path`` made a directory, or SystemExit when it cannot be (a file there, no permission)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SystemExit(f"error: cannot make the output directory {path}: {e.strerror or e}") from None
    return path


def _read_cuts(path: str, hint: str = ""):
    """``read_cut_manifest`` with its errors as the command's one-line error."""
    from .data.manifests import read_cut_manifest

    try:
        return read_cut_manifest(path, hint)
    except (OSError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None


def _decode_inputs(args: argparse.Namespace) -> dict:
    """``asr decode``'s manifests, name -> CutSet, read and checked (with the numeric options
    and ``--compare-to``) before any model is loaded or output written."""
    if args.beam < 1:
        raise SystemExit(f"error: --beam must be >= 1, got {args.beam}")
    if not args.max_duration > 0:
        raise SystemExit(f"error: --max-duration must be > 0 seconds, got {args.max_duration}")
    if args.threads is not None and args.threads < 0:
        raise SystemExit(f"error: --threads must be >= 0 (0: the default), got {args.threads}")
    if args.max_symbols is not None and args.max_symbols < 1:
        raise SystemExit(f"error: --max-symbols must be >= 1, got {args.max_symbols}")
    if args.compare_to and not Path(args.compare_to).is_dir():
        raise SystemExit(f"error: --compare-to {args.compare_to}: no such directory (an `asr decode` output dir)")
    from .data.manifests import split_name

    manifests = {}
    for path in args.cuts:
        name = split_name(path)
        if name in manifests:
            raise SystemExit(f"error: two --cuts manifests are both named {name!r}: their results would overwrite each other")
        manifests[name] = _read_cuts(path)
    return manifests


def _audio_batches(cuts, sample_rate: int, size: int, desc: str, skipped: Counter, no_progress: bool):
    """Lists of up to ``size`` (cut, mono float32 samples at ``sample_rate``); a cut whose audio
    cannot be read, or is shorter than the runtime takes (``MIN_SECONDS``), is named on stderr
    and counted in ``skipped`` by reason."""
    from tqdm.auto import tqdm

    from serve.features import check_length

    batch = []
    for cut in tqdm(cuts, desc=desc, unit="cut", disable=no_progress):
        try:
            samples = cut.resample(sample_rate).load_audio()
        except Exception as e:  # noqa: BLE001 - counted and named, like training's loader
            print(f"skipping {cut.id}: {type(e).__name__}: {e}", file=sys.stderr)
            skipped["unreadable_audio"] += 1
            continue
        samples = samples.mean(axis=0) if samples.ndim == 2 else samples.reshape(-1)
        try:
            check_length(len(samples), sample_rate)
        except ValueError as e:
            print(f"skipping {cut.id}: {e}", file=sys.stderr)
            skipped["too_short"] += 1
            continue
        batch.append((cut, samples))
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _decode_onnx(args: argparse.Namespace) -> dict:
    """``asr decode --onnx DIR --cuts ...``: WER of the exported files run by the torch-free
    streaming runtime (``serve.Recognizer``, one stream per cut, ``--batch`` streams decoded
    together), e.g. int8 against fp32; ``--runtime sherpa``: by sherpa-onnx instead
    (``serve.sherpa``)."""
    import numpy as np
    from .decoding.wer import WER

    if args.context or args.chunkwise:
        raise SystemExit("error: --context and --chunkwise apply to a model file; the ONNX runtime always streams "
                         "at the context it was exported with (asr export --lookahead)")
    args.batch = 16 if args.batch is None else args.batch
    if args.batch < 1:
        raise SystemExit(f"error: --batch must be >= 1, got {args.batch}")
    if args.tail_padding is not None and not 0 <= args.tail_padding <= 60:
        raise SystemExit(f"error: --tail-padding must be 0 to 60 seconds, got {args.tail_padding}")
    args.threads = args.threads or 1
    prec = "int8" if args.int8 else "fp32"
    if args.runtime == "sherpa" and (args.method != "greedy" or args.max_symbols is not None or args.ctc_guard is not None
                                     or args.lm):
        raise SystemExit("error: --runtime sherpa decodes greedily with sherpa-onnx's own rule (at most one symbol "
                         "per frame): --method beam, --lm, --max-symbols and --ctc-guard apply to our runtime")
    manifests = _decode_inputs(args)
    if args.runtime == "sherpa":
        from serve.sherpa import SherpaRecognizer

        try:
            rec = SherpaRecognizer(args.onnx, int8=args.int8, use_ctc=args.use_ctc, num_threads=args.threads)
        except (FileNotFoundError, ValueError, ImportError) as e:
            raise SystemExit(f"error: {e}") from None
        if rec.kind == "ctc" and not args.use_ctc and rec.card.get("head") != "ctc":  # no silent switch of heads
            why = ((rec.card.get("sherpa_onnx") or {}).get("transducer") or {}).get("unsupported", "")
            raise SystemExit(f"error: sherpa-onnx cannot run this model's {rec.card.get('head')} head ({why}): add --use-ctc "
                             "to decode its CTC head")
        tail_s = rec.tail_seconds if args.tail_padding is None else args.tail_padding
        what = f"sherpa-onnx {rec.kind} ({prec}, {args.threads} thread(s)), greedy, streaming, {tail_s:.3f} s of silence appended"

        def run(batch: list) -> list[str]:
            return rec.transcribe_many(batch, tail_seconds=args.tail_padding)
    else:
        from serve import EndpointConfig

        rec = _onnx_recognizer(args, EndpointConfig(enabled=False))
        max_sym = "" if args.max_symbols is None else f", at most {args.max_symbols} symbol(s) per frame"
        what = (f"ONNX runtime ({prec}, {rec.model.num_threads} thread(s)), {args.method}"
                f"{f' (beam {args.beam})' if args.method == 'beam' else ''}{', CTC head' if args.use_ctc else ''}{max_sym}"
                f"{f', TDT blank jumps guarded by the CTC head (blank > {args.ctc_guard})' if args.ctc_guard is not None else ''}"
                f"{_lm_what(args)}, streaming"
                f"{f', {args.tail_padding:.3f} s of silence appended' if args.tail_padding else ''}")

        tail = np.zeros(round((args.tail_padding or 0.0) * rec.sample_rate), np.float32)

        def run(batch: list) -> list[str]:
            return [r.text for r in rec.transcribe_many([np.concatenate([x, tail]) for x in batch])]
    print(f"decoding: {what}\n{rec}")
    default = ("decode_sherpa" if args.runtime == "sherpa" else "decode") + ("_int8" if args.int8 else "")
    out_dir = _out_dir(Path(args.out) if args.out else Path(args.onnx) / default)
    table: dict = {}
    for name, cuts in manifests.items():
        wer, results = WER(), []
        audio_s = compute_s = 0.0
        skipped: Counter = Counter()
        for batch in _audio_batches(cuts, rec.sample_rate, args.batch, name, skipped, args.no_progress):
            t0 = time.perf_counter()
            texts = run([x for _, x in batch])
            compute_s += time.perf_counter() - t0
            for (cut, x), text in zip(batch, texts):
                audio_s += len(x) / rec.sample_rate
                ref = cut.supervisions[0].text if cut.supervisions else ""
                sub, dele, ins = wer.add(ref, text)
                results.append({"id": cut.id, "ref": ref, "hyp": text, "sub": sub, "del": dele, "ins": ins})
        row = {**wer.as_dict(), "rtfx": round(audio_s / max(compute_s, 1e-9), 1), "skipped": dict(skipped)}
        _write_decode_split(out_dir, what, table, name, results, row)
    _print_decode_table(out_dir, table)
    return {"out_dir": out_dir, "splits": list(table)}


def compare_decodes(out_dir: Path, other: Path, splits: list[str]) -> dict:
    """How many transcripts of ``out_dir`` equal those of ``other`` (another ``asr decode``
    output dir), per split; writes ``out_dir/compare.json`` with the differing cut ids."""
    from .decoding.wer import read_results

    report = {"against": str(other), "splits": {}}
    for name in splits:
        theirs_path = other / f"results_{name}.txt"
        if not theirs_path.is_file():
            raise SystemExit(f"error: --compare-to {other}: no results_{name}.txt there (decode the same cut manifests first)")
        ours, theirs = ({c: h for c, (_, h) in read_results(p).items()} for p in (out_dir / f"results_{name}.txt", theirs_path))
        common = [c for c in ours if c in theirs]
        differ = [c for c in common if ours[c] != theirs[c]]
        report["splits"][name] = {"identical": len(common) - len(differ), "compared": len(common),
                                  "missing": len(ours) - len(common), "differ": differ}
    (out_dir / "compare.json").write_text(json.dumps(report, indent=2))
    print(f"identical transcripts vs {other}: " + ", ".join(
        f"{n} {r['identical']}/{r['compared']}" + (f" ({r['missing']} cuts not there)" if r["missing"] else "")
        for n, r in report["splits"].items()) + f" (differences in {out_dir / 'compare.json'})")
    return report


def cmd_decode(args: argparse.Namespace) -> None:
    _check_lm_args(args)
    if args.onnx:
        if args.model:
            raise SystemExit("error: give --model (a model file) or --onnx (an export dir), not both")
        if args.device != "auto":
            raise SystemExit("error: --device applies to --model (PyTorch); the --onnx runtime runs on the CPU")
        done = _decode_onnx(args)
    else:
        if not args.model:
            raise SystemExit("error: --model FILE (or --onnx DIR) is required")
        if (args.runtime != "ours" or args.max_symbols is not None or args.batch is not None or args.tail_padding is not None
                or args.int8):
            raise SystemExit("error: --runtime, --max-symbols, --batch, --tail-padding and --int8 apply to --onnx DIR")
        done = _decode_model(args)
    if args.compare_to:
        compare_decodes(done["out_dir"], Path(args.compare_to), done["splits"])


def _decode_model(args: argparse.Namespace) -> dict:
    """``asr decode --model model.pt --cuts ...``: PyTorch, whole utterance or chunk-wise."""
    from .data.dataset import ASRDataset, SamplerConfig, make_loader, make_sampler
    from .decoding.streaming import chunkwise_decode
    from .models import load
    from .training.trainer import evaluate

    manifests = _decode_inputs(args)
    try:
        model = load(args.model)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    import torch

    from .training.distributed import Dist

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        model = model.to(Dist().device(args.device))  # the trainer's rule: auto is cuda when there is one
    except (RuntimeError, AssertionError) as e:
        raise SystemExit(f"error: --device {args.device}: {e}") from None
    setting = _set_context(model, args.context)
    fusion = _fusion(args, model.tokenizer)
    if args.ctc_guard is not None:
        try:
            model.check_ctc_guard(args.ctc_guard, args.method, args.use_ctc)
        except ValueError as e:
            raise SystemExit(f"error: --ctc-guard: {e}") from None
    if args.method == "beam" and args.chunkwise and (args.use_ctc or model.transducer is None):
        raise SystemExit("error: streaming CTC decoding is greedy; --method beam (and --lm) applies to whole-utterance "
                         "CTC or to transducers")
    mode = "chunkwise" if args.chunkwise else "whole-utterance"
    lm_what = _lm_what(args)
    guard = f", TDT blank jumps guarded by the CTC head (blank > {args.ctc_guard})" if args.ctc_guard is not None else ""
    what = f"{args.method}{f' (beam {args.beam})' if args.method == 'beam' else ''}{', CTC head' if args.use_ctc else ''}{guard}{lm_what}, {mode}{setting}"
    print(f"decoding: {what}")

    def decode(x, lens):
        if args.chunkwise:
            return chunkwise_decode(model, x, lens, method=args.method, beam=args.beam, use_ctc=args.use_ctc, fusion=fusion,
                                    ctc_guard=args.ctc_guard)
        return model.decode(x, lens, method=args.method, beam=args.beam, use_ctc=args.use_ctc, fusion=fusion, ctc_guard=args.ctc_guard)

    out_dir = _out_dir(Path(args.out) if args.out else Path(args.model).parent / "decode")
    ds = ASRDataset(model.tokenizer, model.features, None)
    table: dict = {}
    for name, cuts in manifests.items():
        loader = make_loader(ds, make_sampler(cuts, SamplerConfig(max_duration=args.max_duration), train=False))
        ev = evaluate(model, loader, progress=not args.no_progress, desc=name, decode=decode, compute_loss=False)
        order = {cut_id: i for i, cut_id in enumerate(cuts.ids)}  # batches run longest first; results list in manifest order
        ev["results"].sort(key=lambda r: order[r["id"]])
        _write_decode_split(out_dir, what, table, name, ev["results"],
                            {**ev["wer_detail"], "rtfx": round(ev["rtfx"], 1), "skipped": ev["skipped"]})
    _print_decode_table(out_dir, table)
    return {"out_dir": out_dir, "splits": list(table)}


def _set_context(model, context: str | None) -> str:
    """Apply ``--context left,right`` to a Conformer; a description for the log."""
    enc = model.encoder
    if context is None:
        ctx = getattr(enc, "context", None)
        return f", context {list(ctx)}" if ctx is not None else ""
    if not hasattr(enc, "set_context"):
        raise SystemExit(f"--context applies to Conformer encoders; this model's encoder is {model.config.encoder}")
    trained = " ".join(f"{a},{b}" for a, b in enc.contexts)
    try:
        left, right = (int(v) for v in context.split(","))
        enc.set_context(left, right)
    except ValueError as e:
        raise SystemExit(f"--context expects LEFT,RIGHT encoder frames (trained: {trained}): {e}") from None
    if [left, right] not in [list(c) for c in enc.contexts]:
        log.warning("context %d,%d was not trained (trained: %s): expect a worse WER", left, right, trained)
    ms = right * enc.subsampling * model.features.frame_shift * 1000
    return f", context [{left}, {right}] ({ms:.0f} ms look-ahead)"


# ---------------------------------------------------------------------- transcribe
def cmd_transcribe(args: argparse.Namespace) -> None:
    if args.beam < 1 or (args.threads is not None and args.threads < 1):
        raise SystemExit(f"error: --beam and --threads must be >= 1, got {args.beam} and {args.threads}")
    _check_lm_args(args)
    if args.onnx:
        args.threads = args.threads or 1
        return _transcribe_onnx(args)
    if args.model is None or not args.audio:
        raise SystemExit("error: transcribe needs a model file and audio files (or --onnx DIR and audio files)")
    from .data.audio import read_audio
    from .models import load

    if args.int8:
        raise SystemExit("error: --int8 applies to --onnx DIR (the exported int8 files), not to a model file")
    try:
        model = load(args.model)
        if args.ctc_guard is not None:
            model.check_ctc_guard(args.ctc_guard, args.method, args.use_ctc)
        if args.use_ctc and model.ctc is None:
            raise ValueError(f"--use-ctc: {args.model} has no CTC head (a {model.config.head} model)")
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    fusion = _fusion(args, model.tokenizer)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from tqdm.auto import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    # One file at a time (decoding 120 s of files together was 10% faster on the mini test
    # sets and took 58% more memory); on a terminal, more than one file gets a progress bar,
    # and the results, errors and log lines are written above it.
    failed = 0
    with logging_redirect_tqdm(), tqdm(args.audio, unit="file", leave=False, dynamic_ncols=True,
                                       disable=None if len(args.audio) > 1 else True) as bar:
        for path in bar:
            try:
                samples = read_audio(path, model.features.sample_rate)
            except (FileNotFoundError, ValueError) as e:
                tqdm.write(f"error: {e}", file=sys.stderr)
                failed += 1
                continue
            t0 = time.perf_counter()
            (res,) = model.transcribe(samples, ctc_guard=args.ctc_guard, method=args.method, beam=args.beam,
                                      use_ctc=args.use_ctc, fusion=fusion)
            tqdm.write(_transcript_line(path, res, args.timestamps), file=sys.stdout)
            log.debug("%s: %.2f s audio in %.3f s", path, len(samples) / model.features.sample_rate, time.perf_counter() - t0)
    if failed:
        raise SystemExit(1)


def _transcript_line(path: str, res, timestamps: bool) -> str:
    """``asr transcribe``'s line for one file: ``path<TAB>text`` (and ``<TAB>[token@seconds ...]``)."""
    if not timestamps:
        return f"{path}\t{res.text}"
    return f"{path}\t{res.text}\t[" + " ".join(f"{tok}@{ts:.2f}" for tok, ts in zip(res.tokens, res.timestamps)) + "]"


def _onnx_recognizer(args: argparse.Namespace, endpoint):
    """A ``serve.Recognizer`` for ``--onnx DIR`` (the torch-free runtime: no torch import)."""
    from serve import Recognizer

    try:
        return Recognizer(args.onnx, decoding=args.method, beam=args.beam, num_threads=args.threads, int8=args.int8,
                          use_ctc=args.use_ctc, endpoint=endpoint, max_symbols=10 if getattr(args, "max_symbols", None) is None else args.max_symbols,
                          ctc_guard=getattr(args, "ctc_guard", None), lm=args.lm, lm_unit=args.lm_unit,
                          lm_weight=args.lm_weight, token_bonus=args.token_bonus)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None


def _transcribe_onnx(args: argparse.Namespace) -> None:
    """``asr transcribe --onnx DIR files...``: streaming decoding with the exported files, one
    segment per file (no endpointing), exactly the torch StreamingRecognizer's result."""
    from serve import EndpointConfig

    from .data.audio import read_audio

    files = ([args.model] if args.model else []) + list(args.audio)
    if not files:
        raise SystemExit("error: no audio files given")
    rec = _onnx_recognizer(args, EndpointConfig(enabled=False))
    failed = 0
    for path in files:
        try:
            samples = read_audio(path, rec.sample_rate)
        except (FileNotFoundError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            failed += 1
            continue
        t0 = time.perf_counter()
        res = _transcribe_file(rec, samples, path)
        print(_transcript_line(path, res, args.timestamps))
        log.debug("%s: %.2f s audio in %.3f s", path, len(samples) / rec.sample_rate, time.perf_counter() - t0)
    if failed:
        raise SystemExit(1)


def _transcribe_file(rec, samples, path: str):
    """One recording through one stream, fed and decoded :data:`FEED_SECONDS` at a time: the
    result of ``rec.transcribe(samples)`` (streaming is exact however the audio is cut), with
    the features of a piece at a time held instead of the whole recording's, and, on a
    terminal, a progress bar for a recording over a minute (30 minutes take about 3 minutes)."""
    from tqdm.auto import tqdm

    rate, step = rec.sample_rate, int(FEED_SECONDS * rec.sample_rate)
    stream = rec.create_stream()
    total = len(samples) / rate
    with tqdm(total=round(total, 1), unit="s", desc=Path(path).name, leave=False, dynamic_ncols=True,
              disable=None if total > 60 else True, bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s "
              "of audio [{elapsed}<{remaining}]") as bar:
        for i in range(0, len(samples), step):
            piece = samples[i:i + step]
            stream.accept_waveform(rate, piece)
            rec.decode(stream)
            bar.update(round(len(piece) / rate, 1))
        stream.input_finished()
        rec.decode(stream)
    return stream.transcript()


#: Seconds of audio ``asr transcribe --onnx`` feeds its stream between decoding calls.
FEED_SECONDS = 10.0


# ---------------------------------------------------------------------- stream
def cmd_stream(args: argparse.Namespace) -> None:
    """Live recognition with the exported ONNX files (torch-free): from a microphone (--mic), or
    simulated from a file."""
    if args.list_devices:
        from serve.mic import MicError, format_devices, list_input_devices

        try:
            print(format_devices(list_input_devices()))
        except MicError as e:
            raise SystemExit(f"error: {e}") from None
        return
    if args.mic == bool(args.audio):
        raise SystemExit("error: give an audio file or --mic (not both)" if args.mic else
                         "error: give an audio file to stream, or --mic to listen to a microphone")
    if not args.onnx:
        raise SystemExit("error: --onnx DIR is required (an `asr export` directory)")
    _check_lm_args(args)
    if not args.mic:
        for name in ("device", "seconds", "save"):
            if getattr(args, name) is not None:
                raise SystemExit(f"error: --{name} applies to --mic only")
    elif args.realtime:
        raise SystemExit("error: --realtime applies to files (a microphone is real time)")
    if not 0 < args.piece_ms < float("inf"):  # NaN too
        raise SystemExit(f"error: --piece-ms must be positive and finite, got {args.piece_ms}")
    if args.seconds is not None and not 0 < args.seconds < float("inf"):  # inf was an OverflowError traceback
        raise SystemExit(f"error: --seconds must be positive and finite (leave it out to listen until Ctrl-C), "
                         f"got {args.seconds}")
    endpoint = _endpoint_config(args)
    if args.mic:
        _stream_mic(args, endpoint)
    else:
        _stream_file(args, endpoint)


def _stream_mic(args: argparse.Namespace, endpoint) -> None:
    """``asr stream --mic``: partial text as it changes, a final line per segment; stops after
    --seconds or at Ctrl-C, SIGTERM or SIGHUP, after decoding the last words (serve/mic.py)."""
    import math

    from serve.mic import LiveDisplay, MicError, Microphone, WavRecorder, run_live

    try:
        mic = Microphone(args.device, block_seconds=args.piece_ms / 1000)  # the device's own rate
    except MicError as e:
        raise SystemExit(f"error: {e}") from None
    rec = _onnx_recognizer(args, endpoint)
    print(f"{rec}\n{mic}", file=sys.stderr, flush=True)

    def started() -> None:
        until = f"for {args.seconds:g} s" if args.seconds else "until Ctrl-C"
        print(f"listening {until} ...", file=sys.stderr, flush=True)

    save = None
    if args.save:
        try:  # float samples: decoding the file gives exactly what was shown live; valid after a crash too
            save = WavRecorder(args.save, mic.rate)
        except (OSError, ValueError) as e:
            raise SystemExit(f"error: cannot write --save {args.save}: {e} (it writes a float WAV file: "
                             "name it FILE.wav)") from None
    t0 = time.perf_counter()
    try:
        stream = run_live(rec, mic, LiveDisplay(partials=not args.quiet), seconds=args.seconds, on_start=started,
                          on_audio=save.write if save is not None else None)
    except MicError as e:
        raise SystemExit(f"error: {e}") from None
    except KeyboardInterrupt:  # a second Ctrl-C: abort without the last words
        print("\ninterrupted", file=sys.stderr)
        raise SystemExit(130) from None
    finally:
        if save is not None:
            save.close()
    wall = time.perf_counter() - t0
    print(f"text: {stream.transcript().text}", flush=True)
    audio = mic.decoded / mic.rate  # what was transcribed: --seconds of it, not the device's last block beyond
    peak = 20 * math.log10(mic.peak) if mic.peak > 0 else float("-inf")
    print(f"captured {audio:.2f} s at {mic.rate} Hz (peak {peak:.1f} dBFS) in {wall:.2f} s; "
          f"at most {mic.max_backlog:.2f} s of audio waited for decoding"
          + (f"; {mic.overflows} blocks overflowed (samples lost: the machine was too busy)" if mic.overflows else ""),
          file=sys.stderr, flush=True)
    if mic.peak == 0:
        print("warning: the device delivered only silence: is the microphone muted? (--list-devices)",
              file=sys.stderr, flush=True)
    elif mic.clipped:  # distorted audio decodes worse
        print(f"warning: {mic.clipped} samples ({100 * mic.clipped / max(1, mic.samples):.2g}%) reached full scale: the "
              "input clips; lower the microphone's gain", file=sys.stderr, flush=True)


def _stream_file(args: argparse.Namespace, endpoint) -> None:
    """``asr stream FILE``: live recognition simulated from a file, with timings."""
    import soundfile as sf

    from serve.simulate import simulate

    from .data.audio import read_audio

    rec = _onnx_recognizer(args, endpoint)
    try:
        rate = sf.info(args.audio).samplerate  # fed at its own rate: the runtime resamples
    except Exception:
        rate = rec.sample_rate  # read_audio names the problem
    try:
        samples = read_audio(args.audio, rate)
        stream = rec.create_stream()
        stream.accept_waveform(rate, samples[:0])  # a rate the runtime cannot resample (191999 Hz) is refused here
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    print(f"{rec}\nstreaming {args.audio}: {len(samples) / rate:.2f} s at {rate} Hz in {args.piece_ms:g} ms pieces"
          f"{' (real time)' if args.realtime else ''}", flush=True)

    def partial(r) -> None:
        print(f"partial {r.end:7.2f}s | {r.text}", flush=True)

    def final(r) -> None:
        why = f" ({r.endpoint})" if r.endpoint else ""
        print(f"final   {r.start:7.2f}-{r.end:.2f}s{why} | {r.text}", flush=True)

    try:
        stats, stream = simulate(rec, samples, rate, piece_seconds=args.piece_ms / 1000, realtime=args.realtime,
                                 on_partial=partial if not args.quiet else None, on_final=final, stream=stream)
    except KeyboardInterrupt:  # the segments so far are printed; no summary for part of a file
        print("\ninterrupted", file=sys.stderr)
        raise SystemExit(130) from None
    st = stats.summary()
    print(f"text: {stream.transcript().text}")
    print(f"audio {st['audio_s']:.2f} s, compute {st['compute_s']:.3f} s, RTF {st['rtf']:.4f}, {st['windows']} windows "
          f"of {rec.window_seconds * 1000:.0f} ms (shift {rec.chunk_seconds * 1000:.0f} ms)")
    print(f"latency: per piece p50 {st['piece_ms_p50']:.2f} ms p95 {st['piece_ms_p95']:.2f} ms max {st['piece_ms_max']:.2f} ms; "
          f"per window p50 {st['window_ms_p50']:.2f} ms p95 {st['window_ms_p95']:.2f} ms; "
          f"token p50 {st['token_latency_ms_p50']:.0f} ms p95 {st['token_latency_ms_p95']:.0f} ms; final {st['final_ms']:.2f} ms")


def _endpoint_config(args: argparse.Namespace):
    """``serve.EndpointConfig`` from ``--rule1/--rule2/--rule3/--no-endpoint``."""
    from serve import EndpointConfig, EndpointRule

    given = [f"--{r}" for r in ("rule1", "rule2", "rule3") if getattr(args, r) is not None]
    if args.no_endpoint and given:
        raise SystemExit(f"error: {' and '.join(given)} set endpoint rules, which --no-endpoint turns off: give one or the other")
    d = EndpointConfig()  # a rule not given keeps its default (sherpa-onnx's)
    rule1 = d.rule1.min_trailing_silence if args.rule1 is None else args.rule1
    rule2 = d.rule2.min_trailing_silence if args.rule2 is None else args.rule2
    rule3 = d.rule3.min_utterance_length if args.rule3 is None else args.rule3
    try:
        return EndpointConfig(
            enabled=not args.no_endpoint,
            rule1=EndpointRule(False, rule1, 0.0),
            rule2=EndpointRule(True, rule2, 0.0),
            rule3=EndpointRule(False, 0.0, rule3),
        )
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None


# ---------------------------------------------------------------------- serve
def cmd_serve(args: argparse.Namespace) -> None:
    """WebSocket server and web page for live recognition (torch-free; see docs/live.md)."""
    from serve.server import ServerConfig, serve

    _check_lm_args(args)
    try:
        config = ServerConfig(
            host=args.host, port=args.port, token=args.token, max_connections=args.max_connections,
            max_message_bytes=args.max_message_bytes, max_buffered_seconds=args.max_buffered_seconds,
            idle_timeout=args.idle_timeout, max_stream_seconds=args.max_stream_seconds,
            certfile=args.certfile, keyfile=args.keyfile, web=not args.no_web,
        )
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    rec = _onnx_recognizer(args, _endpoint_config(args))
    if not args.verbose:
        logging.getLogger("websockets").setLevel(logging.WARNING)  # not a line per connection

    def ready(server) -> None:
        ws = server.url.replace("http", "ws", 1) + "ws"
        page = f"page {server.url}{'?token=...' if config.token else ''}, " if config.web else ""
        print(f"{rec}\nlistening on {server.url} ({page}WebSocket {ws}); Ctrl-C stops", flush=True)

    try:
        serve(rec, config, ready=ready)
    except ValueError as e:  # a TLS certificate or key it cannot use
        raise SystemExit(f"error: {e}") from None
    except OSError as e:  # the port is taken, the address is not this machine's, ...
        raise SystemExit(f"error: cannot listen on {args.host}:{args.port}: {e}") from None


# ---------------------------------------------------------------------- bench
def cmd_bench(args: argparse.Namespace) -> None:
    """``asr bench runtime ...`` = ``python -m serve.bench ...``; ``asr bench serve ...`` =
    ``python -m serve.loadtest ...``; ``asr bench search ...`` = ``python -m asr.decoding.bench
    ...`` (the options are passed on)."""
    if args.what == "runtime":
        from serve.bench import main as runtime_main

        return runtime_main(args.rest, prog="asr bench runtime")
    elif args.what == "search":
        from asr.decoding.bench import main as search_main

        return search_main(args.rest, prog="asr bench search")
    else:
        from serve.loadtest import main as bench_main
    bench_main(args.rest)


# ---------------------------------------------------------------------- tokenizer
def _cut_texts(paths: list[str]):
    """The supervision texts of cut manifests (an error names a manifest that is missing)."""
    for path in paths:
        for cut in _read_cuts(path, " (run `asr prepare` first)"):
            for sup in cut.supervisions:
                if sup.text:
                    yield sup.text


def cmd_tokenizer(args: argparse.Namespace) -> None:
    from .data.tokenizer import Tokenizer

    if args.vocab_size < 3:
        raise SystemExit(f"error: --vocab-size must be >= 3 (blank, unk and a piece), got {args.vocab_size}")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise SystemExit(f"error: --out {args.out} is a file; the tokenizer is a directory")
    try:
        tok = Tokenizer.train(_cut_texts(args.cuts), args.vocab_size, args.model_type, args.out)
    except (ValueError, RuntimeError, OSError) as e:  # sentencepiece reports a bad request as a RuntimeError
        raise SystemExit(f"error: {e}") from None
    print(f"{args.model_type} tokenizer with {len(tok)} tokens -> {args.out}/bpe.model, {args.out}/tokens.txt")


# ---------------------------------------------------------------------- lm
def _tokenizer_of(args: argparse.Namespace):
    """The tokenizer of ``--model FILE`` (its own) or ``--tokenizer DIR``."""
    from .data.tokenizer import Tokenizer

    if bool(args.model) == bool(args.tokenizer):
        raise SystemExit("error: give --model FILE (its tokenizer) or --tokenizer DIR, one of them")
    try:
        if args.model:
            from .models import model_dict, read_checkpoint

            data = model_dict(read_checkpoint(args.model), args.model).get("tokenizer")
            if not data:
                raise SystemExit(f"error: {args.model} carries no tokenizer: give --tokenizer DIR")
            return Tokenizer.from_bytes(data)
        return Tokenizer.load(args.tokenizer)
    except (FileNotFoundError, ValueError, KeyError) as e:
        raise SystemExit(f"error: cannot read the tokenizer: {e}") from None


def _text_lines(paths: list[str]):
    """The lines of ``asr lm --text`` files (UTF-8, a BOM allowed; gzip told by its first
    bytes), normalized as ``asr prepare`` normalizes transcripts; empty ones are dropped."""
    import gzip

    from .data.text import normalize_librispeech

    for path in paths:
        p = Path(path)
        if not p.is_file():
            raise SystemExit(f"error: --text {path}: no such file")
        try:
            with open(p, "rb") as f:
                gz = f.read(2) == b"\x1f\x8b"
            with gzip.open(p, "rt", encoding="utf-8-sig") if gz else open(p, encoding="utf-8-sig") as f:
                for line in f:
                    text = normalize_librispeech(line)
                    if text:
                        yield text
        except (UnicodeDecodeError, OSError, EOFError) as e:
            raise SystemExit(f"error: --text {path}: not UTF-8 text, plain or gzip ({type(e).__name__}: {e})") from None


def _lm_texts(args: argparse.Namespace) -> list[str]:
    """``asr lm``'s training sentences: the transcripts of --cuts and the lines of --text."""
    if not args.cuts and not args.text:
        raise SystemExit("error: give the text to train on: --cuts MANIFEST... (their transcripts) and/or --text FILE...")
    texts = [t for t in _cut_texts(args.cuts or []) if t.split()] + list(_text_lines(args.text or []))
    if not texts:
        raise SystemExit("error: " + " and ".join(w for w, given in [("the cut manifests have no transcripts", args.cuts),
                                                                     ("the --text files have no line of text", args.text)]
                                                  if given) + " to train an LM on")
    return texts


def _spellable(tok, texts: list[str], what: str) -> tuple[list[str], str]:
    """The texts whose every character the tokenizer has (the others would train or score its
    <unk>; ``asr prepare`` leaves such cuts out of training too), and a note on those left out."""
    kept, odd, left = [], Counter(), 0
    for t in texts:
        missing = tok.missing_chars(t)
        if missing:
            left += 1
            odd.update(missing)
        else:
            kept.append(t)
    if not left:
        return kept, ""
    shown = ", ".join(repr(ch) for ch, _ in sorted(odd.items(), key=lambda kv: (-kv[1], kv[0]))[:8])
    return kept, f"; {left} of {len(texts)} {what} left out: the tokenizer cannot spell {shown}"


def cmd_lm(args: argparse.Namespace) -> None:
    """Token or word n-gram LM (interpolated Kneser-Ney) on transcripts or text -> ARPA, for
    beam-search fusion (a word LM's vocabulary is the decoding lexicon)."""
    from .decoding.lm import NgramLM

    if args.order < 1:
        raise SystemExit(f"error: --order must be >= 1, got {args.order}")
    if Path(args.out).is_dir():
        raise SystemExit(f"error: --out {args.out} is a directory: give the LM a file name (e.g. {Path(args.out) / 'lm.arpa'})")

    def save(lm, symbols) -> None:
        try:
            lm.save_arpa(args.out, symbols, progress=not args.no_progress)
        except OSError as e:
            raise SystemExit(f"error: --out {args.out}: cannot write the LM ({type(e).__name__}: {e})") from None

    if args.unit == "word":
        from .decoding.lexicon import train_word_lm

        texts = _lm_texts(args)
        lm, symbols = train_word_lm(texts, args.order)
        save(lm, symbols)
        ids = {w: i for i, w in enumerate(symbols)}
        words = lambda ts: [[ids.get(w, 0) for w in t.split()] for t in ts if t.split()]  # noqa: E731
        msg = (f"{args.order}-gram word LM on {len(texts)} sentences ({sum(len(t.split()) for t in texts)} words, "
               f"vocabulary {len(symbols) - 1}; n-grams {' / '.join(map(str, lm.num_ngrams()))}) -> {args.out}")
        if args.dev:
            dev = list(_cut_texts(args.dev))
            oov = sum(w not in ids for t in dev for w in t.split())
            closed = [t for t in dev if t.split() and all(w in ids for w in t.split())]  # perplexity excluding OOV sentences
            dev_ppl = f"{lm.perplexity(words(closed)):.2f}" if closed else "- (no dev sentence is all in the vocabulary)"
            msg += (f"; perplexity per word: train {lm.perplexity(words(texts)):.2f}, dev {dev_ppl} "
                    f"({len(closed)} of {len(dev)} sentences; {oov} of {sum(len(t.split()) for t in dev)} dev words are "
                    "out of the vocabulary, which the lexicon cannot output)")
        if args.model or args.tokenizer:  # the model it is for: words it cannot spell stay out of its lexicon
            tok = _tokenizer_of(args)
            odd = [w for w in symbols if not w.startswith("<") and tok.missing_chars(w)]
            if odd:
                msg += (f"; {len(odd)} of {len(symbols) - 1} words have characters the tokenizer cannot spell (e.g. "
                        f"{', '.join(map(repr, odd[:3]))}): decoding leaves them out of its lexicon")
        print(msg)
        return
    tok = _tokenizer_of(args)
    texts, note = _spellable(tok, _lm_texts(args), "sentences")
    if not texts:
        raise SystemExit(f"error: no sentence to train the LM on{note} (is this the model's tokenizer, and the text "
                         "written as its transcripts are?)")
    seqs = [s for s in tok.encode_batch(texts) if s]
    lm = NgramLM.train(seqs, args.order, len(tok))
    save(lm, tok.pieces())
    msg = (f"{args.order}-gram token LM on {len(seqs)} sentences ({sum(map(len, seqs))} tokens; n-grams "
           f"{' / '.join(map(str, lm.num_ngrams()))}) -> {args.out}{note}")
    if args.dev:
        dev, dev_note = _spellable(tok, [t for t in _cut_texts(args.dev) if t.split()], "dev sentences")
        dev = [s for s in tok.encode_batch(dev) if s]
        msg += (f"; perplexity per token: train {lm.perplexity(seqs):.3f}, "
                f"dev {f'{lm.perplexity(dev):.3f}' if dev else '- (no dev text)'}{dev_note}")
    print(msg)


def _fusion(args: argparse.Namespace, tokenizer):
    """``--lm FILE --lm-weight A --token-bonus B`` -> an LMFusion (None without --lm) for a
    model file's search (:func:`_check_lm_args` has checked the options)."""
    if not args.lm:
        return None
    if tokenizer is None:
        raise SystemExit("error: --lm: the model file carries no tokenizer, which the LM's tokens are read with")
    from .decoding.lexicon import load_lm
    from .decoding.lm import LMFusion

    try:
        lm = load_lm(args.lm, args.lm_unit, tokenizer.pieces(), tokenizer.encode_batch, progress=not getattr(args, "no_progress", False))
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: --lm: {e}") from None
    return LMFusion(lm, args.lm_weight, args.token_bonus)  # weights checked by _check_lm_args


def _check_lm_args(args: argparse.Namespace) -> None:
    """The ``--lm`` options (:func:`_lm_args`) checked before any model loads; fills in the
    default weights when there is an LM."""
    if not args.lm:
        if args.lm_weight is not None or args.token_bonus is not None:
            raise SystemExit("error: --lm-weight and --token-bonus weigh an LM's scores: add --lm FILE")
        if args.lm_unit != "token":
            raise SystemExit("error: --lm-unit says what --lm's words are: add --lm FILE")
        return
    if args.method != "beam":
        raise SystemExit("error: --lm fuses an LM into beam search: add --method beam")
    args.lm_weight = 0.5 if args.lm_weight is None else args.lm_weight
    args.token_bonus = 0.0 if args.token_bonus is None else args.token_bonus
    from .decoding.lm import LMFusion  # numpy only

    try:
        LMFusion.check(args.lm_weight, args.token_bonus)
    except ValueError as e:
        raise SystemExit(f"error: --lm-weight/--token-bonus: {e}") from None


def _lm_what(args: argparse.Namespace) -> str:
    """The LM part of a decode's description ("" without one)."""
    if not args.lm:
        return ""
    return f", {args.lm_unit} LM {Path(args.lm).name} (weight {args.lm_weight}, bonus {args.token_bonus})"


# ---------------------------------------------------------------------- prepare-noise
def _noise_recording(path: Path):
    """A lhotse Recording of ``path``, or why it cannot be read (a one-line string)."""
    from lhotse import Recording

    try:
        rec = Recording.from_file(path)
    except Exception as e:  # noqa: BLE001 - lhotse's AudioLoadingError, soundfile's, ...: the file's fault
        return " ".join(f"{type(e).__name__}: {e}".split())[:300]
    return rec if rec.num_samples > 0 else "no samples"  # nothing to mix in


def cmd_prepare_noise(args: argparse.Namespace) -> None:
    """MUSAN (or any dir of audio files) -> one lhotse RecordingSet for noise augmentation."""
    from concurrent.futures import ThreadPoolExecutor

    from lhotse import RecordingSet

    src, out = Path(args.musan), Path(args.out)
    if not src.is_dir():
        raise SystemExit(f"error: not a directory: {src}")
    if out.exists() and not out.is_dir():
        raise SystemExit(f"error: --out {out} is a file; prepare-noise writes OUT/recordings.jsonl.gz")
    if args.jobs < 1:
        raise SystemExit(f"error: --jobs must be >= 1, got {args.jobs}")
    if args.parts is None:  # MUSAN's parts that are there, else the whole dir
        parts = [src / p for p in ("music", "noise", "speech") if (src / p).is_dir()] or [src]
    else:  # named parts must be there: a misspelt one used to take the whole dir, speech included
        missing = [p for p in args.parts if not (src / p).is_dir()]
        if missing:
            there = sorted(d.name for d in src.iterdir() if d.is_dir())
            raise SystemExit(f"error: --parts {' '.join(missing)}: no such directory in {src} (it has: "
                             f"{', '.join(there) or 'no directories'})")
        parts = [src / p for p in args.parts]
    files = sorted({f for p in parts for f in p.rglob("*.wav") if f.is_file()})
    if not files:
        raise SystemExit(f"error: no .wav files under {', '.join(map(str, parts))}")
    with ThreadPoolExecutor(args.jobs) as ex:  # a header each: I/O-bound
        read = list(ex.map(_noise_recording, files))
    bad = [(f, r) for f, r in zip(files, read) if isinstance(r, str)]
    for f, why in bad:  # one unreadable file among MUSAN's thousands used to abort with a traceback
        log.warning("skipping %s: %s", f, why)
    recs = RecordingSet.from_recordings(r for r in read if not isinstance(r, str))
    if len(recs) == 0:
        raise SystemExit(f"error: none of the {len(files)} .wav files under {', '.join(map(str, parts))} could be read")
    out.mkdir(parents=True, exist_ok=True)
    recs.to_file(out / "recordings.jsonl.gz")
    print(f"{len(recs)} noise recordings ({sum(r.duration for r in recs) / 3600:.1f} h) -> {out / 'recordings.jsonl.gz'}"
          + (f"; {len(bad)} unreadable file(s) skipped (the warnings above name them)" if bad else ""))


# ---------------------------------------------------------------------- info
def _results_files(path: Path) -> dict[str, Path]:
    """split -> results file of an ``asr decode`` output dir, or of one ``results_<split>.txt``."""
    if path.is_file():
        return {path.name.removeprefix("results_").removesuffix(".txt"): path}
    if not path.is_dir():
        raise SystemExit(f"error: {path}: no such decode dir or results file")
    files = {p.name.removeprefix("results_").removesuffix(".txt"): p for p in sorted(path.glob("results_*.txt"))}
    if not files:
        raise SystemExit(f"error: {path}: no results_<split>.txt in it (an `asr decode` output dir holds them)")
    return files


def cmd_compare(args: argparse.Namespace) -> None:
    from .decoding.wer import compare_results

    if args.samples < 100:
        raise SystemExit(f"error: --samples must be >= 100 for a 95% interval, got {args.samples}")
    if args.json and Path(args.json).is_dir():
        raise SystemExit(f"error: --json {args.json} is a directory; give a file")
    a, b = _results_files(Path(args.a)), _results_files(Path(args.b))
    if Path(args.a).is_file() and Path(args.b).is_file():
        pairs = {next(iter(a)) if next(iter(a)) == next(iter(b)) else "results": (next(iter(a.values())), next(iter(b.values())))}
    else:
        common = [s for s in a if s in b]
        if not common:
            raise SystemExit(f"error: {args.a} ({', '.join(a)}) and {args.b} ({', '.join(b)}) share no split")
        pairs = {s: (a[s], b[s]) for s in common if not args.splits or s in args.splits}
        if args.splits and set(args.splits) - set(pairs):
            raise SystemExit(f"error: --splits {' '.join(sorted(set(args.splits) - set(pairs)))}: not decoded in both ({', '.join(common)})")
    report = {"a": str(args.a), "b": str(args.b), "samples": args.samples, "seed": args.seed, "splits": {}}
    for name, (pa, pb) in pairs.items():  # every split first: an error comes before any table
        try:
            report["splits"][name] = compare_results(pa, pb, samples=args.samples, seed=args.seed)
        except ValueError as e:
            raise SystemExit(f"error: {name}: {e}") from None
    print(f"A = {args.a}\nB = {args.b}\npaired bootstrap over utterances, {args.samples} resamples:")
    print(f"{'split':<14}{'WER A':>8}{'WER B':>8}{'B - A':>8}{'95% interval':>18}{'P(B better)':>13}{'utts B better / worse':>23}")
    for name, r in report["splits"].items():
        lo, hi = r["ci95"]
        utts = f"{r['utts_b_better']} / {r['utts_b_worse']}"
        print(f"{name:<14}{r['wer_a']:>8.2f}{r['wer_b']:>8.2f}{r['diff']:>+8.2f}{f'[{lo:+.2f}, {hi:+.2f}]':>18}"
              f"{r['p_b_better']:>13.3f}{utts:>23}")
    print("(an interval that excludes 0: the difference holds beyond the sample of test utterances; "
          "it does not measure training-run variance)")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


def cmd_info(args: argparse.Namespace) -> None:
    from .models import load

    try:
        model = load(args.model)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    enc = model.encoder
    contexts = getattr(enc, "contexts", None)
    if args.contexts:  # for scripts: the trained [left, right] contexts, or "-" when not a Conformer
        print(" ".join(f"{left},{right}" for left, right in contexts) if contexts else "-")
        return
    cfg = model.config
    n = sum(p.numel() for p in model.parameters())
    print(f"model:       {args.model}")
    print(f"encoder:     {cfg.encoder} ({enc.subsampling}x, {enc.output_dim} dims)")
    head = cfg.head + (f" + CTC (weight {cfg.ctc_weight})" if cfg.head != "ctc" and cfg.ctc_weight > 0 else "")
    if (cfg.ctc_warmup_steps or cfg.ctc_warmup_accuracy) and cfg.head != "ctc":  # the transducer joins after it
        head += f", CTC warm-up {cfg.ctc_warmup_steps} steps"
        if cfg.ctc_warmup_accuracy:
            head += f" and on until the CTC head's token accuracy is {cfg.ctc_warmup_accuracy:g}"
            head += f" (step {cfg.ctc_warmup_max_steps} at most)" if cfg.ctc_warmup_max_steps else ""
    print(f"head:        {head}")
    if model.transducer is not None and model.transducer.durations is not None:  # tdt, pruned_tdt
        print(f"durations:   {model.transducer.durations}")
    print(f"parameters:  {n / 1e6:.2f}M")
    print(f"vocabulary:  {cfg.vocab_size} tokens")
    if contexts:
        ms = enc.subsampling * model.features.frame_shift * 1000
        print("contexts:    " + ", ".join(f"[{left}, {right}] ({right * ms:.0f} ms look-ahead)" for left, right in contexts))
    p = enc.streaming_params()
    print(f"streaming:   window {p['window']} frames, shift {p['shift']} frames")
    meta = read_meta(args.model)
    if meta:
        print(f"training:    {json.dumps(meta)}")


# ---------------------------------------------------------------------- export
def cmd_export(args: argparse.Namespace) -> None:
    from exporters import export_file

    try:
        card = export_file(args.model, args.out, int8=args.int8, lookahead_ms=args.lookahead, sherpa=not args.no_sherpa)
    except (OSError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    out = Path(args.out)
    print(f"{card['encoder']} {card['head']} model -> {out}/ (window {card['window']} frames, shift "
          f"{card['shift']}, look-ahead {card['lookahead_ms']} ms)")
    for key, f in card["files"].items():
        extra = f" (+ {f['int8']})" if "int8" in f else ""
        print(f"  {key:<16} {f['path']}{extra}")
    for kind, info in card["sherpa_onnx"].items():
        if "unsupported" in info:
            print(f"  sherpa-onnx {kind}: not exported: {info['unsupported']}")
        else:
            mt = f" (model_type {info['model_type']})" if "model_type" in info else ""
            print(f"  sherpa-onnx {kind}: {info['api']}{mt}")
    print(f"  metadata card  {out / 'model.json'}")


def read_meta(path: str) -> dict:
    from .models import model_dict, read_checkpoint

    return model_dict(read_checkpoint(path), path).get("meta") or {}


def _onnx_args(sp: argparse.ArgumentParser, required: bool, model_too: bool = False) -> None:
    """--onnx and the decoding options; ``model_too``: they also apply to a model file."""
    w = "" if model_too else "with --onnx: "
    sp.add_argument("--onnx", metavar="DIR", required=required, help="an `asr export` directory: run its ONNX files (no torch)")
    sp.add_argument("--int8", action="store_true", help="with --onnx: the *.int8.onnx files")
    sp.add_argument("--method", choices=["greedy", "beam"], default="greedy", help=f"{w}decoding method")
    sp.add_argument("--beam", type=int, default=4, help=f"{w}beam size for --method beam")
    sp.add_argument("--use-ctc", action="store_true", help=f"{w}decode a hybrid model's CTC head")
    sp.add_argument("--threads", type=int, default=None if model_too else 1, help=(
        "onnxruntime threads (default 1); with a model file, torch threads (default: torch's)" if model_too
        else "with --onnx: onnxruntime threads"))
    _lm_args(sp)


def _lm_args(sp: argparse.ArgumentParser) -> None:
    """``--lm``, ``--lm-unit``, ``--lm-weight``, ``--token-bonus`` (checked by :func:`_check_lm_args`)."""
    sp.add_argument("--lm", metavar="ARPA", help="n-gram LM (`asr lm`) fused into --method beam (transducer or, for a "
                    "model file, CTC prefix search)")
    sp.add_argument("--lm-unit", choices=["token", "word"], default="token", help=(
        "what --lm's words are: the model's tokens (default), or words (`asr lm --unit word`): the search is then "
        "restricted to the LM's vocabulary, spelled by the model's tokenizer"))
    sp.add_argument("--lm-weight", type=float, help="with --lm: weight (>= 0) of the LM log-probability (default 0.5)")
    sp.add_argument("--token-bonus", type=float, help="with --lm: score added per emitted token (default 0)")


def _endpoint_args(sp: argparse.ArgumentParser, without: str) -> None:
    """``--no-endpoint`` and the rules that :func:`_endpoint_config` reads."""
    sp.add_argument("--no-endpoint", action="store_true", help=f"no endpoint detection: {without}")
    sp.add_argument("--rule1", type=float, help="endpoint after this much silence with nothing decoded (s; default 2.4)")
    sp.add_argument("--rule2", type=float, help="endpoint after this much silence following speech (s; default 1.2)")
    sp.add_argument("--rule3", type=float, help="endpoint when a segment reaches this length (s; default 20)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="asr", description="Streaming speech recognition toolkit")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="cmd", required=True)

    sp = sub.add_parser("prepare", help="corpus -> cut manifests and tokenizer", description=(
        "Read a corpus (LibriSpeech dir, Kaldi data dir, JSONL manifest, lhotse manifest, or 'mini' "
        "to build the embedded TTS corpus), skip and count bad files, normalize text, and write "
        "OUT/manifests/cuts_<part>.jsonl.gz. Trains a sentencepiece tokenizer on the training parts "
        "into OUT/lang_<type><size>/ (OUT/lang_char/ for characters) unless --tokenizer is given."))
    sp.add_argument("--corpus", required=True, help="'mini', or a path to a corpus dir or manifest")
    sp.add_argument("--out", required=True, help="output data dir, e.g. data/mini")
    sp.add_argument("--parts", nargs="*", help="LibriSpeech splits to read (default: all)")
    sp.add_argument("--train-parts", nargs="*", help="parts the tokenizer is trained on (mini: train)")
    sp.add_argument("--name", help="part name for a single-manifest corpus (default: file stem)")
    sp.add_argument("--tokenizer", help="use this existing bpe.model instead of training one")
    sp.add_argument("--no-tokenizer", action="store_true", help="write manifests only (train one later with `asr tokenizer`)")
    sp.add_argument("--vocab-size", type=int, default=256)
    sp.add_argument("--model-type", choices=["bpe", "unigram", "char"], default="bpe")
    sp.add_argument("--min-duration", type=float, default=0.1, help="shorter cuts are skipped (seconds)")
    sp.add_argument("--seed", type=int, help="mini corpus seed (default 0, or the seed of --corpus-config; given, it wins)")
    sp.add_argument("--corpus-config", help="YAML MiniCorpusConfig for the mini corpus")
    sp.add_argument("--jobs", type=int, default=2)
    sp.set_defaults(func=cmd_prepare)

    sp = sub.add_parser("train", help="train a model", formatter_class=argparse.RawDescriptionHelpFormatter, description=(
        "Train from a YAML TrainConfig (see recipes/*/conf). A run started again on the same exp_dir, e.g. after a\n"
        "crash or kill -9, resumes exactly from its newest readable checkpoint.\n\n"
        "Several GPUs (or CPU processes) with DistributedDataParallel, one process per device:\n"
        "  torchrun --nproc_per_node N -m asr.cli train --config conf.yaml\n"
        "Several nodes: run that on every node with --nnodes M --node_rank R --rdzv_backend c10d\n"
        "--rdzv_endpoint HOST:PORT added (exp_dir on a shared file system). data.sampler.max_duration is per\n"
        "process. Mixed precision: --set precision=bf16|fp16|fp32 (default auto: bf16 where the GPU has it;\n"
        "fp32 on the CPU, where precision=bf16 is an opt-in for CPUs with bfloat16 instructions)."))
    sp.add_argument("--config", required=True, help="YAML config (see recipes/*/conf)")
    sp.add_argument("--exp-dir", help="override exp_dir")
    sp.add_argument("--set", nargs="*", action="extend", default=[], metavar="KEY=VALUE",
                    help="override config keys, e.g. optim.lr=1e-3 max_epochs=2 (may be repeated; later keys win)")
    sp.add_argument("--no-progress", action="store_true", help="no progress bars")
    sp.set_defaults(func=cmd_train)

    sp = sub.add_parser("decode", help="WER on cut manifests", description=(
        "Decode cut manifests and report WER with sub/del/ins and RTFx (audio seconds per decoding "
        "second). Greedy or beam search (CTC prefix beam / transducer modified beam), whole-utterance "
        "or --chunkwise (real streaming: encoder caches and decoder state carried window by window); "
        "--onnx DIR [--int8]: the exported files through the torch-free streaming runtime instead."))
    sp.add_argument("--model", help="model file (model.pt); or --onnx DIR")
    sp.add_argument("--cuts", nargs="+", required=True, help="cut manifests (cuts_<name>.jsonl.gz)")
    sp.add_argument("--out", help="results dir (default: next to the model)")
    sp.add_argument("--method", choices=["greedy", "beam"], default="greedy")
    sp.add_argument("--beam", type=int, default=4, help="beam size for --method beam")
    sp.add_argument("--use-ctc", action="store_true", help="decode a hybrid model's CTC head")
    sp.add_argument("--ctc-guard", type=float, metavar="P", help=(
        "hybrid TDT+CTC, greedy: a TDT blank jump passes only over frames whose CTC blank probability exceeds P "
        "and lands on the first other one (0.9 was chosen on the mini dev set; default: off)"))
    _lm_args(sp)
    sp.add_argument("--context", help="Conformer attention context LEFT,RIGHT in encoder frames (see `asr info`)")
    sp.add_argument("--chunkwise", action="store_true", help="stream window by window through forward_chunk")
    sp.add_argument("--max-duration", type=float, default=300.0, help="seconds of audio per batch")
    sp.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's); with --onnx: onnxruntime threads (default 1)")
    sp.add_argument("--device", default="auto", help="--model: cpu, cuda, cuda:N; auto: cuda when there is one, else cpu")
    sp.add_argument("--onnx", metavar="DIR", help="instead of --model: an `asr export` dir, run by the torch-free streaming runtime")
    sp.add_argument("--int8", action="store_true", help="with --onnx: the *.int8.onnx files")
    sp.add_argument("--runtime", choices=["ours", "sherpa"], default="ours",
                    help="with --onnx: our runtime, or sherpa-onnx (PyPI) on the export's sherpa-onnx/ files")
    sp.add_argument("--max-symbols", type=int, help="with --onnx: transducer symbols per frame (default 10; "
                    "sherpa-onnx's greedy search emits at most 1)")
    sp.add_argument("--batch", type=int, help="with --onnx: streams decoded together (default 16)")
    sp.add_argument("--tail-padding", type=float, metavar="SECONDS", help="with --onnx: silence appended to each cut "
                    "(ours: none by default; sherpa-onnx, which runs only full windows: one window and one shift)")
    sp.add_argument("--compare-to", metavar="DIR", help="another `asr decode` output dir: count identical transcripts")
    sp.add_argument("--no-progress", action="store_true", help="no progress bars")
    sp.set_defaults(func=cmd_decode)

    sp = sub.add_parser("transcribe", help="transcribe audio files", description=(
        "Print the transcript of each audio file (any rate, any channels): `asr transcribe model.pt FILES` "
        "(PyTorch, whole utterance) or `asr transcribe --onnx DIR FILES` (the exported ONNX files run by the "
        "torch-free streaming runtime, see docs/runtime.md)."))
    sp.add_argument("model", nargs="?", help="model file (model.pt); with --onnx, the first audio file")
    sp.add_argument("audio", nargs="*", help="audio files (wav, flac, ogg)")
    sp.add_argument("--timestamps", action="store_true", help="print token@seconds")
    sp.add_argument("--ctc-guard", type=float, metavar="P", help=(
        "a hybrid TDT+CTC (model file or --onnx): its blank jumps pass only over frames whose CTC blank probability "
        "exceeds P (see `asr decode --ctc-guard`)"))
    _onnx_args(sp, required=False, model_too=True)
    sp.set_defaults(func=cmd_transcribe)

    sp = sub.add_parser("stream", help="live recognition: a microphone (--mic) or a file (ONNX runtime)",
                        formatter_class=argparse.RawDescriptionHelpFormatter, description=(
        "Live recognition with the torch-free streaming runtime (see docs/runtime.md).\n\n"
        "  asr stream --mic --onnx DIR        listen to the default microphone until Ctrl-C\n"
        "  asr stream --list-devices          the input devices (index, name, channels, rate)\n"
        "  asr stream --onnx DIR FILE         simulate it from a file, with timings\n\n"
        "Partial text is shown as it changes (rewritten in place on a terminal, one line each\n"
        "otherwise) and a final line with start-end times closes every segment at an endpoint.\n"
        "With --mic, Ctrl-C, SIGTERM or SIGHUP (or --seconds) stops the capture, decodes the last words\n"
        "and exits. A file is fed in small pieces as a microphone would deliver it; the real-time\n"
        "factor and latencies (per piece, per window, per token, final) follow."))
    sp.add_argument("audio", nargs="?", help="audio file (any rate: the runtime resamples); not with --mic")
    _onnx_args(sp, required=False)
    sp.add_argument("--mic", action="store_true", help="listen to a microphone (sounddevice/PortAudio) instead of a file")
    sp.add_argument("--device", metavar="N|NAME", help="with --mic: input device index or name (default: the system's)")
    sp.add_argument("--list-devices", action="store_true", help="list the input devices and exit")
    sp.add_argument("--seconds", type=float, metavar="S", help="with --mic: stop after S seconds of audio (default: at Ctrl-C)")
    sp.add_argument("--save", metavar="FILE", help="with --mic: also write the captured audio to FILE (WAV, the device's rate)")
    sp.add_argument("--realtime", action="store_true", help="feed each piece when it would have been recorded")
    sp.add_argument("--piece-ms", type=float, default=100.0, help="piece (--mic: capture block) size in ms (default 100)")
    _endpoint_args(sp, "one segment")
    sp.add_argument("--quiet", action="store_true", help="print final segments only, no partial results")
    sp.set_defaults(func=cmd_stream)
    sp = sub.add_parser("serve", help="live recognition server: WebSocket + web page (ONNX runtime)", description=(
        "Serve an exported model to many clients at once over WebSocket (ws://HOST:PORT/ws) and the live "
        "transcription page (http://HOST:PORT/). Streams are decoded together, one batched model call per "
        "step. Binds 127.0.0.1 unless --host says otherwise; any other address needs --token. The protocol, "
        "limits and close codes are in docs/live.md."))
    _onnx_args(sp, required=True)
    sp.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; 0.0.0.0: every interface, needs --token)")
    sp.add_argument("--port", type=int, default=6006, help="port (default 6006; 0: any free port)")
    sp.add_argument("--token", default=os.environ.get("ASR_SERVE_TOKEN"), help=(
        "shared secret clients must send (/ws?token=T or 'Authorization: Bearer T'; open the page as /?token=T); "
        "default $ASR_SERVE_TOKEN. Required beyond loopback"))
    sp.add_argument("--certfile", help="TLS certificate (PEM): serve https/wss (browsers need it for the microphone on other machines)")
    sp.add_argument("--keyfile", help="TLS private key (PEM)")
    sp.add_argument("--max-connections", type=int, default=64, help="connections at once; more are closed with 1013 (default 64)")
    sp.add_argument("--max-message-bytes", type=int, default=1 << 20, help="largest message; larger closes with 1009 (default 1 MiB)")
    sp.add_argument("--max-buffered-seconds", type=float, default=5.0, help=(
        "audio received but not decoded, per connection; above it the socket is not read until the decoder "
        "catches up (backpressure; default 5)"))
    sp.add_argument("--idle-timeout", type=float, default=30.0, help="close a connection that sends nothing for this long (s, default 30)")
    sp.add_argument("--max-stream-seconds", type=float, default=3600.0, help="most audio per connection (s, default 3600)")
    sp.add_argument("--no-web", action="store_true", help="WebSocket only: no page, no /stats")
    _endpoint_args(sp, "one segment per connection")
    sp.set_defaults(func=cmd_serve)

    sp = sub.add_parser("bench", help="benchmarks: runtime speed, server load, search", description=(
        "asr bench runtime [OPTIONS]: the streaming runtime against sherpa-onnx (python -m serve.bench); "
        "asr bench serve --onnx DIR [OPTIONS]: many real-time clients against `asr serve` (python -m "
        "serve.loadtest); asr bench search [OPTIONS]: greedy and beam search speed of random heads, or "
        "with --model M --cuts C what a trained transducer's greedy search does (python -m "
        "asr.decoding.bench). `asr bench WHAT --help` lists the options."))
    sp.add_argument("what", choices=["runtime", "serve", "search"], help="which benchmark")
    sp.add_argument("rest", nargs=argparse.REMAINDER, help="its options")
    sp.set_defaults(func=cmd_bench)

    sp = sub.add_parser("tokenizer", help="train a sentencepiece tokenizer on cut manifests", description=(
        "Train a sentencepiece tokenizer (<blk>=0, <unk>=1) on the transcripts of cut manifests; "
        "writes OUT/bpe.model and OUT/tokens.txt."))
    sp.add_argument("--cuts", nargs="+", required=True, help="training cut manifests")
    sp.add_argument("--vocab-size", type=int, default=500)
    sp.add_argument("--model-type", choices=["bpe", "unigram", "char"], default="bpe")
    sp.add_argument("--out", required=True, help="output dir, e.g. data/librispeech/lang_bpe500")
    sp.set_defaults(func=cmd_tokenizer)

    sp = sub.add_parser("lm", help="train a token or word n-gram LM for beam-search fusion", description=(
        "Interpolated Kneser-Ney n-gram LM over a model's tokens (characters or BPE pieces) or, with --unit word, "
        "over words, trained on the transcripts of cut manifests or on plain text and written as ARPA (.arpa or "
        ".arpa.gz); fuse it with `asr decode --method beam --lm FILE [--lm-unit word] --lm-weight A --token-bonus B` (tune A "
        "and B on a dev set). A word LM restricts the search to its vocabulary."))
    sp.add_argument("--model", help="model file: use its tokenizer (with --unit word: to name the words it cannot spell)")
    sp.add_argument("--tokenizer", help="or a tokenizer dir (bpe.model)")
    sp.add_argument("--cuts", nargs="+", help="cut manifests whose transcripts train the LM")
    sp.add_argument("--text", nargs="+", help=(
        "and/or plain-text files (UTF-8, .gz too), a sentence a line, normalized as `asr prepare` normalizes "
        "transcripts (upper case, punctuation dropped)"))
    sp.add_argument("--dev", nargs="*", default=[], help="cut manifests to report perplexity on")
    sp.add_argument("--unit", choices=["token", "word"], default="token", help=(
        "token (default): an LM over the model's tokens; word: over words, whose vocabulary becomes the decoding "
        "lexicon (`asr decode --method beam --lm FILE --lm-unit word`)"))
    sp.add_argument("--order", type=int, default=8, help="n-gram order (default 8, for characters; ~4 for BPE; ~3 for words)")
    sp.add_argument("--out", required=True, help="ARPA file to write (.gz compresses)")
    sp.add_argument("--no-progress", action="store_true", help="no progress bar while the LM is written")
    sp.set_defaults(func=cmd_lm)

    sp = sub.add_parser("prepare-noise", help="MUSAN -> noise manifest for augmentation", description=(
        "Collect the .wav files of MUSAN (its music/, noise/ and speech/ parts, or any dir) into "
        "OUT/recordings.jsonl.gz, for data.augment.noise_manifest."))
    sp.add_argument("--musan", required=True, help="MUSAN dir")
    sp.add_argument("--parts", nargs="+", help="subdirectories to read (default: those of music, noise, speech that "
                    "are there, else the whole dir)")
    sp.add_argument("--out", required=True)
    sp.add_argument("--jobs", type=int, default=2)
    sp.set_defaults(func=cmd_prepare_noise)

    sp = sub.add_parser("compare", help="is one decode's WER significantly different from another's?", description=(
        "Paired bootstrap test (Bisani and Ney 2004) of two `asr decode` outputs on the same cuts: each split's "
        "WER of A and of B, the difference B - A with its 95% interval over resampled test utterances, and the "
        "probability that B is better. A and B are decode output dirs (every split decoded in both) or two "
        "results_<split>.txt files."))
    sp.add_argument("a", help="decode dir or results_<split>.txt of system A (the baseline)")
    sp.add_argument("b", help="decode dir or results_<split>.txt of system B")
    sp.add_argument("--splits", nargs="*", help="only these splits (default: every split decoded in both)")
    sp.add_argument("--samples", type=int, default=10000, help="bootstrap resamples (default 10000)")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--json", help="also write the numbers to this JSON file")
    sp.set_defaults(func=cmd_compare)

    sp = sub.add_parser("info", help="describe a model file", description="Encoder, head, size, contexts and training summary of a model file.")
    sp.add_argument("model", help="model file (model.pt)")
    sp.add_argument("--contexts", action="store_true", help="only print the trained Conformer contexts as 'left,right ...' ('-' if none)")
    sp.set_defaults(func=cmd_info)

    sp = sub.add_parser("export", help="export a model to ONNX", description=(
        "Write the ONNX files of a model file: streaming encoder (caches as inputs/outputs, raw fbank "
        "in), whole-utterance variants, decoder and joiner (transducers), CTC, tokens.txt, metadata "
        "(model.json and each file's metadata_props), and OUT/sherpa-onnx/ with the files sherpa-onnx "
        "loads where the model fits its contracts. See exporters/README.md."))
    sp.add_argument("--model", required=True, help="model file (model.pt)")
    sp.add_argument("--out", required=True, help="output directory")
    sp.add_argument("--int8", action="store_true", help="also write dynamically quantized *.int8.onnx files")
    sp.add_argument("--lookahead", type=int, metavar="MS", help=(
        "Conformer: export the trained context with this look-ahead in ms (right * subsampling * 10); "
        "default: the model's inference context"))
    sp.add_argument("--no-sherpa", action="store_true", help="skip the sherpa-onnx/ files")
    sp.set_defaults(func=cmd_export)
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.cmd != "train":
        _setup_logging(args.verbose)
    try:
        args.func(args)
    except KeyboardInterrupt:  # a Ctrl-C the command does not handle itself (loading a model, reading data)
        print("\ninterrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except BrokenPipeError:  # stdout closed early (`asr transcribe ... | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's flush at exit fails too otherwise
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
