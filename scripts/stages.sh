# Shared by the recipes' run.sh: `source scripts/stages.sh "$@"` after cd to the repo root.
# Parses --stage N / --stop-stage M / --help (prints the calling script's leading comment),
# and defines run N (true when stage N is selected) and banner N TEXT.
stage=0
stop_stage=100
while [ $# -gt 0 ]; do
    case "$1" in
        --stage) stage="$2"; shift 2 ;;
        --stop-stage) stop_stage="$2"; shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
        *) echo "unknown option $1 (see --help)" >&2; exit 1 ;;
    esac
done

run() { [ "$stage" -le "$1" ] && [ "$stop_stage" -ge "$1" ]; }
banner() { printf '\n\033[1;34m== stage %s: %s ==\033[0m\n' "$1" "$2"; }
