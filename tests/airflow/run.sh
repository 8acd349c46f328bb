#!/usr/bin/env bash
# `make airflow-test`: the paylake DAG under real Airflow 3. Creates (once) a venv with pinned
# apache-airflow, apache-airflow-providers-standard and pytest under
# $HOME/.cache/paylake/airflow-venv/<versions>, then runs tests/airflow with it.
# Needs PAYLAKE_BIN (the Makefile passes the release binary).
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${PAYLAKE_BIN:?set PAYLAKE_BIN to the paylake binary}"

AIRFLOW_VERSION=3.3.2
STANDARD_PROVIDER_VERSION=1.21.0
PYTEST_VERSION=9.2.0
python_version="$(python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
venv="$HOME/.cache/paylake/airflow-venv/airflow-$AIRFLOW_VERSION-standard-$STANDARD_PROVIDER_VERSION-pytest-$PYTEST_VERSION-py$python_version"

if [ ! -f "$venv/.installed" ]; then
  echo "airflow-test: creating $venv (once; about a minute)" >&2
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q \
    "apache-airflow==$AIRFLOW_VERSION" \
    "apache-airflow-providers-standard==$STANDARD_PROVIDER_VERSION" \
    "pytest==$PYTEST_VERSION"
  touch "$venv/.installed"
fi

export PATH="$venv/bin:$PATH"
exec "$venv/bin/python" -m pytest -q -p no:cacheprovider -o tmp_path_retention_policy=failed tests/airflow "$@"
