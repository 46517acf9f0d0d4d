#!/bin/bash
# Runs deploy_test.py with Debian's Python (python3-yaml, from scripts/setup.sh).
exec /usr/bin/python3 "$(dirname "$0")/deploy_test.py" "$@"
