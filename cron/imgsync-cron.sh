#!/usr/bin/env bash
# Run imgsync from cron or systemd: load settings from an env file, sync quietly, log the JSON summary.
#
#   imgsync-cron.sh [ENV_FILE]        (default: /etc/imgsync/imgsync.env)
#
# The env file sets IMGSYNC_* variables (see imgsync.env.example) plus IMGSYNC_CSV, the pairs to back up,
# or IMGSYNC_PRODUCTS, a space-separated list of product ids, and/or IMGSYNC_SYNC_ARGS (e.g. "--all"). The summary line goes to IMGSYNC_LOG
# (default: /var/log/imgsync/summary.jsonl), one JSON object per run: {"at": <start time>, "exit_code": N,
# "summary": <imgsync's --json object, or null>}.
#
# cron's PATH is /usr/bin:/bin, so the imgsync command is looked for, in this order: $IMGSYNC_BIN (env file
# or environment), the virtual environment of the checkout this script lives in (<checkout>/.venv, where the
# README installs it), /opt/imgsync/.venv, then PATH.
#
# The exit code is imgsync's own, so cron mail and systemd see failures: 0 ok, 1 some images failed,
# 2 bad input or config, 3 credentials refused, 4 portal unavailable, 5 a cap stopped the run (the next run
# continues), 75 another run still going; 127 the imgsync command was not found.
# Under --quiet imgsync prints only errors and one line per failed image on stderr: what cron mails.
set -u
env_file=${1:-/etc/imgsync/imgsync.env}
if [ ! -r "$env_file" ]; then
  echo "imgsync-cron: cannot read $env_file" >&2
  exit 2
fi
set -a
# shellcheck disable=SC1090
. "$env_file"
set +a

# The checkout this script belongs to, through a symbolic link to the script if there is one.
self=$(readlink -f "${BASH_SOURCE[0]}" 2>/dev/null || echo "${BASH_SOURCE[0]}")
checkout=$(cd "$(dirname "$self")/.." 2>/dev/null && pwd -P)

find_imgsync() {
  local candidate
  if [ -n "${IMGSYNC_BIN:-}" ]; then
    # Set on purpose: never fall back to another imgsync than the one asked for.
    if [[ "$IMGSYNC_BIN" == */* ]]; then
      [ -x "$IMGSYNC_BIN" ] && [ ! -d "$IMGSYNC_BIN" ] && echo "$IMGSYNC_BIN"
    else
      command -v -- "$IMGSYNC_BIN"
    fi
    return
  fi
  for candidate in ${checkout:+"$checkout/.venv/bin/imgsync"} /opt/imgsync/.venv/bin/imgsync; do
    if [ -x "$candidate" ] && [ ! -d "$candidate" ]; then
      echo "$candidate"
      return
    fi
  done
  command -v imgsync
}

if ! imgsync=$(find_imgsync) || [ -z "$imgsync" ]; then
  if [ -n "${IMGSYNC_BIN:-}" ]; then
    echo "imgsync-cron: IMGSYNC_BIN=$IMGSYNC_BIN is not an executable command; fix IMGSYNC_BIN in $env_file" >&2
  else
    echo "imgsync-cron: imgsync not found (tried ${checkout:+$checkout/.venv/bin/imgsync, }/opt/imgsync/.venv/bin/imgsync and PATH=$PATH); set IMGSYNC_BIN in $env_file" >&2
  fi
  exit 127
fi

log=${IMGSYNC_LOG:-/var/log/imgsync/summary.jsonl}
mkdir -p "$(dirname "$log")"

args=(sync --json --quiet --no-progress)
[ -n "${IMGSYNC_CSV:-}" ] && args+=(--csv "$IMGSYNC_CSV")
for product in ${IMGSYNC_PRODUCTS:-}; do args+=(--product "$product"); done
# IMGSYNC_SYNC_ARGS: more sync arguments, split on spaces, e.g. "--all" or "--all --deep --max-duration 5h".
# shellcheck disable=SC2206
[ -n "${IMGSYNC_SYNC_ARGS:-}" ] && args+=(${IMGSYNC_SYNC_ARGS})

# The time the run started, not the time it ended: a run of hours is logged under the night it began.
started=$(date -u +%Y-%m-%dT%H:%M:%SZ)
summary=$("$imgsync" "${args[@]}")
code=$?
if [ "$code" -eq 75 ]; then
  echo "imgsync-cron: the previous run is still going; skipped" >&2
fi
# --json prints one object on one line. Anything else (nothing, after an early error; stray output) must not
# break the JSON Lines log: it is kept as a string beside a null summary.
if [[ "$summary" == "{"*"}" && "$summary" != *$'\n'* ]]; then
  printf '{"at": "%s", "exit_code": %d, "summary": %s}\n' "$started" "$code" "$summary" >> "$log"
elif [ -n "$summary" ]; then
  text=${summary//\\/\\\\}
  text=${text//\"/\\\"}
  text=${text//$'\n'/\\n}
  text=${text//$'\t'/\\t}
  text=$(printf '%s' "$text" | tr -d '\000-\037')
  printf '{"at": "%s", "exit_code": %d, "summary": null, "stdout": "%s"}\n' "$started" "$code" "$text" >> "$log"
else
  printf '{"at": "%s", "exit_code": %d, "summary": null}\n' "$started" "$code" >> "$log"
fi
exit "$code"
