#!/usr/bin/env bash
# ab.sh - two or more revisions of tunnelpyd measured against each other in one interleaved run.
#
# Usage:  bench/ab.sh [-n RUNS] [-t SECONDS] [-a] REV[=NAME][,VAR=VALUE...] REV[=NAME]...
#   REV       a git revision of this checkout (HEAD, HEAD~2, a1b2c3d, a branch), "work" for
#             the working tree as it is, or a directory holding a tunnelpy/ package (a variant
#             made by hand); NAME labels its row (default: the short commit id); VAR=VALUE
#             pairs after commas go into that row's daemons' environment, e.g.
#             HEAD=floor,TUNNELPY_TEST_AEAD=copy (docs/performance.md, the floor)
#   -n RUNS   interleaved repetitions (default 4); tables show medians [min-max]
#   -t SECONDS iperf3 duration per test (default 5)
#   -a        all tests (TCP x1, TCP x4, UDP 64 B); default TCP x1 only, which is the quickest
#             signal: a change to the per-segment path shows there first
#   env: OFFLOAD (auto), WORKERS (1), L2=1 (run over an L2 segment's TAP), VXLAN=1 (plain
#        RFC 7348 VXLAN, no cipher, over a segment's TAP, as the tunnelpyd-vxlan row), ANCHORS (anchor
#        rows interleaved with them, e.g. ANCHORS="raw wggo" for the ratios), and everything
#        anchors.sh reads (MTU, QUIET_WAIT, OUTDIR)
#
# Why: this machine's speed drifts by up to 2x within minutes (other jobs), so a change to the
# data path can only be judged against the code before it in the same run, interleaved. And
# instruction counts (callgrind on bench/hotpath.py) are not enough: a numpy rewrite of the
# split, coalesce and receive paths cut them by 23 % and was 5-15 % slower end to end
# (docs/performance.md, "Tried and measured"). Each revision's tunnelpy/ is exported to a
# temporary tree and run with that tree first on sys.path; everything is removed on exit.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
RUNS=4; DUR=5; ALL=0
while getopts "n:t:ah" o; do
  case $o in
    n) RUNS=$OPTARG ;;
    t) DUR=$OPTARG ;;
    a) ALL=1 ;;
    *) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
[ $# -ge 2 ] || { echo "ab.sh: give at least two revisions (see -h)" >&2; exit 2; }

W=$(mktemp -d /tmp/tunnelpy-ab.XXXXXX)
trap 'rm -rf "$W"' EXIT
PLUGIN=$W/ab.plugin.sh
printf 'source %q\n' "$HERE/tunnelpyd.plugin.sh" >"$PLUGIN"
ROWS=()
for spec in "$@"; do
  envs=""
  case $spec in *,*) envs=${spec#*,}; spec=${spec%%,*} ;; esac
  rev=${spec%%=*}
  if [ "$rev" = work ]; then
    id="work-$(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo tree)"
  elif [ -d "$rev/tunnelpy" ]; then
    id=$(basename "$rev")
  else
    id=$(git -C "$ROOT" rev-parse --short "$rev^{commit}") || { echo "ab.sh: no revision $rev" >&2; exit 2; }
  fi
  name=${spec#*=}; [ "$name" = "$spec" ] && name=$id
  case $name in *[!A-Za-z0-9_.-]*) echo "ab.sh: row name '$name': letters, digits, . _ - only" >&2; exit 2 ;; esac
  row="ab-$name"
  mkdir -p "$W/$name"
  if [ "$rev" = work ]; then
    cp -r "$ROOT/tunnelpy" "$W/$name/"
  elif [ -d "$rev/tunnelpy" ]; then
    cp -r "$rev/tunnelpy" "$W/$name/"
  else
    git -C "$ROOT" archive "$rev" tunnelpy | tar -x -C "$W/$name"
  fi
  # The optional compiled helpers (tunnelpy/*/*.pyx, Cython; each names its own libraries in a
  # "# distutils:" line, e.g. libcrypto) as an install would build them.
  for pyx in "$W/$name"/tunnelpy/*/*.pyx; do
    [ -e "$pyx" ] || continue
    ls "${pyx%.pyx}".*.so >/dev/null 2>&1 && continue
    (cd "$(dirname "$pyx")" && python3 -m Cython.Build.Cythonize -i -3 -q "$(basename "$pyx")" >/dev/null 2>&1) \
      || echo "ab.sh: could not build $(basename "$pyx") for $name: it runs without it" >&2
  done
  exports=""
  IFS=, read -ra pairs <<<"$envs"
  for kv in "${pairs[@]}"; do
    case $kv in [A-Za-z_]*=*) exports+="export $(printf '%q' "$kv")"$'\n' ;; *) echo "ab.sh: not VAR=VALUE: $kv" >&2; exit 2 ;; esac
  done
  # cd / first: `python3 -c` puts the current directory ahead of PYTHONPATH on sys.path.
  cat >"$W/tp-$name" <<EOF
#!/bin/sh
cd /
$exports
PYTHONPATH=$W/$name exec python3 -c 'import sys; from tunnelpy.cli import daemon_main; sys.exit(daemon_main())' "\$@"
EOF
  chmod +x "$W/tp-$name"
  cat >>"$PLUGIN" <<EOF
tun_${row}_up() {
  TUNNELPYD=$W/tp-$name TP_OFFLOAD=\${OFFLOAD:-auto} TP_WORKERS=\${WORKERS:-1} TP_L2=\${L2:-} TP_VXLAN=\${VXLAN:-} tp_up $row || return 1
  NOTE[$row]="tunnelpyd $id ($rev), Offload = \${OFFLOAD:-auto}, Workers = \${WORKERS:-1}\${L2:+, L2 segment (TAP)}\${VXLAN:+, plain VXLAN (no cipher), segment TAP}${envs:+, $envs}"
}
EOF
  ROWS+=("$row")
done

# run.sh does the rest (results directory, interleaved rows, the ratio table) with our plugin.
export OUTDIR=${OUTDIR:-${TMPDIR:-/tmp}/tunnelpy-bench/ab-$(date +%Y%m%d-%H%M%S)-$$}
export CRYPTO=${CRYPTO:-0}
[ "$ALL" = 1 ] || export P4=${P4:-0} UDP=${UDP:-0}
read -ra anchors <<<"${ANCHORS:-}"
PLUGIN=$PLUGIN "$HERE/run.sh" -n "$RUNS" -t "$DUR" "${anchors[@]}" "${ROWS[@]}"
