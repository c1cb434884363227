#!/usr/bin/env bash
# Installs Switchboard with its test dependencies into ./.venv and runs the whole test suite
# against real services: Apache Kafka (started here unless SWITCHBOARD_TEST_KAFKA names one),
# Dovecot and swaks from Debian's packages (installed here when missing). Extra arguments go
# to pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check --upgrade pip
.venv/bin/pip install -q --disable-pip-version-check -e '.[dev]'

if ! command -v swaks >/dev/null || [ ! -x /usr/sbin/dovecot ]; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends dovecot-imapd swaks >/dev/null
fi

if [ -z "${SWITCHBOARD_TEST_KAFKA:-}" ]; then
  kafka_data=$(mktemp -d)
  deploy/kafka/kafka.sh start 19092 "$kafka_data"
  trap 'deploy/kafka/kafka.sh stop "$kafka_data"; rm -rf "$kafka_data"' EXIT
  export SWITCHBOARD_TEST_KAFKA=127.0.0.1:19092
fi

.venv/bin/python -m pytest "$@"
