#!/usr/bin/env bash
# `make s3-test` and `make cluster-test`: the pipeline with its landing and its lake on S3 (and,
# for the cluster test, Silver and Gold on a Ballista scheduler and two executors), against
# moto's S3 server on loopback. Creates (once) a venv with pinned moto[server] and pytest under
# $HOME/.cache/paylake/s3-venv/<versions>, starts `moto_server` on 127.0.0.1 and a free port,
# runs tests/s3 against it, and stops the server whatever happens.
# Needs PAYLAKE_BIN (the Makefile passes the release binary).
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${PAYLAKE_BIN:?set PAYLAKE_BIN to the paylake binary}"

MOTO_VERSION=5.2.5
PYTEST_VERSION=9.2.0
python_version="$(python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
venv="$HOME/.cache/paylake/s3-venv/moto-$MOTO_VERSION-pytest-$PYTEST_VERSION-py$python_version"

if [ ! -f "$venv/.installed" ]; then
  echo "s3-test: creating $venv (once; about a minute)" >&2
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "moto[server]==$MOTO_VERSION" "pytest==$PYTEST_VERSION"
  touch "$venv/.installed"
fi

port="$("$venv/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
log="$(mktemp -t paylake-moto.XXXXXX)"
"$venv/bin/moto_server" -H 127.0.0.1 -p "$port" >"$log" 2>&1 &
server=$!
stop_server() {
  kill "$server" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
  rm -f "$log"
}
trap stop_server EXIT

endpoint="http://127.0.0.1:$port"
for _ in $(seq 1 100); do
  if "$venv/bin/python" -c "import urllib.request, sys; urllib.request.urlopen(sys.argv[1], timeout=1)" "$endpoint/moto-api/" 2>/dev/null; then
    break
  fi
  if ! kill -0 "$server" 2>/dev/null; then
    echo "s3-test: moto_server exited:" >&2
    cat "$log" >&2
    exit 1
  fi
  sleep 0.2
done

# The standard AWS variables, as an operator would set them for MinIO or another S3 store.
export AWS_ENDPOINT_URL="$endpoint"
export AWS_ALLOW_HTTP=true
export AWS_REGION=us-east-1
export AWS_ACCESS_KEY_ID=paylake-test
export AWS_SECRET_ACCESS_KEY=paylake-test-secret-never-printed
# The tests to run (default: all of tests/s3), with any pytest options.
"$venv/bin/python" -m pytest -q -p no:cacheprovider -o tmp_path_retention_policy=failed "${@:-tests/s3}"
