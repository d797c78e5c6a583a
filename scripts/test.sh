#!/usr/bin/env bash
# The test command: installs what is missing (Debian packages), builds from
# scratch if needed, and runs every test with CTest (unit, integration, MPI).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh "$@"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
cd build
ctest --output-on-failure -j "${HPDL_TEST_JOBS:-2}" --timeout 600
