#!/usr/bin/env bash
# The mini recipe: a zero-download speech corpus made by TTS, a streaming model trained on CPU,
# WER on every test split, ONNX export, and a test file streamed through the torch-free
# runtime. Every stage can be rerun alone:
#
#   bash recipes/mini/run.sh                      # all stages
#   bash recipes/mini/run.sh --stage 2 --stop-stage 3
#   CONFIG=recipes/mini/conf/lstm.yaml bash recipes/mini/run.sh --stage 2
#
# Stages: 0 set up .venv | 1 build corpus + manifests + tokenizers | 2 train | 3 decode (WER,
#         whole-utterance and chunk-wise streaming) | 4 export to ONNX | 5 stream a test file
#         through the ONNX runtime (partial results as they arrive)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"

source scripts/stages.sh "$@"
set --  # the options are parsed; later `source`s must not see them

DATA="${DATA:-data/mini}"
CONFIG="${CONFIG:-recipes/mini/conf/conformer.yaml}"
EXP="${EXP:-exp/mini/$(basename "$CONFIG" .yaml)}"
TEST_SETS="test-seen test-unseen dev"


source scripts/bootstrap.sh  # stage 0 always runs: it is a no-op when .venv is up to date

if run 1; then
    banner 1 "build the mini LibriSpeech corpus, manifests and tokenizers ($DATA)"
    asr prepare --corpus mini --out "$DATA" --model-type bpe --vocab-size 256  # Citrinet (8x)
    asr tokenizer --cuts "$DATA/manifests/cuts_train.jsonl.gz" --model-type char --out "$DATA/lang_char"  # 4x families
fi

if run 2; then
    banner 2 "train ($CONFIG -> $EXP)"
    asr train --config "$CONFIG" --exp-dir "$EXP"
fi

cuts=()
for s in $TEST_SETS; do cuts+=("$DATA/manifests/cuts_$s.jsonl.gz"); done

if run 3; then
    banner 3 "decode: WER per test split"
    asr info "$EXP/model.pt"
    asr decode --model "$EXP/model.pt" --cuts "${cuts[@]}" --out "$EXP/decode/greedy"
    ctx=$(asr info "$EXP/model.pt" --contexts | awk '{print $1}')  # the smallest look-ahead
    if [ "$ctx" != "-" ]; then
        asr decode --model "$EXP/model.pt" --cuts "${cuts[@]}" --chunkwise --context "$ctx" --out "$EXP/decode/chunkwise_$ctx"
    else
        asr decode --model "$EXP/model.pt" --cuts "${cuts[@]}" --chunkwise --out "$EXP/decode/chunkwise"
    fi
fi

if run 4; then
    banner 4 "export to ONNX ($EXP/onnx, fp32 and int8)"
    asr export --model "$EXP/model.pt" --out "$EXP/onnx" --int8
fi

if run 5; then
    banner 5 "stream one unseen-voice test file through the ONNX runtime (no torch)"
    wav=$(find "$DATA/corpus/LibriSpeech/test-unseen" -name '*.flac' | sort | head -n 1)
    asr stream --onnx "$EXP/onnx" "$wav"
    grep -h "$(basename "$wav" .flac)" "$DATA"/corpus/LibriSpeech/test-unseen/*/*/*.trans.txt | sed 's/^/reference: /'
fi
