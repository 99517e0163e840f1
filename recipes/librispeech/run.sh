#!/usr/bin/env bash
# LibriSpeech recipe, icefall-style numbered stages; each stage can be rerun alone.
#
#   LIBRISPEECH=/data/LibriSpeech bash recipes/librispeech/run.sh            # every stage
#   DOWNLOAD=1 bash recipes/librispeech/run.sh --stage 1 --stop-stage 1       # fetch the corpus (online)
#   CONFIG=recipes/librispeech/conf/citrinet_ctc.yaml bash recipes/librispeech/run.sh --stage 4
#   NGPU=8 bash recipes/librispeech/run.sh --stage 4 --stop-stage 4           # torchrun, 8 processes
#
# Stages: 0 set up .venv | 1 manifests (lhotse) | 2 MUSAN noise (optional) | 3 BPE tokenizer
#         4 train | 5 decode: greedy, beam (with n-gram LMs: LM_ORDER, WORD_LM_ORDER), streaming (simulated and
#         chunk-wise) | 6 export
#
# Environment (defaults in brackets):
#   LIBRISPEECH   LibriSpeech dir holding train-clean-100/ ... test-other/ [$DL_DIR/LibriSpeech]
#   DOWNLOAD      1: stage 1 downloads LibriSpeech into DL_DIR first [0]     DL_DIR [download]
#   MUSAN         MUSAN dir (music/ noise/ speech/); stage 2 is skipped without it
#   PARTS         splits to prepare [all seven]   TRAIN_PARTS splits to train on [the three train-*]
#   TEST_SETS     splits to decode [test-clean test-other dev-clean dev-other]
#   DEV_SETS      splits validated on during training [dev-clean dev-other]
#   NOISE_PROB    probability of mixing MUSAN noise into a training cut, once stage 2 has run [0.5]
#   DATA [data/librispeech]   VOCAB [500]   CONFIG [conf/fastconformer_hybrid_tdt_ctc.yaml]
#   EXP [exp/librispeech/<config name>]   NGPU [1]   TRAIN_ARGS  extra `asr train` arguments
#   CONTEXTS      Conformer contexts "left,right ..." decoded in stage 5 [every trained one]
#   LM_ORDER      n: stage 5 also trains an n-gram LM over BPE pieces on the training transcripts
#                 (`asr lm`; 4 is a fair start) and decodes beam 8 fused with it [empty: skip]
#   LM_WEIGHT [0.3]   TOKEN_BONUS [0.5]   the fusion weights (tune them on dev-clean/dev-other)
#   WORD_LM_ORDER n: stage 5 also trains a word n-gram on the training transcripts (`asr lm --unit
#                 word`; 3 is a fair start) and decodes beam 8 restricted to its vocabulary [empty: skip]
#   WORD_LM_WEIGHT [0.5]   WORD_TOKEN_BONUS [0.5]   its fusion weights
#
# The path is proven without a download on the mini corpus, which has LibriSpeech's layout:
#   LIBRISPEECH=data/mini/corpus/LibriSpeech PARTS="train dev test-seen test-unseen" \
#   TRAIN_PARTS=train DEV_SETS=dev TEST_SETS="test-seen test-unseen" DATA=data/mini_ls VOCAB=256 \
#   TRAIN_ARGS="--set max_minutes=3 model.encoder_config.preset=small" bash recipes/librispeech/run.sh
# Relative paths in LIBRISPEECH, DL_DIR, MUSAN, DATA, CONFIG and EXP are taken from the directory
# the script is run from; the defaults are in the repository.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
LAST_STAGE=6
source "$ROOT/scripts/stages.sh" "$@"
set --  # the options are parsed; later `source`s must not see them
from_caller LIBRISPEECH DL_DIR MUSAN DATA CONFIG EXP
cd "$ROOT"

DL_DIR="${DL_DIR:-download}"
LIBRISPEECH="${LIBRISPEECH:-$DL_DIR/LibriSpeech}"
DOWNLOAD="${DOWNLOAD:-0}"
MUSAN="${MUSAN:-}"
PARTS="${PARTS:-train-clean-100 train-clean-360 train-other-500 dev-clean dev-other test-clean test-other}"
TRAIN_PARTS="${TRAIN_PARTS:-train-clean-100 train-clean-360 train-other-500}"
TEST_SETS="${TEST_SETS:-test-clean test-other dev-clean dev-other}"
DEV_SETS="${DEV_SETS:-dev-clean dev-other}"
NOISE_PROB="${NOISE_PROB:-0.5}"
DATA="${DATA:-data/librispeech}"
VOCAB="${VOCAB:-500}"
CONFIG="${CONFIG:-recipes/librispeech/conf/fastconformer_hybrid_tdt_ctc.yaml}"
EXP="${EXP:-exp/librispeech/$(basename "$CONFIG" .yaml)}"
NGPU="${NGPU:-1}"
TRAIN_ARGS="${TRAIN_ARGS:-}"
CONTEXTS="${CONTEXTS:-}"
LM_ORDER="${LM_ORDER:-}"
LM_WEIGHT="${LM_WEIGHT:-0.3}"
TOKEN_BONUS="${TOKEN_BONUS:-0.5}"
WORD_LM_ORDER="${WORD_LM_ORDER:-}"
WORD_LM_WEIGHT="${WORD_LM_WEIGHT:-0.5}"
WORD_TOKEN_BONUS="${WORD_TOKEN_BONUS:-0.5}"
LANG_DIR="$DATA/lang_bpe$VOCAB"

manifests() { local p; for p in $1; do printf '%s\n' "$DATA/manifests/cuts_$p.jsonl.gz"; done; }  # one a line
yaml_list() { local f out=""; while IFS= read -r f; do out+="${out:+, }'${f//\'/\'\'}'"; done <<< "$1"; echo "[$out]"; }
mapfile -t TRAIN_CUTS < <(manifests "$TRAIN_PARTS")
mapfile -t TEST_CUTS < <(manifests "$TEST_SETS")

# Settings that only a late stage would trip over, checked before any stage runs.
[[ "$NGPU" =~ ^[1-9][0-9]*$ ]] || { echo "NGPU must be a number of processes (1, 2, ...), got '$NGPU'" >&2; exit 2; }
if run 4 && [ ! -f "$CONFIG" ]; then echo "CONFIG $CONFIG: no such file (the configs: recipes/librispeech/conf/)" >&2; exit 2; fi
if [ "$DOWNLOAD" = 1 ] && [ "$LIBRISPEECH" != "$DL_DIR/LibriSpeech" ]; then
    echo "DOWNLOAD=1 fetches LibriSpeech into DL_DIR ($DL_DIR/LibriSpeech), not into LIBRISPEECH ($LIBRISPEECH):" \
         "set DL_DIR to the directory to download into and leave LIBRISPEECH unset" >&2
    exit 2
fi

# stage 0 always runs: a no-op when .venv is up to date; recorded speech needs no TTS engines
ASR_NEEDS_TTS=0 source scripts/bootstrap.sh

if run 1; then
    banner 1 "manifests: $LIBRISPEECH -> $DATA/manifests"
    if [ ! -d "$LIBRISPEECH" ]; then
        if [ "$DOWNLOAD" = 1 ]; then
            lhotse download librispeech --full "$DL_DIR"
        else
            echo "LibriSpeech not found at $LIBRISPEECH: set LIBRISPEECH=/path/to/LibriSpeech, or DOWNLOAD=1 (online)" >&2
            exit 1
        fi
    fi
    # shellcheck disable=SC2086
    asr prepare --corpus "$LIBRISPEECH" --out "$DATA" --parts $PARTS --no-tokenizer --jobs "$(nproc)"
fi

if run 2; then
    banner 2 "MUSAN noise for augmentation (optional)"
    if [ -n "$MUSAN" ]; then
        asr prepare-noise --musan "$MUSAN" --out "$DATA/musan"
    else
        echo "skipped: set MUSAN=/path/to/musan to add MUSAN noise (stage 4 then mixes it into training cuts"
        echo "with probability NOISE_PROB)"
    fi
fi

if run 3; then
    banner 3 "BPE tokenizer ($VOCAB tokens) on $TRAIN_PARTS -> $LANG_DIR"
    asr tokenizer --cuts "${TRAIN_CUTS[@]}" --vocab-size "$VOCAB" --out "$LANG_DIR"
fi

if run 4; then
    banner 4 "train ($CONFIG -> $EXP, $NGPU process(es))"
    overrides=(--set "exp_dir=$EXP" "data.tokenizer=$LANG_DIR"
               "data.train=$(yaml_list "$(manifests "$TRAIN_PARTS")")"
               "data.dev=$(yaml_list "$(manifests "$DEV_SETS")")")
    if [ -f "$DATA/musan/recordings.jsonl.gz" ]; then  # stage 2 ran: train with its noise
        overrides+=("data.augment.noise_manifest=$DATA/musan/recordings.jsonl.gz" "data.augment.noise_prob=$NOISE_PROB")
    fi
    launch=(asr)
    # one machine (--standalone: a free port of its own); for several, call torchrun with --nnodes yourself
    if [ "$NGPU" -gt 1 ]; then launch=(torchrun --standalone --nproc_per_node "$NGPU" -m asr.cli); fi
    # shellcheck disable=SC2086
    "${launch[@]}" train --config "$CONFIG" "${overrides[@]}" $TRAIN_ARGS
fi

if run 5; then
    banner 5 "decode $TEST_SETS: greedy, beam, streaming"
    model="$EXP/model.pt"
    cuts=("${TEST_CUTS[@]}")
    asr decode --model "$model" --cuts "${cuts[@]}" --method greedy --out "$EXP/decode/greedy"
    asr decode --model "$model" --cuts "${cuts[@]}" --method beam --beam 4 --out "$EXP/decode/beam4"
    if [ -n "$LM_ORDER" ]; then  # a BPE-piece n-gram LM of the training transcripts, fused into beam search
        asr lm --model "$model" --cuts "${TRAIN_CUTS[@]}" --order "$LM_ORDER" --out "$EXP/lm/bpe_${LM_ORDER}gram.arpa.gz"
        asr decode --model "$model" --cuts "${cuts[@]}" --method beam --beam 8 --lm "$EXP/lm/bpe_${LM_ORDER}gram.arpa.gz" \
            --lm-weight "$LM_WEIGHT" --token-bonus "$TOKEN_BONUS" --out "$EXP/decode/beam8_lm${LM_ORDER}"
    fi
    if [ -n "$WORD_LM_ORDER" ]; then  # a word n-gram of the training transcripts: its vocabulary is the lexicon
        asr lm --unit word --cuts "${TRAIN_CUTS[@]}" --order "$WORD_LM_ORDER" --out "$EXP/lm/words_${WORD_LM_ORDER}gram.arpa.gz"
        asr decode --model "$model" --cuts "${cuts[@]}" --method beam --beam 8 --lm "$EXP/lm/words_${WORD_LM_ORDER}gram.arpa.gz" \
            --lm-unit word --lm-weight "$WORD_LM_WEIGHT" --token-bonus "$WORD_TOKEN_BONUS" --out "$EXP/decode/beam8_wordlm${WORD_LM_ORDER}"
    fi
    # Streaming: "simulated" decodes whole utterances under the streaming attention limits (equal
    # to chunk-wise by construction); "chunkwise" feeds the encoder window by window with its
    # caches and carries the decoder state across chunks, as a live stream does.
    contexts="$CONTEXTS"
    [ -z "$contexts" ] && contexts=$(asr info "$model" --contexts)
    if [ "$contexts" = "-" ]; then  # a causal encoder (Citrinet, LSTM, SSM): one context, its stream
        asr decode --model "$model" --cuts "${cuts[@]}" --chunkwise --out "$EXP/decode/chunkwise"
    else
        for ctx in $contexts; do
            asr decode --model "$model" --cuts "${cuts[@]}" --context "$ctx" --out "$EXP/decode/simulated_$ctx"
            asr decode --model "$model" --cuts "${cuts[@]}" --context "$ctx" --chunkwise --out "$EXP/decode/chunkwise_$ctx"
        done
    fi
fi

if run 6; then
    banner 6 "export to ONNX ($EXP/onnx)"
    asr export --model "$EXP/model.pt" --out "$EXP/onnx"
fi
