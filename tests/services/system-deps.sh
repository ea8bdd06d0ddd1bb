#!/usr/bin/env bash
# Install the Debian packages the tests use (PostgreSQL, Chromium), when missing. Needs root (CI runs as root); as a
# normal user it only says what to install.
set -euo pipefail
missing=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
# Browser tests drive Debian's Chromium with Playwright (no browser download of its own).
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "system-deps: please install: ${missing[*]} (e.g. sudo apt-get install ${missing[*]})" >&2
  exit 1
fi
echo "system-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# With recommends: Chromium's fonts and codecs come that way, and headless runs want them.
apt-get install -y -qq "${missing[@]}" >/dev/null
