#!/usr/bin/env bash
# pip install "$@" (the README's install step, e.g. `bash install.sh -e ".[test,all-envs]"`), for the one step that
# can fail for reasons outside this project: the ALFWorld engine's C++ builds from source (fast-downward-textworld,
# jericho: gcc, g++, make and cmake, ~5 min on 2 cores).
#   BUILD_JOBS=N  compile jobs of those builds. fast-downward-textworld's build.py runs `make -j<all CPUs>` on its
#                 command line, which overrides MAKEFLAGS, so a `make` shim put first on PATH replaces any -j with
#                 -jN (and says so). Default: unset, the packages' own job count.
#   SPA_INSTALL_RETRY=0  no automatic retry (below).
# When pip fails in such a build, this says which package, why it most likely failed and what to do: jobs that were
# "Terminated" / "Killed" without a compiler error were stopped from outside (memory pressure on a shared machine:
# the OOM killer or a memory daemon, or a time limit); then it retries once with BUILD_JOBS=1 (pip keeps the wheels
# that finished, so only the failed package builds again). A compiler error or a missing tool is named instead.
set -uo pipefail
PYTHON=${PYTHON:-python}
SPA_INSTALL_RETRY=${SPA_INSTALL_RETRY:-1}
ENGINES='fast[-_]downward[-_]textworld|jericho'
say() { echo "[spa-rl install] $*" >&2; }

if (( $# == 0 )); then echo "usage: bash install.sh <pip install arguments>, e.g. -e \".[test,all-envs]\"" >&2; exit 2; fi
if [[ -n "${BUILD_JOBS:-}" && ! "$BUILD_JOBS" =~ ^[1-9][0-9]*$ ]]; then
  echo "BUILD_JOBS=$BUILD_JOBS: use a whole number of compile jobs >= 1" >&2; exit 2
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# make_shim: a `make` first on PATH that runs the real one with -j$BUILD_JOBS in place of the caller's -j
make_shim() {
  local real; real=$(command -v make) || { say "no 'make' on PATH: install make (and gcc, g++, cmake)"; exit 1; }
  mkdir -p "$work/bin"
  cat > "$work/bin/make" <<EOF
#!/usr/bin/env bash
args=() skip=0
for a in "\$@"; do
  if (( skip )); then skip=0; [[ "\$a" =~ ^[0-9]+\$ ]] && continue; fi
  case "\$a" in -j|--jobs) skip=1 ;; -j[0-9]*|--jobs=*) ;; *) args+=("\$a") ;; esac
done
echo "[spa-rl install] make: \$* -> -j$BUILD_JOBS (BUILD_JOBS)" >&2
exec "$real" -j$BUILD_JOBS "\${args[@]}"
EOF
  chmod +x "$work/bin/make"
  export PATH="$work/bin:$PATH"
}

run_pip() {  # pip install "$@", its output shown and kept in $work/pip.log
  : > "$work/pip.log"
  "$PYTHON" -m pip install "$@" 2>&1 | tee "$work/pip.log"
  return "${PIPESTATUS[0]}"
}

# explain: what failed and why, from pip's output; prints "outside" when the jobs were stopped from outside
explain() {
  local log=$work/pip.log engine
  engine=$(grep -oiE "(building wheel for|failed to build|failed building wheel for|collecting|preparing metadata .*) ?($ENGINES)" "$log" \
           | grep -oiE "$ENGINES" | tail -1)
  if [[ -z "$engine" ]] && ! grep -qiE "$ENGINES" "$log"; then return; fi
  engine=${engine:-$(grep -oiE "$ENGINES" "$log" | tail -1)}
  local load mem
  load=$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo "?")
  mem=$(awk '/MemAvailable/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo 2>/dev/null || echo "?")
  say "pip failed while building $engine from source (part of the ALFWorld engine; C++ compiled with make)."
  if grep -qE "Terminated|Killed|Error 143|Error 137|signal terminated program" "$log" \
      && ! grep -qE "\.(c|cc|cpp|h|hpp):[0-9]+(:[0-9]+)?: (fatal )?error:" "$log"; then
    say "Its compile jobs were stopped from outside (\"Terminated\"/\"Killed\" above, no compiler error): on a shared"
    say "or small machine that is memory pressure (the OOM killer or a memory daemon) or a time limit, not a fault of"
    say "the package. Now: load average $load, available memory $mem, build jobs ${BUILD_JOBS:-all CPUs ($(nproc))}."
    say "Fix: rerun (pip keeps the wheels that finished), with fewer compile jobs: BUILD_JOBS=1 bash install.sh $*"
    say "(MAKEFLAGS does not help: fast-downward-textworld passes -j<all CPUs> to make on the command line)."
    echo outside
  elif grep -qiE "could not find '(cmake|make)'|(cmake|make|gcc|g\+\+|cc1plus): (command )?not found|No CMAKE_CXX_COMPILER" "$log"; then
    say "A build tool is missing: install gcc, g++, make and cmake (e.g. apt-get install build-essential cmake), then rerun."
  else
    say "The compiler or cmake reported an error (lines above); gcc, g++, make and cmake are needed. Load average $load,"
    say "available memory $mem. A rerun with BUILD_JOBS=1 shows the first error alone."
  fi
}

if [[ -n "${BUILD_JOBS:-}" ]]; then make_shim; fi
run_pip "$@" && exit 0
rc=$?
cause=$(explain "$@")
if [[ "$cause" == outside && -z "${BUILD_JOBS:-}" && "$SPA_INSTALL_RETRY" != 0 ]]; then
  say "Retrying once with BUILD_JOBS=1 (SPA_INSTALL_RETRY=0 turns this off)."
  BUILD_JOBS=1
  make_shim
  run_pip "$@" && exit 0
  rc=$?
  explain "$@" >/dev/null
fi
exit "$rc"
