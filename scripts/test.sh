#!/usr/bin/env bash
# Install (if needed) and run the default test suite. Extra arguments go to pytest.
source "$(dirname "$0")/_env.sh"
python -m pytest -q "$@"
