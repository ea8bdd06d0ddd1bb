#!/usr/bin/env bash
# Start the real services the tests use, run the given command with their addresses in the
# environment, and stop the services whatever the command's outcome.
#   tests/services/with-services.sh .venv/bin/pytest -q
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
export VA_RUN_DIR="${VA_RUN_DIR:-$(pwd)/.run}"

voiceagent="$(pwd)/.venv/bin/voiceagent"
# The tests' broker: its own data folder, wiped at every start.
export VOICEAGENT_EVENTS__ROCKETMQ__LOCAL__DATA_DIR="$VA_RUN_DIR/rocketmq-test"

stop_all() {
  "$voiceagent" broker stop >/dev/null 2>&1 || true
  "$here/postgres.sh" stop >/dev/null 2>&1 || true
}
trap stop_all EXIT INT TERM

"$here/postgres.sh" start || exit 1
set -a
# shellcheck disable=SC1091
. "$VA_RUN_DIR/postgres.env"
set +a
"$voiceagent" broker start --fresh || exit 1
export VA_TEST_ROCKETMQ_ENDPOINT=127.0.0.1:8081
export VA_TEST_ROCKETMQ_DATA_DIR="$VOICEAGENT_EVENTS__ROCKETMQ__LOCAL__DATA_DIR"
export VA_REQUIRE_SERVICES=1
echo "services: PostgreSQL at ${VA_TEST_POSTGRES_URL}; RocketMQ gRPC proxy at ${VA_TEST_ROCKETMQ_ENDPOINT}"

"$@"
