#!/usr/bin/env bash
# The mini recipe: a zero-download speech corpus made by TTS, a CTC model trained on CPU,
# WER on every test split. Every stage can be rerun alone:
#
#   bash recipes/mini/run.sh                      # all stages
#   bash recipes/mini/run.sh --stage 2 --stop-stage 3
#   CONFIG=recipes/mini/conf/ctc.yaml bash recipes/mini/run.sh
#
# Stages: 0 set up .venv | 1 build corpus + manifests + tokenizer | 2 train | 3 decode (WER)
#         4 transcribe a test file
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"

stage=0
stop_stage=100
while [ $# -gt 0 ]; do
    case "$1" in
        --stage) stage="$2"; shift 2 ;;
        --stop-stage) stop_stage="$2"; shift 2 ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) echo "unknown option $1 (see --help)" >&2; exit 1 ;;
    esac
done

DATA="${DATA:-data/mini}"
CONFIG="${CONFIG:-recipes/mini/conf/ctc.yaml}"
EXP="${EXP:-exp/mini/$(basename "$CONFIG" .yaml)}"
TEST_SETS="test-seen test-unseen dev"

run() { [ "$stage" -le "$1" ] && [ "$stop_stage" -ge "$1" ]; }
banner() { printf '\n\033[1;34m== stage %s: %s ==\033[0m\n' "$1" "$2"; }

source scripts/bootstrap.sh  # stage 0 always runs: it is a no-op when .venv is up to date

if run 1; then
    banner 1 "build the mini LibriSpeech corpus, manifests and tokenizer ($DATA)"
    asr prepare --corpus mini --out "$DATA" --model-type char
fi

if run 2; then
    banner 2 "train ($CONFIG -> $EXP)"
    asr train --config "$CONFIG" --exp-dir "$EXP"
fi

if run 3; then
    banner 3 "decode: WER per test split"
    cuts=()
    for s in $TEST_SETS; do cuts+=("$DATA/manifests/cuts_$s.jsonl.gz"); done
    asr decode --model "$EXP/model.pt" --cuts "${cuts[@]}" --out "$EXP/decode"
fi

if run 4; then
    banner 4 "transcribe one unseen-voice test file"
    wav=$(find "$DATA/corpus/LibriSpeech/test-unseen" -name '*.flac' | sort | head -n 1)
    asr transcribe "$EXP/model.pt" "$wav" --timestamps
    grep -h "$(basename "$wav" .flac)" "$DATA"/corpus/LibriSpeech/test-unseen/*/*/*.trans.txt | sed 's/^/reference: /'
fi
