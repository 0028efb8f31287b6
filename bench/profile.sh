#!/usr/bin/env bash
# profile.sh - py-spy profiles of both tunnelpyd daemons under one iperf3 TCP stream.
#
# Usage:  bench/profile.sh [-t SECONDS] [-o OUTDIR] [-u] [-k|-c] [-- EXTRA_IPERF3_ARGS...]
#   -t SECONDS  iperf3 duration (default 10); py-spy samples the middle of it
#   -o OUTDIR   where the flame graphs (SVG) and speedscope/raw files go (default /tmp/tunnelpy-profile)
#   -u          UDP 64-byte flood instead of TCP (the per-packet path)
#   -k          perf instead of py-spy: where the CPU goes by shared object (interpreter, the
#               cipher in cryptography's OpenSSL, numpy, libc, kernel) and by native symbol.
#               Real time on real hardware, which is what counts: instruction counts under
#               callgrind (bench/hotpath.py) once pointed the wrong way (docs/performance.md)
#   -c          no profiler: where the CPU and the packets go. CPU % of each daemon and each
#               iperf3 end, and per second the packets of every link in both namespaces
#               (sent, dropped) and UDP counters of the receiving namespace (datagrams in,
#               receive-buffer drops). Shows which stage is the bottleneck, e.g. under -u
#   env: OFFLOAD=auto|off (written as [Interface] Offload), MTU (1420), TUNNELPYD (daemon command),
#        L2=1 (iperf3 over an L2 segment's TAP, as the bench's tunnelpyd-l2 row),
#        VXLAN=1 (plain RFC 7348 VXLAN, no cipher, over a segment's TAP: the tunnelpyd-vxlan row)
#
# Same namespaces and site.conf as the bench's tunnelpyd row (anchors.sh + tunnelpyd.plugin.sh),
# so a profile explains a bench figure. Prints py-spy's top functions (by own time) for each side:
# A = sender (reads the TUN, encrypts), B = receiver (decrypts, writes the TUN).
# Needs root, iproute2, iperf3, py-spy. Everything made here is removed on exit.
set -uo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
DUR=10; OUT=/tmp/tunnelpy-profile; UDPMODE=0; PERF=0; COUNT=0
while getopts "t:o:ukch" o; do
  case $o in
    t) DUR=$OPTARG ;;
    o) OUT=$OPTARG ;;
    u) UDPMODE=1 ;;
    k) PERF=1 ;;
    c) COUNT=1 ;;
    *) sed -n '2,/^set -uo/p' "$0" | sed '$d'; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
[ "${1:-}" = "--" ] && shift

SFX=p$$; NS_A=prof-a-$SFX; NS_B=prof-b-$SFX
UL_A=10.99.0.1; UL_B=10.99.0.2; IN_A=10.98.0.1; IN_B=10.98.0.2; MTU=${MTU:-1420}
W=$(mktemp -d /tmp/tp-profile.XXXXXX); mkdir -p "$OUT"
OUTDIR=$W; RUN=0
declare -a DAEMON_PIDS=(); declare -A NOTE=()
nsa() { ip netns exec "$NS_A" "$@"; }
bg_in() { local ns=$1 lf=$2; shift 2; ip netns exec "$ns" "$@" >"$lf" 2>&1 & DAEMON_PIDS+=($!); }
wait_link() { local i; for i in $(seq 100); do ip -n "$1" link show "$2" >/dev/null 2>&1 && return 0; sleep 0.1; done; return 1; }
cleanup() {
  local p; for p in "${DAEMON_PIDS[@]}" ${IPERF_PID:-}; do kill "$p" 2>/dev/null; done
  sleep 0.5; for p in "${DAEMON_PIDS[@]}" ${IPERF_PID:-}; do kill -9 "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  ip netns del "$NS_A" 2>/dev/null; ip netns del "$NS_B" 2>/dev/null; rm -rf "$W"
}
trap cleanup EXIT; trap 'exit 130' INT TERM

ip netns add "$NS_A" && ip netns add "$NS_B" || exit 1
ip link add anc-va netns "$NS_A" type veth peer name anc-vb netns "$NS_B" || exit 1
ip -n "$NS_A" addr add $UL_A/24 dev anc-va; ip -n "$NS_B" addr add $UL_B/24 dev anc-vb
for ns in "$NS_A" "$NS_B"; do ip -n "$ns" link set lo up; done
ip -n "$NS_A" link set anc-va up; ip -n "$NS_B" link set anc-vb up

# shellcheck source=tunnelpyd.plugin.sh
source "$HERE/tunnelpyd.plugin.sh"
# OFFLOAD and L2 as the bench's rows: tunnelpyd (auto), tunnelpyd-off, tunnelpyd-l2 (with
# TP_L2 the inner addresses sit on the segment's TAP and the TUN moves aside).
[ "${L2:-0}" = 1 ] && export TP_L2=1
[ "${VXLAN:-0}" = 1 ] && export TP_VXLAN=1
TP_OFFLOAD=${OFFLOAD:-auto} tp_up tunnelpyd || { echo "tunnelpyd did not start"; cat "$W"/tunnelpyd-*.log; exit 1; }
for i in $(seq 30); do nsa ping -c1 -W1 -q $IN_B >/dev/null 2>&1 && break; sleep 0.5; done

ip netns exec "$NS_B" iperf3 -s -1 >/dev/null 2>&1 & IPERF_PID=$!
sleep 0.5
if [ "$UDPMODE" = 1 ]; then args=(-u -l 64 -b 0); else args=(); fi
nsa iperf3 -c $IN_B -t "$DUR" "${args[@]}" "$@" >"$OUT/iperf3.txt" 2>&1 &
CLIENT=$!
sleep 2
SAMPLE=$((DUR > 6 ? DUR - 4 : 2))
if [ "$COUNT" = 1 ]; then
  client=$(pgrep -f "^iperf3 -c $IN_B" | head -1)
  pids=("${DAEMON_PIDS[0]}" "${DAEMON_PIDS[1]}" "$client" "$IPERF_PID")
  ticks() { local p; for p in "${pids[@]}"; do awk '{print $14 + $15}' "/proc/$p/stat"; done | paste -sd' '; }
  snap() {  # snap N : CPU ticks, link counters of both namespaces, UDP counters of B
    ticks >"$W/ticks$1"
    ip -n "$NS_A" -s -j link >"$W/a$1.json"; ip -n "$NS_B" -s -j link >"$W/b$1.json"
    ip netns exec "$NS_B" grep Udp: /proc/net/snmp >"$W/udp$1"
  }
  snap 0; sleep "$SAMPLE"; snap 1
  # TCP: the sender's view of the path (window, queueing delay) at the end of the sample.
  [ "$UDPMODE" = 1 ] || ss -N "$NS_A" -tinH dst "$IN_B" >"$W/tcp" 2>/dev/null
  wait $CLIENT
  grep -E "sender|receiver" "$OUT/iperf3.txt" | tail -2
  python3 - "$W" "$SAMPLE" "$(getconf CLK_TCK)" <<'PY'
import json, sys
w, secs, hz = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
t0, t1 = ([int(x) for x in open(f"{w}/ticks{i}").read().split()] for i in (0, 1))
print(f"== CPU over {secs:.0f} s (% of one core)")
for name, a, b in zip(["sender daemon (A)", "receiver daemon (B)", "iperf3 client (A)",
                       "iperf3 server (B)"], t0, t1):
    print(f"  {name:20s} {100 * (b - a) / hz / secs:5.0f} %")
print("== links, per second: tx packets / tx dropped / rx packets / rx dropped")
for ns in "ab":
    s0, s1 = ({l["ifname"]: l["stats64"] for l in json.load(open(f"{w}/{ns}{i}.json"))}
              for i in (0, 1))
    for name in s1:
        if name == "lo":
            continue
        r = [(s1[name][d][m] - s0[name][d][m]) / secs for d in ("tx", "rx")
             for m in ("packets", "dropped")]
        print(f"  {ns.upper()} {name:16s} " + " / ".join(f"{x:,.0f}" for x in r))
h, v0 = (l.split() for l in open(f"{w}/udp0").read().splitlines()[:2])
v1 = open(f"{w}/udp1").read().splitlines()[1].split()
print("== UDP in namespace B, per second: " + ", ".join(
    f"{h[i]} {(int(v1[i]) - int(v0[i])) / secs:,.0f}" for i in range(1, len(h))
    if h[i] in ("InDatagrams", "RcvbufErrors", "InErrors")))
import re
try:
    infos = [line for line in open(f"{w}/tcp") if "cwnd:" in line]
except OSError:
    infos = []
if infos:  # iperf3's control connection and its data stream: the data stream sent the most
    def acked(line):
        m = re.search(r"bytes_acked:(\d+)", line)
        return int(m.group(1)) if m else 0
    info = max(infos, key=acked)
    keep = re.findall(r"\b(?:rtt|minrtt|cwnd|unacked):[0-9./]+", info)
    print("== TCP, the sender's data socket: " + " ".join(keep)
          + "  (rtt = smoothed/variance ms; far above minrtt: packets queue inside the path)")
PY
  exit 0
fi
sample() {  # sample PID SIDE : the chosen profiler on one daemon, in the background
  if [ "$PERF" = 1 ]; then
    perf record -q -p "$1" -o "$OUT/$2.perf" -- sleep "$SAMPLE" >/dev/null 2>&1 &
  else
    py-spy record -p "$1" -d "$SAMPLE" -r 250 -f raw -o "$OUT/$2.raw" >/dev/null 2>&1 &
  fi
}
sample "${DAEMON_PIDS[0]}" sender; S1=$!
sample "${DAEMON_PIDS[1]}" receiver; S2=$!
wait $S1 $S2 $CLIENT
grep -E "sender|receiver" "$OUT/iperf3.txt" | tail -2
if [ "$PERF" = 1 ]; then
  for side in sender receiver; do
    echo "== $side: samples by shared object"
    perf report -i "$OUT/$side.perf" --sort dso --stdio 2>/dev/null | grep -v '^#' | grep -v '^$' | head -8
    echo "== $side: by symbol"
    perf report -i "$OUT/$side.perf" --sort sym --stdio 2>/dev/null | grep -v '^#' | grep -v '^$' | head -15
  done
  echo "perf data: $OUT/sender.perf $OUT/receiver.perf (perf report -i FILE)"
  exit 0
fi
top_own() {  # top_own RAWFILE : share of samples by innermost frame (own time)
  python3 - "$1" <<'PY'
import collections, sys
own = collections.Counter(); total = 0
for line in open(sys.argv[1]):
    stack, _, n = line.rstrip().rpartition(" ")
    n = int(n); total += n
    own[stack.split(";")[-1]] += n
for frame, n in own.most_common(18):
    print(f"{100 * n / max(total, 1):5.1f}%  {frame}")
PY
}
for side in sender receiver; do echo "== $side (own time)"; top_own "$OUT/$side.raw"; done
echo "raw stacks: $OUT/sender.raw $OUT/receiver.raw (flamegraph.pl or speedscope)"
