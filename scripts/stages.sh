# Shared by the recipes' run.sh: `source "$ROOT/scripts/stages.sh" "$@"` before the script
# changes directory, with LAST_STAGE set to its last stage number. Parses --stage N /
# --stop-stage M / --help (prints the calling script's leading comment), refuses anything else,
# and defines:
#   run N              true when stage N is selected
#   banner N TEXT      the stage's heading
#   from_caller VAR..  makes each named variable that holds a relative path absolute against the
#                      directory the user ran the script from (the script then works in the repo root)
_stages_script="$(cd "$(dirname "${BASH_SOURCE[1]}")" && pwd)/$(basename "${BASH_SOURCE[1]}")"
CALLER_PWD="$PWD"
stage=0
stop_stage="${LAST_STAGE:-100}"
_stages_usage() { echo "$(basename "$_stages_script"): $* (see --help)" >&2; exit 2; }
_stages_number() {
    [ $# -ge 2 ] || _stages_usage "$1 needs a stage number"
    [[ "$2" =~ ^[0-9]+$ ]] || _stages_usage "$1 needs a stage number, got '$2'"
    [ "$2" -le "${LAST_STAGE:-100}" ] || _stages_usage "$1 $2: there is no stage $2 (the stages are 0-${LAST_STAGE:-100})"
}
while [ $# -gt 0 ]; do
    case "$1" in
        --stage) _stages_number "$@"; stage="$2"; shift 2 ;;
        --stop-stage) _stages_number "$@"; stop_stage="$2"; shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$_stages_script" | sed '$d'; exit 0 ;;
        *) _stages_usage "unknown option $1" ;;
    esac
done
[ "$stage" -le "$stop_stage" ] || _stages_usage "--stage $stage is after --stop-stage $stop_stage: no stage would run"

run() { [ "$stage" -le "$1" ] && [ "$stop_stage" -ge "$1" ]; }
banner() { printf '\n\033[1;34m== stage %s: %s ==\033[0m\n' "$1" "$2"; }
from_caller() {
    local v
    for v in "$@"; do
        case "${!v:-}" in
            ""|/*) ;;
            *) printf -v "$v" '%s' "$CALLER_PWD/${!v}" ;;
        esac
    done
}
