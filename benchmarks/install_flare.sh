#!/usr/bin/env bash
# Build FLARE (mir-flare 1.4.0, the FLARE++ sparse GP) into its own venv, offline from GitHub.
#
# Its CMake build downloads Eigen, pybind11, googletest and a JSON library from GitHub at
# build time; only the package registries are reachable here. Debian's packages hold all
# four: the Eigen download becomes an interface target on the system headers, pybind11 is
# found as a CMake package, and googletest and the JSON library come from local folders.
# The package's own requirements pin numpy < 1.23 and ase 3.22 (no wheels for Python 3.11),
# so it is installed without them and given numpy 1.26, scipy, ase 3.23, numba and pyyaml.
#
# Usage: benchmarks/install_flare.sh [VENV] [WORKDIR]   (defaults /work/peers/flare and
# /work/peers/flare_src, where each run builds in a new build.XXXXXX folder; needs root
# for apt-get). Check: FLARE's own sparse-GP tests.
set -euo pipefail
VENV=${1:-/work/peers/flare}
WORK=${2:-/work/peers/flare_src}
HERE=$(cd "$(dirname "$0")" && pwd)
PYTHON=${PYTHON:-python3}

if [ -e "$VENV" ] && [ ! -f "$VENV/pyvenv.cfg" ]; then
    echo "install_flare.sh: $VENV exists and is not a venv; refusing to write into it" >&2
    exit 2
fi

DEBIAN_FRONTEND=noninteractive apt-get install -y -q libeigen3-dev nlohmann-json3-dev \
    pybind11-dev libgtest-dev liblapack-dev liblapacke-dev libopenblas-dev cmake > /dev/null

mkdir -p "$WORK"
cd "$(mktemp -d "$WORK/build.XXXXXX")"  # a new folder: nothing already there is touched
"$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install -q "numpy<2" scipy "ase==3.23.0" numba pyyaml setuptools wheel \
    pytest pytest-mock
"$VENV/bin/pip" download -q mir-flare==1.4.0 --no-deps --no-binary :all: -d .
tar xzf mir_flare-1.4.0.tar.gz

# nlohmann_json::nlohmann_json as an interface target on the system headers
mkdir -p json
cat > json/CMakeLists.txt <<'EOF'
cmake_minimum_required(VERSION 3.10)
project(nlohmann_json_system LANGUAGES CXX)
add_library(nlohmann_json INTERFACE)
add_library(nlohmann_json::nlohmann_json ALIAS nlohmann_json)
target_include_directories(nlohmann_json INTERFACE /usr/include)
EOF

# the two downloads in CMakeLists.txt replaced by the system copies
"$VENV/bin/python" - mir_flare-1.4.0/CMakeLists.txt <<'EOF'
import sys
from pathlib import Path

p = Path(sys.argv[1])
s = p.read_text()
start = s.index("ExternalProject_Add(\n    eigen_project")
end = s.index("include_directories(${SOURCE_DIR})", start) + len("include_directories(${SOURCE_DIR})")
s = s[:start] + """add_custom_target(eigen_project)
add_library(Eigen3 INTERFACE)
target_include_directories(Eigen3 SYSTEM INTERFACE /usr/include/eigen3)
include_directories(/usr/include/eigen3)""" + s[end:]
old = """FetchContent_Declare(
    pybind11
    GIT_REPOSITORY https://github.com/pybind/pybind11
)
FetchContent_MakeAvailable(pybind11)"""
assert s.count(old) == 1, "unexpected CMakeLists.txt"
p.write_text(s.replace(old, "find_package(pybind11 CONFIG REQUIRED)"))
EOF

export FLARE_CMAKE_FLAGS="-DFETCHCONTENT_SOURCE_DIR_GOOGLETEST=/usr/src/googletest \
-DFETCHCONTENT_SOURCE_DIR_JSON=$PWD/json -DFETCHCONTENT_FULLY_DISCONNECTED=ON \
-DPython_EXECUTABLE=$VENV/bin/python -DCMAKE_BUILD_TYPE=Release"
"$VENV/bin/pip" install -q --no-deps --no-build-isolation ./mir_flare-1.4.0

# FLARE's own sparse-GP tests, run outside the source tree (which would shadow the build)
cp -r mir_flare-1.4.0/tests tests_run
(cd tests_run && OMP_NUM_THREADS=1 "$VENV/bin/python" -m pytest -q -p no:cacheprovider \
    test_sparse_gp.py)
echo "FLARE installed in $VENV (check script: $HERE/install_flare.sh)"
