#!/usr/bin/env bash
# run.sh - tunnelpyd measured next to its anchors (raw veth, wireguard-go, fastd, OpenVPN) in one run.
#
# Usage:  bench/run.sh [-n RUNS] [-t SECONDS] [TUNNEL...]
#         bench/run.sh -s RESULTS.tsv...      (only print the tables again)
#   default tunnels: raw wggo [fastd] [ovpn-gcm] (when installed) tunnelpyd-off tunnelpyd tunnelpyd-w2 tunnelpyd-l2
#   -n RUNS     interleaved repetitions; tables show medians (default 3)
#   -t SECONDS  iperf3 duration per test (default 5)
#   env: everything anchors.sh reads (P4=0, UDP=0, CRYPTO=0, MTU, QUIET_WAIT, OUTDIR), the
#        plugin's TUNNELPYD / TUNNELPYD_ARGS, and PLUGIN (another plugin file, as bench/ab.sh
#        passes); see bench/README.md.
# Needs root, iproute2, iperf3, jq, iputils-ping, wireguard-go + wireguard-tools.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
RUNS=3; DUR=5; SUMMARY=0
while getopts "n:t:sh" o; do
  case $o in
    n) RUNS=$OPTARG ;;
    t) DUR=$OPTARG ;;
    s) SUMMARY=1 ;;
    *) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 2 ;;
  esac
done
shift $((OPTIND - 1))

if [ "$SUMMARY" = 1 ]; then
  "$HERE/anchors.sh" -s "$@"
  exec python3 "$HERE/ratios.py" "$@"
fi

if [ $# -gt 0 ]; then
  TUNNELS=("$@")
else
  TUNNELS=(raw wggo)
  command -v fastd >/dev/null && TUNNELS+=(fastd)
  command -v openvpn >/dev/null && TUNNELS+=(ovpn-gcm)
  TUNNELS+=(tunnelpyd-off tunnelpyd tunnelpyd-w2 tunnelpyd-l2)
fi

# A fresh results directory per run, so the ratio table reads exactly this run's file.
export OUTDIR=${OUTDIR:-${TMPDIR:-/tmp}/tunnelpy-bench/$(date +%Y%m%d-%H%M%S)-$$}
export TUNNELPY_ROOT=${TUNNELPY_ROOT:-$(cd "$HERE/.." && pwd)}
# Newer wireguard-go refuses to start on a kernel with the wireguard module unless told to.
export WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD=1
mkdir -p "$OUTDIR"

rc=0
"$HERE/anchors.sh" -p "${PLUGIN:-$HERE/tunnelpyd.plugin.sh}" -n "$RUNS" -t "$DUR" "${TUNNELS[@]}" || rc=$?
shopt -s nullglob
results=("$OUTDIR"/anchors-*.tsv)
[ ${#results[@]} -gt 0 ] || { echo "run.sh: no results in $OUTDIR (anchors.sh exit $rc)" >&2; exit 1; }
echo
python3 "$HERE/ratios.py" "${results[@]}"
echo "results: ${results[*]}" >&2
exit "$rc"
