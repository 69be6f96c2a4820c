#!/usr/bin/env bash
# Run imgsync from cron or systemd: load settings from an env file, sync quietly, log the JSON summary.
#
#   imgsync-cron.sh [ENV_FILE]        (default: /etc/imgsync/imgsync.env)
#
# The env file sets IMGSYNC_* variables (see imgsync.env.example) plus IMGSYNC_CSV, the pairs to back up,
# or IMGSYNC_PRODUCTS, a space-separated list of product ids. The summary line goes to IMGSYNC_LOG
# (default: /var/log/imgsync/summary.jsonl), one JSON object per run with the time and exit code added.
# The exit code is imgsync's own, so cron mail and systemd see failures: 0 ok, 1 some images failed,
# 2 bad input or config, 3 credentials refused, 4 portal unavailable, 75 another run still going.
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

imgsync=${IMGSYNC_BIN:-imgsync}
log=${IMGSYNC_LOG:-/var/log/imgsync/summary.jsonl}
mkdir -p "$(dirname "$log")"

args=(sync --json --quiet --no-progress)
[ -n "${IMGSYNC_CSV:-}" ] && args+=(--csv "$IMGSYNC_CSV")
for product in ${IMGSYNC_PRODUCTS:-}; do args+=(--product "$product"); done

summary=$("$imgsync" "${args[@]}")
code=$?
if [ "$code" -eq 75 ]; then
  echo "imgsync-cron: the previous run is still going; skipped" >&2
fi
started=$(date -u +%Y-%m-%dT%H:%M:%SZ)
if [ -n "$summary" ]; then
  printf '{"at": "%s", "exit_code": %d, "summary": %s}\n' "$started" "$code" "$summary" >> "$log"
else
  printf '{"at": "%s", "exit_code": %d, "summary": null}\n' "$started" "$code" >> "$log"
fi
exit "$code"
