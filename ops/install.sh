#!/bin/sh
# The image's install step as a plain script: the Dockerfile runs it in both stages, and
# tests/ops/test_image.py runs it on this machine to show it works without a Docker engine.
#
#   ops/install.sh wheels DIR        build the pinned wheel set into DIR: every dependency at the
#                                    version and hash ops/requirements.lock names, and this project
#   ops/install.sh install DIR VENV  create VENV and install from DIR alone (no index, no pip
#                                    configuration): exactly the locked set, hashes checked again,
#                                    then this project without resolving anything anew
#
# ops/requirements.lock is pyproject.toml's dependencies, resolved with their own dependencies and
# hashed: regenerate it after changing a dependency with
#   pip-compile --allow-unsafe --generate-hashes --strip-extras --no-emit-index-url \
#       --no-emit-find-links --output-file ops/requirements.lock pyproject.toml
set -eu
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

case "${1:-}" in
    wheels)
        [ $# -eq 2 ] || { echo "usage: $0 wheels DIR" >&2; exit 2; }
        mkdir -p "$2"
        "$PYTHON" -m pip wheel --quiet --no-deps --require-hashes --wheel-dir "$2" -r ops/requirements.lock
        "$PYTHON" -m pip wheel --quiet --no-deps --wheel-dir "$2" .
        ;;
    install)
        [ $# -eq 3 ] || { echo "usage: $0 install DIR VENV" >&2; exit 2; }
        "$PYTHON" -m venv "$3"
        "$3/bin/python" -m pip --isolated install --quiet --no-index --no-cache-dir --find-links "$2" \
            --require-hashes -r ops/requirements.lock
        "$3/bin/python" -m pip --isolated install --quiet --no-index --no-cache-dir --no-deps "$2"/marketplace_pay-*.whl
        "$3/bin/python" -m pip --isolated check
        ;;
    *)
        echo "usage: $0 wheels DIR | install DIR VENV" >&2
        exit 2
        ;;
esac
