#!/usr/bin/env bash
# What `python -m bench` compares against: Debian's redis-server and wrk, and the Python
# packages (redis-py and hiredis, diskcache, matplotlib, gunicorn, Flask). Run once, from the
# repository root. Without redis-server or wrk the bench still runs: it says what it
# skipped, and drives gunicorn with a small Python load generator instead of wrk.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v wrk >/dev/null || missing+=(wrk)
if [ ${#missing[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null; then
    sudo_="" ; [ "$(id -u)" -eq 0 ] || sudo_="sudo"
    $sudo_ apt-get install -y -q "${missing[@]}" || echo "could not install ${missing[*]}; the bench will skip them" >&2
  else
    echo "no apt-get: install ${missing[*]} yourself, or the bench skips them" >&2
  fi
fi
python3 -m pip install --quiet -e '.[bench]'
