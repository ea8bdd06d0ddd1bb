#!/usr/bin/env bash
# Vendor the browser libraries the admin dashboard uses into voiceagent/web/static/vendor/ (served
# at /static/vendor/): fetched from the npm registry at install time, checked against pinned
# hashes, never loaded from a CDN at run time. Does nothing when the files are already in place.
set -euo pipefail
cd "$(dirname "$0")/../.."

VERSION=4.6.1
# From `npm view chart.js@4.6.1 dist.integrity`: the tarball's sha512.
INTEGRITY="sha512-hJyniucsFmq//EvXYvJ6c6mahPoI3kaxdjVH8awTaJ/fDNWeSqqqArixMJWkWNN6fcYvPU3HneSANFNYtRi61g=="
# package/dist/chart.umd.min.js inside that tarball.
JS_SHA256=87364cc2b2a76a6684929e7d6b80b18a897794db38400caff1fcf1791c6925d2
DEST=voiceagent/web/static/vendor
JS="$DEST/chart.umd.min.js"

fail() { echo "vendor-js: $*" >&2; exit 1; }

if [ -f "$JS" ] && [ -f "$DEST/chart.js.LICENSE.md" ] \
  && [ "$(sha256sum "$JS" | cut -d' ' -f1)" = "$JS_SHA256" ]; then
  exit 0
fi

command -v npm >/dev/null 2>&1 || fail "npm is missing: install Node.js/npm (e.g. apt-get install npm) to vendor chart.js@$VERSION"
command -v openssl >/dev/null 2>&1 || fail "openssl is missing: needed to check the chart.js@$VERSION tarball"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

(cd "$tmp" && npm pack "chart.js@$VERSION" --silent >/dev/null 2>"$tmp/npm.log") \
  || fail "npm pack chart.js@$VERSION failed: $(tail -n 1 "$tmp/npm.log")"
tarball="$tmp/chart.js-$VERSION.tgz"
[ -f "$tarball" ] || fail "npm pack chart.js@$VERSION made no $(basename "$tarball")"

got="sha512-$(openssl dgst -sha512 -binary "$tarball" | base64 | tr -d '\n')"
[ "$got" = "$INTEGRITY" ] || fail "chart.js@$VERSION tarball integrity mismatch: got $got"

tar -xzf "$tarball" -C "$tmp" package/dist/chart.umd.min.js package/LICENSE.md \
  || fail "chart.js@$VERSION tarball lacks package/dist/chart.umd.min.js or package/LICENSE.md"
[ "$(sha256sum "$tmp/package/dist/chart.umd.min.js" | cut -d' ' -f1)" = "$JS_SHA256" ] \
  || fail "chart.umd.min.js from chart.js@$VERSION has an unexpected sha256"

mkdir -p "$DEST"
install -m 0644 "$tmp/package/LICENSE.md" "$DEST/chart.js.LICENSE.md"
install -m 0644 "$tmp/package/dist/chart.umd.min.js" "$JS.part"
mv -f "$JS.part" "$JS"
echo "vendor-js: chart.js@$VERSION -> $JS"
