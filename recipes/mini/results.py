"""The mini results grid: every encoder family x {CTC, RNN-T, TDT, hybrid TDT+CTC}.

    python recipes/mini/results.py                           # the whole grid (about 5 h on 2 cores)
    python recipes/mini/results.py --families conformer --heads tdt hybrid --minutes 15
    python recipes/mini/results.py --table                   # only rebuild results.md from results.json
    python recipes/mini/results.py --families conformer --heads pruned pruned_hybrid pruned_tdt_hybrid   # k2's pruned RNN-T, a pruned TDT (not in the default grid)
    python recipes/mini/results.py --families lstm --heads rnnt tdt --out exp/mini/results_2x \
        --set model.encoder_config.subsampling=2                 # a variant of the configs, in its own --out

Each cell trains ``recipes/mini/conf/<family>.yaml`` with the head set by ``--set`` for at most
``--minutes`` of wall clock (validation included), then decodes test-seen and test-unseen:

- greedy WER of the main head (the hybrid's transducer head; its CTC head is reported too);
- streaming: for the Conformer, WER at its smallest trained look-ahead against its largest,
  decoded chunk-wise (real streaming); the causal families (LSTM, Citrinet, SSM) have one
  context, so their streaming WER is their WER (their whole-utterance forward *is* the stream);
- decoding speed as RTFx (audio seconds per second of encoder + search, one process).

With ``--lm``, every selected cell is also decoded by beam search (beam 8) alone, fused with a
token 8-gram LM (over the cell's own units: characters, or BPE pieces under ``--set
data.tokenizer=...``) trained on the training transcripts (``asr lm``), and restricted to the
training vocabulary by a word 3-gram (``asr lm --unit word``, ``--lm-unit word``); each LM's
weight and token bonus are chosen on dev from a small grid, then test-seen and test-unseen are
decoded once. Finished decodes are kept (delete a cell's ``tune_*``/``decode_*`` dirs to redo them).

It also times TDT greedy against RNN-T greedy search (search only, each model on its own
encoder's output) for the TDT and RNN-T cells of a family, and for its hybrid pruned TDT and
RNN-T cells, when both cells of a pair exist. Finished cells are skipped (``--force`` retrains), so the grid can be run
across sessions. Results go to ``--out``/results.json and results.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FAMILIES = ["conformer", "citrinet", "lstm", "ssm"]
HEADS = {
    "ctc": ["model.head=ctc", "model.ctc_weight=0.0"],
    "rnnt": ["model.head=rnnt", "model.ctc_weight=0.0"],
    "tdt": ["model.head=tdt", "model.ctc_weight=0.0"],
    "hybrid": ["model.head=tdt", "model.ctc_weight=0.3"],
    # k2's pruned RNN-T, alone and with the auxiliary CTC head, and the TDT on the same pruned
    # lattice with the CTC head (not in the default grid)
    "pruned": ["model.head=pruned_rnnt", "model.ctc_weight=0.0"],
    "pruned_hybrid": ["model.head=pruned_rnnt", "model.ctc_weight=0.3"],
    "pruned_tdt_hybrid": ["model.head=pruned_tdt", "model.ctc_weight=0.3"],
}
HEAD_NAMES = {"ctc": "CTC", "rnnt": "RNN-T", "tdt": "TDT", "hybrid": "hybrid TDT+CTC", "pruned": "pruned RNN-T",
              "pruned_hybrid": "hybrid pruned RNN-T+CTC", "pruned_tdt_hybrid": "hybrid pruned TDT+CTC"}
DEFAULT_HEADS = ["ctc", "rnnt", "tdt", "hybrid"]
HYBRIDS = {"hybrid", "pruned_hybrid", "pruned_tdt_hybrid"}  # their auxiliary CTC head is decoded too
TDT_HYBRIDS = {"hybrid", "pruned_tdt_hybrid"}  # also decoded with their blank jumps guarded by the CTC head
CTC_GUARD = 0.9  # the guard's blank probability, chosen on dev (docs/mini_results.md)
SPLITS = ["test-seen", "test-unseen"]


def sh(cmd: list[str], log: Path | None = None) -> None:
    """Run ``cmd`` (its output appended to ``log`` when given); a failure stops the grid with the
    command's last lines (results.json keeps every cell finished before it)."""
    print("+", " ".join(cmd), flush=True)
    if log is None:
        if _wait(subprocess.Popen(cmd, cwd=ROOT)):
            raise SystemExit(f"error: this command failed (its output is above): {' '.join(cmd[:5])} ...")
        return
    with open(log, "a") as f:
        rc = _wait(subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT))
    if rc:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-12:])
        raise SystemExit(f"{tail}\nerror: {' '.join(cmd[2:5])} ... failed (exit {rc}); the lines above end {log}")


def _wait(proc: subprocess.Popen) -> int:
    """The command's exit code. On Ctrl-C (which the terminal sends to the command too) it is
    left to finish on its own (asr train saves a checkpoint at its next step; subprocess.run
    would kill it), then the grid stops."""
    try:
        return proc.wait()
    except KeyboardInterrupt:
        rc = proc.wait()
        raise SystemExit(f"interrupted (the command exited {rc}); run the same command again to go on") from None


def decode(model: Path, data: Path, out: Path, *extra: str) -> dict:
    cuts = [str(data / "manifests" / f"cuts_{s}.jsonl.gz") for s in SPLITS]
    if not (out / "wer.json").is_file():
        sh([sys.executable, "-m", "asr.cli", "decode", "--model", str(model), "--cuts", *cuts, "--out", str(out), *extra])
    return json.loads((out / "wer.json").read_text())["splits"]


def family_tokenizer(family: str) -> str:
    """The tokenizer directory's name in the family's config (lang_char, lang_bpe256, ...): the
    units depend on the frame rate (characters need 4x; Citrinet's 8x needs BPE)."""
    from asr.config import read_yaml_tree

    return Path(read_yaml_tree(ROOT / "recipes/mini/conf" / f"{family}.yaml")["data"]["tokenizer"]).name


def run_cell(family: str, head: str, args) -> dict:
    exp = args.out / f"{family}_{head}"
    model = exp / "model.pt"
    if args.force and exp.exists():
        import shutil

        shutil.rmtree(exp)
    exp.mkdir(parents=True, exist_ok=True)
    overrides_file = exp / "overrides.json"  # what a cell was trained with: --set, --minutes, --data
    wanted = {"set": args.set, "minutes": args.minutes, "data": str(args.data)}
    started = model.is_file() or any((exp / "checkpoints").glob("*.pt"))  # finished, or crashed (its rerun resumes)
    if started or overrides_file.is_file():
        trained_with = json.loads(overrides_file.read_text()) if overrides_file.is_file() else []
        if isinstance(trained_with, list):  # cells from before --minutes and --data were recorded: --set only
            trained_with = {**wanted, "set": trained_with}
        if trained_with != wanted:
            diff = ", ".join(f"--{k} {trained_with.get(k)!r} (now {v!r})" for k, v in wanted.items() if trained_with.get(k) != v)
            raise SystemExit(f"{exp} was trained with {diff}: give this variant its own --out, or --force to retrain")
    if not model.is_file():
        overrides_file.write_text(json.dumps(wanted))
        t0 = time.time()
        sh([sys.executable, "-m", "asr.cli", "train", "--config", str(ROOT / "recipes/mini/conf" / f"{family}.yaml"),
            "--exp-dir", str(exp), "--no-progress", "--set", f"max_minutes={args.minutes}",
            f"data.train=[{args.data}/manifests/cuts_train.jsonl.gz]", f"data.dev=[{args.data}/manifests/cuts_dev.jsonl.gz]",
            f"data.tokenizer={args.data}/{family_tokenizer(family)}",
            f"data.augment.noise_manifest={args.data}/corpus/noise/recordings.jsonl.gz", *HEADS[head], *args.set],
           log=exp / "run.log")
        print(f"  trained {family}/{head} in {(time.time() - t0) / 60:.1f} min", flush=True)
    import torch

    ckpt = torch.load(model, map_location="cpu", weights_only=True)
    cell = {"family": family, "head": head, "meta": ckpt.get("meta", {}), "overrides": args.set,
            "params_M": round(sum(v.numel() for k, v in ckpt["state_dict"].items() if not k.startswith("feat_")) / 1e6, 2)}
    cell["greedy"] = decode(model, args.data, exp / "decode_greedy")
    if head in HYBRIDS and any(k.startswith("ctc.") for k in ckpt["state_dict"]):  # --set model.ctc_weight=0 drops it
        cell["ctc_head"] = decode(model, args.data, exp / "decode_ctc", "--use-ctc")
        if head in TDT_HYBRIDS:
            cell["greedy_ctc_guard"] = decode(model, args.data, exp / "decode_greedy_ctc_guard", "--ctc-guard", str(CTC_GUARD))
    contexts = subprocess.run([sys.executable, "-m", "asr.cli", "info", str(model), "--contexts"], cwd=ROOT,
                              capture_output=True, text=True, check=True).stdout.split()
    if contexts and contexts[0] != "-":
        by_look = sorted(contexts, key=lambda c: int(c.split(",")[1]))
        cell["streaming_smallest"] = {"context": by_look[0], **{"splits": decode(model, args.data, exp / f"decode_chunkwise_{by_look[0]}", "--chunkwise", "--context", by_look[0])}}
        cell["streaming_largest"] = {"context": by_look[-1], **{"splits": decode(model, args.data, exp / f"decode_chunkwise_{by_look[-1]}", "--chunkwise", "--context", by_look[-1])}}
    return cell


LM_BEAM = 8
LM_GRID = [(w, b) for w in (0.3, 0.5, 0.8) for b in (0.5, 1.5)]  # (LM weight, token bonus)
WORD_LM_GRID = [(w, b) for w in (0.5, 0.8) for b in (0.5, 1.5)]


def _lm_file(args, unit: str, tok: Path) -> Path:
    """The 8-gram over the tokenizer ``tok``'s units (``unit="token"``) or the word 3-gram of the
    training transcripts."""
    lm = args.out / "lm" / (f"{tok.name}_8gram.arpa.gz" if unit == "token" else "words_3gram.arpa.gz")
    if not lm.is_file():
        src = ["--tokenizer", str(tok), "--order", "8"] if unit == "token" else ["--unit", "word", "--order", "3"]
        sh([sys.executable, "-m", "asr.cli", "lm", *src, "--cuts", str(args.data / "manifests" / "cuts_train.jsonl.gz"),
            "--dev", str(args.data / "manifests" / "cuts_dev.jsonl.gz"), "--out", str(lm)])
    return lm


def _tuned_lm(model: Path, exp: Path, args, lm: Path, unit: str, grid, beam: list[str]) -> dict:
    """LM weight and token bonus chosen on dev from ``grid``, then test-seen/unseen decoded once."""
    dev = [str(args.data / "manifests" / "cuts_dev.jsonl.gz")]
    name = "lm" if unit == "token" else "wordlm"
    tuned = {}
    for w, b in grid:
        out = exp / f"tune_{name}_{w}_{b}"
        if not (out / "wer.json").is_file():
            sh([sys.executable, "-m", "asr.cli", "decode", "--model", str(model), "--cuts", *dev, "--out", str(out),
                *beam, "--lm", str(lm), "--lm-unit", unit, "--lm-weight", str(w), "--token-bonus", str(b)])
        tuned[f"{w},{b}"] = json.loads((out / "wer.json").read_text())["splits"]["dev"]["wer"]
    w, b = min(tuned, key=tuned.get).split(",")
    splits = decode(model, args.data, exp / f"decode_beam{LM_BEAM}_{name}", *beam, "--lm", str(lm), "--lm-unit", unit,
                    "--lm-weight", w, "--token-bonus", b)
    return {"file": str(lm), "weight": float(w), "bonus": float(b), "dev_wer": tuned, "splits": splits}


def lm_cell(family: str, head: str, args) -> dict:
    """Beam search alone, with the 8-gram over the cell's units (characters or BPE pieces) and
    with the word 3-gram and its lexicon (each LM's weights chosen on dev) for one finished cell."""
    from asr.config import read_yaml_tree

    exp = args.out / f"{family}_{head}"
    model = exp / "model.pt"
    tok = Path(read_yaml_tree(exp / "config.yaml")["data"]["tokenizer"])  # --set may have changed it
    beam = ["--method", "beam", "--beam", str(LM_BEAM), "--no-progress"]
    return {
        "beam": LM_BEAM,
        "beam_only": decode(model, args.data, exp / f"decode_beam{LM_BEAM}", *beam),
        "lm": _tuned_lm(model, exp, args, _lm_file(args, "token", tok), "token", LM_GRID, beam),
        "word_lm": _tuned_lm(model, exp, args, _lm_file(args, "word", tok), "word", WORD_LM_GRID, beam),
    }


# (RNN-T cell, TDT cell, suffix of the results key): the pairs whose greedy search is timed
SPEED_PAIRS = [("rnnt", "tdt", ""), ("pruned_hybrid", "pruned_tdt_hybrid", " (hybrid pruned heads)")]


# (name, what is searched, greedy_search's loop) of the TDT-vs-RNN-T timing
SEARCH_SETTINGS = (("batched", "batches", "label"), ("rows", "batches", "rows"), ("single", "singles", "auto"))


def tdt_vs_rnnt(family: str, args, rnnt_cell: str = "rnnt", tdt_cell: str = "tdt") -> dict | None:
    """Greedy search time (encoder excluded) of a TDT and an RNN-T cell of one family on
    test-seen, 1 thread, in three settings: batches of up to 120 s of audio searched by label
    looping (what a GPU runs), the same batches row by row (``loop="rows"``, what the CPU runs
    by default), and one utterance at a time (B=1: what a streaming server does per stream).
    Label looping evaluates the joint until *every* utterance of the batch has found its next
    label, so the batch's longest blank run sets the pace; row by row and at B=1 every skipped
    frame saves a call. A hybrid TDT is also timed with its blank jumps guarded by its CTC
    head (``greedy_search(jump_ok=...)``), the CTC head's check of every frame timed with it."""
    import torch
    from lhotse import CutSet

    from asr.cli import _set_context
    from asr.data.dataset import ASRDataset, SamplerConfig, make_sampler
    from asr.decoding.bench import count_greedy_steps, time_decoder
    from asr.decoding.transducer import greedy_search
    from asr.models import load

    paths = {"rnnt": (args.rnnt_from or args.out) / f"{family}_{rnnt_cell}" / "model.pt",
             "tdt": args.out / f"{family}_{tdt_cell}" / "model.pt"}
    if not all(p.is_file() for p in paths.values()):
        return None
    torch.set_num_threads(1)
    out = {"context": args.search_context} if args.search_context else {}
    if args.rnnt_from:
        out["rnnt_model"] = str(paths["rnnt"])
    cuts = CutSet.from_file(args.data / "manifests" / "cuts_test-seen.jsonl.gz")
    runs = [("rnnt", paths["rnnt"], False), ("tdt", paths["tdt"], False), ("tdt_ctc_guard", paths["tdt"], True)]
    loaded: dict[Path, tuple] = {}  # model file -> (model, encoded batches, single utterances)
    for head, path, guard in runs:
        if path not in loaded:
            model = load(path)
            if args.search_context:
                _set_context(model, args.search_context)  # the look-ahead both encoders run at
            ds = ASRDataset(model.tokenizer, model.features, None)
            encoded = []
            for batch_cuts in make_sampler(cuts, SamplerConfig(max_duration=120), train=False):
                b = ds[batch_cuts]
                with torch.inference_mode():
                    enc, lens = model.encode(b["features"], b["feature_lens"])
                encoded.append((enc, lens))
            singles = [(enc[i : i + 1, : int(lens[i])], lens[i : i + 1]) for enc, lens in encoded for i in range(len(lens))]
            loaded[path] = (model, encoded, singles)
        model, encoded, singles = loaded[path]
        search = greedy_search
        if guard:  # a hybrid TDT's search with its blank jumps checked by the CTC head, the check timed with it
            if model.ctc is None:
                continue

            def search(h, enc, lens, model=model, **kw):
                with torch.inference_mode():
                    ok = model.jump_guard(enc, CTC_GUARD)
                return greedy_search(h, enc, lens, jump_ok=ok, **kw)
        out[head] = {}
        for setting, batches, loop in SEARCH_SETTINGS:
            batches = encoded if batches == "batches" else singles
            total = {"seconds": 0.0, "labels": 0, "frames": 0, "calls": 0}
            hist: dict[str, int] = {}
            for enc, lens in batches:
                r = time_decoder(search, model.transducer, enc, lens, model.frame_seconds, loop=loop)
                total["seconds"] += r["seconds"]
                total["frames"] += int(lens.sum())
                total["labels"] += round(r["labels_per_frame"] * int(lens.sum()))
                with torch.inference_mode():
                    kw = {"jump_ok": model.jump_guard(enc, CTC_GUARD)} if guard else {}
                steps = count_greedy_steps(model.transducer, enc, lens, loop=loop, **kw)
                total["calls"] += steps["joint_calls"]
                for k, n in (steps["decisions"] or {}).items():
                    hist[k] = hist.get(k, 0) + n
            audio = total["frames"] * model.frame_seconds
            out[head][setting] = {"search_seconds": round(total["seconds"], 3), "search_rtfx": round(audio / total["seconds"], 1),
                                  "labels_per_frame": round(total["labels"] / max(1, total["frames"]), 3),
                                  "joint_calls": total["calls"]}
            if hist and setting == "single":  # what the TDT's greedy search decided, by kind and duration
                out[head][setting]["durations"] = dict(sorted(hist.items()))
    for setting, *_ in SEARCH_SETTINGS:
        out[f"speedup_{setting}"] = round(out["rnnt"][setting]["search_seconds"] / out["tdt"][setting]["search_seconds"], 2)
        if "tdt_ctc_guard" in out:
            out[f"speedup_ctc_guard_{setting}"] = round(
                out["rnnt"][setting]["search_seconds"] / out["tdt_ctc_guard"][setting]["search_seconds"], 2)
    return out


def wer_vs_rnnt(family: str, args, rnnt_cell: str, tdt_cell: str) -> dict | None:
    """Greedy WER of the TDT cell minus the RNN-T cell's per split, with the paired bootstrap's
    95% interval over test utterances (``asr compare``): whether "no worse" holds beyond the
    utterances that happened to be tested."""
    from asr.decoding.wer import compare_results

    rnnt = (args.rnnt_from or args.out) / f"{family}_{rnnt_cell}" / "decode_greedy"
    out = {}
    for what, sub in (("", "decode_greedy"), ("ctc_guard ", "decode_greedy_ctc_guard")):
        tdt = args.out / f"{family}_{tdt_cell}" / sub
        for split in ("test-seen", "test-unseen"):
            files = [rnnt / f"results_{split}.txt", tdt / f"results_{split}.txt"]
            if all(f.is_file() for f in files):
                r = compare_results(*files)
                out[what + split] = {"diff": round(r["diff"], 2), "ci95": [round(x, 2) for x in r["ci95"]],
                                     "p_tdt_better": round(r["p_b_better"], 3)}
    return out or None


def _fused(r: dict) -> str:
    """One LM's cell: test-seen / test-unseen WER and the (weight, bonus) chosen on dev."""
    return f"**{r['splits']['test-seen']['wer']:.1f} / {r['splits']['test-unseen']['wer']:.1f}** ({r['weight']}, {r['bonus']})"


def table(results: dict) -> str:
    lines = ["| encoder | head | params | steps (min) | test-seen WER | test-unseen WER | streaming: smallest vs largest look-ahead (test-seen) "
             f"| beam {LM_BEAM}; beam {LM_BEAM} + token 8-gram LM (LM weight, bonus) | beam {LM_BEAM} + word 3-gram and lexicon | RTFx |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for key in sorted(results["cells"], key=lambda k: (FAMILIES.index(k.split("_", 1)[0]), list(HEADS).index(k.split("_", 1)[1]))):
        c = results["cells"][key]
        g = c["greedy"]
        head = HEAD_NAMES[c["head"]]
        if "ctc_head" in c:
            head += f" (CTC head: {c['ctc_head']['test-seen']['wer']:.1f} / {c['ctc_head']['test-unseen']['wer']:.1f})"
        if "streaming_smallest" in c:
            s, l_ = c["streaming_smallest"], c["streaming_largest"]
            stream = f"{s['splits']['test-seen']['wer']:.1f} [{s['context']}] vs {l_['splits']['test-seen']['wer']:.1f} [{l_['context']}]"
        else:
            stream = "= WER (causal)"
        meta = c.get("meta", {})
        minutes = f"{meta.get('steps', '?')} ({meta.get('wall_seconds', 0) / 60:.0f})"
        lm = word = "-"
        if "beam_lm" in c:
            bl = c["beam_lm"]
            lm = f"{bl['beam_only']['test-seen']['wer']:.1f} / {bl['beam_only']['test-unseen']['wer']:.1f}; {_fused(bl['lm'])}"
            word = _fused(bl["word_lm"]) if "word_lm" in bl else "-"
        family = c["family"] + (f" ({', '.join(c['overrides'])})" if c.get("overrides") else "")
        lines.append(f"| {family} | {head} | {c['params_M']}M | {minutes} | {g['test-seen']['wer']:.1f} | "
                     f"{g['test-unseen']['wer']:.1f} | {stream} | {lm} | {word} | {g['test-seen']['rtfx']:.0f} |")
    for fam, r in results.get("tdt_vs_rnnt", {}).items():
        if r and "speedup_single" in r:
            lines.append("")
            ctx = f", attention context {r['context']}" if r.get("context") else ""
            ctx += f", the RNN-T: {r['rnnt_model']}" if r.get("rnnt_model") else ""
            lines.append(f"TDT vs RNN-T greedy search on {fam.split('@')[0]} encoder output (test-seen, 1 thread, search only{ctx}):")
            for setting, what in (("batched", "batches of up to 120 s, label looping"), ("rows", "the same batches row by row"),
                                  ("single", "one utterance at a time")):
                if setting not in r["rnnt"]:  # measured before row-by-row search existed
                    continue
                rn, td = r["rnnt"][setting], r["tdt"][setting]
                lines.append(f"- {what}: RNN-T {rn['search_seconds']} s ({rn['joint_calls']} joint calls, "
                             f"{rn['labels_per_frame']} labels/frame), TDT {td['search_seconds']} s ({td['joint_calls']} "
                             f"joint calls): **{r[f'speedup_{setting}']}x**")
                if "durations" in td:
                    lines.append(f"  - the TDT's decisions by kind and duration: "
                                 + ", ".join(f"{k}: {n}" for k, n in td["durations"].items()))
                if "tdt_ctc_guard" in r:
                    tg = r["tdt_ctc_guard"][setting]
                    lines.append(f"  - the TDT with its blank jumps guarded by its CTC head (`--ctc-guard {CTC_GUARD}`, the "
                                 f"check included): {tg['search_seconds']} s ({tg['joint_calls']} joint calls): "
                                 f"**{r[f'speedup_ctc_guard_{setting}']}x**")
            if r.get("wer_diff"):
                lines.append("- greedy WER, TDT minus RNN-T, with its 95% interval over resampled test utterances (paired "
                             "bootstrap, `asr compare`; \"ctc_guard\": the guarded TDT): " + "; ".join(
                                 f"{split} **{d['diff']:+.2f}** [{d['ci95'][0]:+.2f}, {d['ci95'][1]:+.2f}], P(TDT better) {d['p_tdt_better']}"
                                 for split, d in r["wer_diff"].items()))
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--families", nargs="+", default=FAMILIES, choices=FAMILIES)
    ap.add_argument("--heads", nargs="+", default=DEFAULT_HEADS, choices=list(HEADS))
    ap.add_argument("--minutes", type=float, default=15.0)
    ap.add_argument("--data", type=Path, help="the mini corpus (default: data/mini in the repo)")
    ap.add_argument("--out", type=Path, help="results directory (default: exp/mini/results in the repo)")
    ap.add_argument("--force", action="store_true", help="retrain cells that exist")
    ap.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                    help="config overrides for every trained cell, after the head's (e.g. model.encoder_config.subsampling=2); "
                         "give such a variant its own --out")
    ap.add_argument("--search-context", metavar="LEFT,RIGHT",
                    help="time the TDT-vs-RNN-T greedy search on Conformer encoder output at this attention context "
                         "(e.g. 128,12: 480 ms look-ahead at 4x) instead of the model's default; kept under its own key")
    ap.add_argument("--rnnt-from", type=Path, metavar="DIR",
                    help="time the TDT cells against the RNN-T cells of this results dir instead of --out's (for a "
                         "variant whose --set changes only the TDT, e.g. model.transducer.sigma)")
    ap.add_argument("--table", action="store_true", help="only rewrite results.md")
    ap.add_argument("--lm", action="store_true", help="also decode the cells by beam search with and without an n-gram LM")
    args = ap.parse_args()
    if not args.minutes > 0:
        ap.error(f"--minutes must be > 0 (the training budget of each cell), got {args.minutes:g}")
    if args.search_context and not re.fullmatch(r"\d+,\d+", args.search_context):
        ap.error(f"--search-context expects LEFT,RIGHT frame counts (e.g. 128,12), got {args.search_context!r}")
    for name in ("out", "data", "rnnt_from"):  # relative to where the script runs (it then works in the repo)
        path = getattr(args, name)
        if path is not None:
            setattr(args, name, path.resolve())
    args.out = args.out or ROOT / "exp/mini/results"
    args.data = args.data or ROOT / "data/mini"
    if args.rnnt_from is not None and not args.rnnt_from.is_dir():
        ap.error(f"--rnnt-from {args.rnnt_from}: no such results directory")
    if args.out.exists() and not args.out.is_dir():
        ap.error(f"--out {args.out} is a file; give a directory")
    if args.table and not (args.out / "results.json").is_file():
        ap.error(f"--table: {args.out / 'results.json'} does not exist (nothing to tabulate)")
    os.chdir(ROOT)
    args.out.mkdir(parents=True, exist_ok=True)
    res_path = args.out / "results.json"
    results = json.loads(res_path.read_text()) if res_path.is_file() else {"cells": {}, "tdt_vs_rnnt": {}}
    if not args.table:
        for family in args.families:
            for head in args.heads:
                cell = run_cell(family, head, args)
                old = results["cells"].get(f"{family}_{head}", {})
                if args.lm:
                    cell["beam_lm"] = lm_cell(family, head, args)
                elif "beam_lm" in old and old.get("meta") == cell["meta"]:  # the same model: its LM decodes stand
                    cell["beam_lm"] = old["beam_lm"]
                results["cells"][f"{family}_{head}"] = cell
                res_path.write_text(json.dumps(results, indent=2))  # nothing lost on a crash
            if args.search_context and family != "conformer":
                continue  # only the Conformer has a look-ahead to choose
            for rnnt_cell, tdt_cell, suffix in SPEED_PAIRS:
                key = family + suffix + (f"@{args.search_context}" if args.search_context else "")
                stored = results["tdt_vs_rnnt"].get(key)
                want_rnnt = (args.rnnt_from / f"{family}_{rnnt_cell}" / "model.pt").resolve() if args.rnnt_from else None
                had_rnnt = Path(stored["rnnt_model"]).resolve() if stored and stored.get("rnnt_model") else None
                other_rnnt = bool(stored) and had_rnnt != want_rnnt  # timed against another RNN-T: again
                if args.force or not stored or other_rnnt:
                    results["tdt_vs_rnnt"][key] = tdt_vs_rnnt(family, args, rnnt_cell, tdt_cell)
                    res_path.write_text(json.dumps(results, indent=2))
                r = results["tdt_vs_rnnt"][key]
                if r and (args.force or "wer_diff" not in r):
                    r["wer_diff"] = wer_vs_rnnt(family, args, rnnt_cell, tdt_cell)
                    res_path.write_text(json.dumps(results, indent=2))
    (args.out / "results.md").write_text(table(results))
    print(table(results))


if __name__ == "__main__":
    main()
