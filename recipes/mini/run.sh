#!/usr/bin/env bash
# The mini recipe: a zero-download speech corpus made by TTS, a streaming model trained on CPU,
# WER on every test split, ONNX export, and a test file streamed through the torch-free
# runtime. Every stage can be rerun alone:
#
#   bash recipes/mini/run.sh                      # all stages
#   bash recipes/mini/run.sh --stage 2 --stop-stage 3
#   CONFIG=recipes/mini/conf/lstm.yaml bash recipes/mini/run.sh --stage 2
#   TRAIN_ARGS="--set model.head=pruned_tdt model.ctc_weight=0.3" CONFIG=recipes/mini/conf/lstm.yaml bash recipes/mini/run.sh
#
# Stages: 0 set up .venv | 1 build corpus + manifests + tokenizers | 2 train | 3 decode (WER,
#         whole-utterance and chunk-wise streaming; beam search with a token 8-gram LM trained on
#         the training transcripts, LM_WEIGHT and TOKEN_BONUS tuned on dev; and with a word
#         3-gram that restricts the search to its vocabulary, WORD_LM_WEIGHT, WORD_TOKEN_BONUS,
#         whole-utterance and chunk-wise) | 4 export to ONNX | 5 the exported files on the test
#         sets: our runtime fp32 greedy and beam + word LM (transcripts vs torch's chunk-wise) and
#         int8 (WER vs fp32), and sherpa-onnx (transcripts vs ours) | 6 stream a test file
#         through the ONNX runtime (partial results as they arrive), greedy and beam + word LM
#
# TRAIN_ARGS: extra `asr train` arguments for stage 2 (split at spaces), e.g. --set overrides.
# NPROC: training processes for stage 2 (default auto: 2 on a machine with 2 or more cores, else 1).
#   Several run under torchrun (CPU DDP over gloo), each with cores/NPROC threads and the config's
#   data.sampler.max_duration divided by NPROC, so the global batch stays the config's (a
#   max_duration in TRAIN_ARGS is per process). On 2 cores two 1-thread processes make 7-10% more
#   steps in the 15 minutes than one 2-thread process (docs/mini_results.md, "Two processes
#   instead of two threads"). NPROC=1 trains in one process.
# Relative paths in DATA, CONFIG and EXP are taken from the directory the script is run from.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
LAST_STAGE=6
source "$ROOT/scripts/stages.sh" "$@"
set --  # the options are parsed; later `source`s must not see them
from_caller DATA CONFIG EXP
cd "$ROOT"

DATA="${DATA:-data/mini}"
CONFIG="${CONFIG:-recipes/mini/conf/conformer.yaml}"
EXP="${EXP:-exp/mini/$(basename "$CONFIG" .yaml)}"
TRAIN_ARGS="${TRAIN_ARGS:-}"
NPROC="${NPROC:-auto}"
if [ "$NPROC" != auto ] && ! [[ "$NPROC" =~ ^[1-9][0-9]*$ ]]; then
    echo "NPROC must be a positive whole number or auto, not '$NPROC'" >&2; exit 2
fi
TEST_SETS="test-seen test-unseen dev"
# LM fusion weights for stage 3, chosen on dev for the default model from a 3x2 grid
# (recipes/mini/results.py --lm: dev WER 38.9 at 0.5, 0.5; 41.7-52.0 elsewhere)
LM_WEIGHT="${LM_WEIGHT:-0.5}"
TOKEN_BONUS="${TOKEN_BONUS:-0.5}"
# the same for the word 3-gram with its lexicon, from a 2x2 grid (dev WER 37.6 at 0.5, 0.5; 40.6-43.1 elsewhere)
WORD_LM_WEIGHT="${WORD_LM_WEIGHT:-0.5}"
WORD_TOKEN_BONUS="${WORD_TOKEN_BONUS:-0.5}"


# stage 0 always runs (a no-op when .venv is up to date); stages 5 and 6 run the ONNX runtime
# (serve: kaldi-native-fbank) and sherpa-onnx
source scripts/bootstrap.sh "serve,sherpa"

if run 1; then
    banner 1 "build the mini LibriSpeech corpus, manifests and tokenizers ($DATA)"
    asr prepare --corpus mini --out "$DATA" --model-type bpe --vocab-size 256  # BPE-256 for 8x models (no mini config uses it)
    asr tokenizer --cuts "$DATA/manifests/cuts_train.jsonl.gz" --model-type char --out "$DATA/lang_char"  # 4x families
fi

if run 2; then
    cores=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)  # the cores this process may use (GNU nproc reads OMP_*)
    procs=$NPROC
    if [ "$procs" = auto ]; then if [ "$cores" -ge 2 ]; then procs=2; else procs=1; fi; fi
    if [ "$procs" -gt 1 ]; then
        threads=$(( cores / procs > 0 ? cores / procs : 1 ))
        batch=$(python - "$CONFIG" "$procs" <<'PY'
import sys
from asr.config import load_yaml
from asr.training.trainer import TrainConfig
print(load_yaml(TrainConfig, sys.argv[1]).data.sampler.max_duration / int(sys.argv[2]))
PY
)
        banner 2 "train ($CONFIG -> $EXP): $procs torchrun processes of $threads thread(s), batches of $batch s each"
        # --standalone: a free rendezvous port on this machine; OMP_NUM_THREADS also sizes numba's pool
        # shellcheck disable=SC2086
        OMP_NUM_THREADS=$threads torchrun --standalone --nproc_per_node "$procs" -m asr.cli train --config "$CONFIG" \
            --exp-dir "$EXP" --set "threads=$threads" "data.sampler.max_duration=$batch" $TRAIN_ARGS
    else
        banner 2 "train ($CONFIG -> $EXP): one process"
        # shellcheck disable=SC2086
        asr train --config "$CONFIG" --exp-dir "$EXP" $TRAIN_ARGS
    fi
fi

cuts=()
for s in $TEST_SETS; do cuts+=("$DATA/manifests/cuts_$s.jsonl.gz"); done
tcuts=("$DATA/manifests/cuts_test-seen.jsonl.gz" "$DATA/manifests/cuts_test-unseen.jsonl.gz")
wordlm=(--method beam --beam 8 --lm "$EXP/lm/words_3gram.arpa.gz" --lm-unit word --lm-weight "$WORD_LM_WEIGHT"
        --token-bonus "$WORD_TOKEN_BONUS")

head_of() {  # the model's head (ctc, rnnt, tdt, pruned_rnnt, pruned_tdt)
    asr info "$EXP/model.pt" | awk '/^head:/ {print $2}'
}

chunkwise_dir() {  # torch chunk-wise decoding at the model's inference context (the export's)
    local ctx
    ctx=$(asr info "$EXP/model.pt" --contexts | awk '{print $1}')  # the first trained context: the smallest look-ahead
    if [ "$ctx" != "-" ]; then echo "$EXP/decode/chunkwise_$ctx"; else echo "$EXP/decode/chunkwise"; fi
}

if run 3; then
    banner 3 "decode: WER per test split"
    asr info "$EXP/model.pt"
    asr decode --model "$EXP/model.pt" --cuts "${cuts[@]}" --out "$EXP/decode/greedy"
    ctx=$(asr info "$EXP/model.pt" --contexts | awk '{print $1}')
    if [ "$ctx" != "-" ]; then
        asr decode --model "$EXP/model.pt" --cuts "${cuts[@]}" --chunkwise --context "$ctx" --out "$(chunkwise_dir)"
    else
        asr decode --model "$EXP/model.pt" --cuts "${cuts[@]}" --chunkwise --out "$(chunkwise_dir)"
    fi
    # beam search fused with a token n-gram LM of the training transcripts
    asr lm --model "$EXP/model.pt" --cuts "$DATA/manifests/cuts_train.jsonl.gz" --dev "$DATA/manifests/cuts_dev.jsonl.gz" \
        --order 8 --out "$EXP/lm/tokens_8gram.arpa.gz"
    asr decode --model "$EXP/model.pt" --cuts "${cuts[@]}" --method beam --beam 8 --lm "$EXP/lm/tokens_8gram.arpa.gz" \
        --lm-weight "$LM_WEIGHT" --token-bonus "$TOKEN_BONUS" --out "$EXP/decode/beam8_lm"
    # a word 3-gram: the search spells only its vocabulary (the training transcripts' words)
    asr lm --unit word --cuts "$DATA/manifests/cuts_train.jsonl.gz" --dev "$DATA/manifests/cuts_dev.jsonl.gz" \
        --order 3 --out "$EXP/lm/words_3gram.arpa.gz"
    asr decode --model "$EXP/model.pt" --cuts "${cuts[@]}" "${wordlm[@]}" --out "$EXP/decode/beam8_wordlm"
    # the same search chunk by chunk, as a live stream decodes (the reference of the runtime's,
    # stage 5); streaming CTC decoding is greedy
    if [ "$(head_of)" != ctc ]; then
        if [ "$ctx" != "-" ]; then ctx_arg=(--context "$ctx"); else ctx_arg=(); fi
        asr decode --model "$EXP/model.pt" --cuts "${tcuts[@]}" --chunkwise ${ctx_arg[@]+"${ctx_arg[@]}"} "${wordlm[@]}" \
            --out "$(chunkwise_dir)_beam8_wordlm"
    fi
fi

if run 4; then
    banner 4 "export to ONNX ($EXP/onnx, fp32 and int8)"
    asr export --model "$EXP/model.pt" --out "$EXP/onnx" --int8
fi

if run 5; then
    banner 5 "the exported files on the test sets: our runtime (fp32, int8) and sherpa-onnx"
    # fp32: every transcript should equal torch's chunk-wise streaming (stage 3), greedy and beam + word LM
    asr decode --onnx "$EXP/onnx" --cuts "${tcuts[@]}" --out "$EXP/decode/onnx_fp32" --no-progress --compare-to "$(chunkwise_dir)"
    if [ "$(head_of)" != ctc ]; then
        asr decode --onnx "$EXP/onnx" --cuts "${tcuts[@]}" "${wordlm[@]}" --out "$EXP/decode/onnx_fp32_beam8_wordlm" --no-progress \
            --compare-to "$(chunkwise_dir)_beam8_wordlm"
    else
        echo "a CTC model: the runtime decodes CTC greedily (prefix beam search needs the whole utterance); no LM run"
    fi
    asr decode --onnx "$EXP/onnx" --int8 --cuts "${tcuts[@]}" --out "$EXP/decode/onnx_int8" --no-progress --compare-to "$EXP/decode/onnx_fp32"
    # sherpa-onnx runs full windows only: both runtimes get the same 0.5 s of silence after each
    # cut, and our transducer search emits at most one symbol per frame, as sherpa-onnx's does.
    # A TDT model has no sherpa-onnx transducer (its online search ignores durations): the
    # hybrid's CTC head is compared instead.
    kind=$(python -c "import json, sys; from serve.sherpa import sherpa_kind; print(sherpa_kind(json.load(open(sys.argv[1]))))" \
        "$EXP/onnx/model.json" 2>/dev/null || echo -)
    if [ "$kind" = "-" ]; then
        echo "no sherpa-onnx files in $EXP/onnx (see its model.json): sherpa-onnx comparison skipped"
    else
        if [ "$kind" = transducer ]; then how=(--max-symbols 1); else how=(--use-ctc); fi
        asr decode --onnx "$EXP/onnx" --cuts "${tcuts[@]}" --tail-padding 0.5 "${how[@]}" --out "$EXP/decode/onnx_${kind}_tail" --no-progress
        if [ "$kind" = transducer ]; then sherpa_how=(); else sherpa_how=(--use-ctc); fi
        asr decode --onnx "$EXP/onnx" --runtime sherpa --cuts "${tcuts[@]}" --tail-padding 0.5 ${sherpa_how[@]+"${sherpa_how[@]}"} \
            --out "$EXP/decode/sherpa_${kind}" --no-progress --compare-to "$EXP/decode/onnx_${kind}_tail"
    fi
fi

if run 6; then
    banner 6 "stream one unseen-voice test file through the ONNX runtime (no torch)"
    # sed, not head: head exits after one line and, under pipefail, the SIGPIPE it can send sort
    # ends the script (exit 141, seen on a fresh clone)
    wav=$(find "$DATA/corpus/LibriSpeech/test-unseen" -name '*.flac' | sort | sed -n 1p)
    asr stream --onnx "$EXP/onnx" "$wav"
    if [ "$(head_of)" != ctc ]; then  # and again with beam search and the word LM of stage 3
        asr stream --onnx "$EXP/onnx" "$wav" "${wordlm[@]}"
    fi
    grep -h "$(basename "$wav" .flac)" "$DATA"/corpus/LibriSpeech/test-unseen/*/*/*.trans.txt | sed 's/^/reference: /'
fi
