# tunnelpyd.plugin.sh - the "tunnelpyd" tunnel for anchors.sh (sourced with -p).
#
# Brings up one tunnelpyd in each namespace from a generated site.conf: inner $IN_A/$IN_B,
# endpoints on the veth underlay, the same MTU and port as the wggo anchor, so the rows compare
# like with like. anchors.sh kills the daemons (bg_in PIDs) and deletes both namespaces after.
#
# Tunnels: tunnelpyd (Offload = auto: TUN TSO/GRO, UDP GSO/GRO) and tunnelpyd-off
# (Offload = off: one packet per syscall), so one run shows what the offloads are worth;
# tunnelpyd-l2 (the same over an L2 segment's TAP) and tunnelpyd-w2 (Workers = 2: a second
# process reads a second TUN queue). All but tunnelpyd-w2 run Workers = 1.
#
# env: TUNNELPYD       command that starts the daemon (default: tunnelpyd on PATH, else this
#                      checkout's tunnelpy.cli via python3 -c)
#      TUNNELPYD_ARGS  extra daemon arguments, e.g. "--log-level debug"
#      TUNNELPY_ROOT   the checkout (set by run.sh; default: this file's parent directory)

TUNNELPY_ROOT=${TUNNELPY_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
TP_A=tpa$SFX; TP_B=tpb$SFX   # <=15 chars and host-unique: UAPI sockets share /var/run/wireguard

tp_daemon_cmd() {        # the daemon command as words, one per line
  if [ -n "${TUNNELPYD:-}" ]; then printf '%s\n' $TUNNELPYD
  elif command -v tunnelpyd >/dev/null; then command -v tunnelpyd
  else printf '%s\n' python3 -c 'import sys; from tunnelpy.cli import daemon_main; sys.exit(daemon_main())'
  fi
}

tp_keypair() {           # tp_keypair NAME : $W/NAME.key (0600) and $W/NAME.pub
  (umask 077
   if command -v tunnelpy >/dev/null; then tunnelpy genkey; else wg genkey; fi >"$W/$1.key") || return 1
  if command -v tunnelpy >/dev/null; then tunnelpy pubkey; else wg pubkey; fi <"$W/$1.key" >"$W/$1.pub"
}

tp_conf() {              # tp_conf NAME KEY IN UL_PEER PEER_PUB IN_PEER : a site.conf on stdout
  # TP_L2=1: the inner address sits on an L2 segment's TAP (VNI 97) instead of the TUN, so
  # iperf3 runs over Ethernet frames in the same encrypted sessions (the L2 row).
  local tun_addr=$3 peer_addr=$6
  [ -n "${TP_L2:-}" ] && { tun_addr=${3/10.98./10.97.}; peer_addr=${6/10.98./10.97.}; }
  if [ -n "${TP_VXLAN:-}" ]; then
    printf '[Interface]\nName = %s\nTransport = vxlan\nListenPort = 4789\nMTU = %s\nOffload = %s\n\n' \
      "$1" "$MTU" "${TP_OFFLOAD:-auto}"
    printf '[Peer]\nName = bench-peer\nEndpoint = %s:4789\n\n' "$4"
    printf '[Segment bench]\nVNI = 97\nDevice = l%s\nAddress = %s/24\n' "$1" "$3"
    return 0
  fi
  cat <<CONF
[Interface]
Name = $1
PrivateKey = $(cat "$W/$2.key")
ListenPort = 51820
Address = $tun_addr/24
MTU = $MTU
Offload = ${TP_OFFLOAD:-auto}
Workers = ${TP_WORKERS:-1}

[Peer]
Name = bench-peer
PublicKey = $(cat "$W/$5.pub")
Endpoint = $4:51820
AllowedIPs = $peer_addr/32
CONF
  [ -n "${TP_L2:-}" ] && printf '\n[Segment bench]\nVNI = 97\nDevice = l%s\nAddress = %s/24\n' "$1" "$3"
  return 0
}

tun_tunnelpyd_up() { TP_OFFLOAD=auto tp_up tunnelpyd; }
# Plain RFC 7348 VXLAN (Transport = vxlan: no keys, no cipher), a segment TAP per side, so it
# compares with the kernel's vxlan row (anchors.sh "vxlan") on the same underlay.
tun_tunnelpyd-vxlan_up() { TP_OFFLOAD=auto TP_VXLAN=1 tp_up tunnelpyd-vxlan; }
tun_tunnelpyd-off_up() { TP_OFFLOAD=off tp_up tunnelpyd-off; }
tun_tunnelpyd-l2_up() { TP_OFFLOAD=auto TP_L2=1 tp_up tunnelpyd-l2; }
tun_tunnelpyd-w2_up() { TP_OFFLOAD=auto TP_WORKERS=2 tp_up tunnelpyd-w2; }
# The socket buffers both ways: the kernel's default (rmem_default) instead of tunnelpyd's 4 MiB.
tun_tunnelpyd-defbuf_up() { TUNNELPY_SOCKET_BUFFER=0 TP_OFFLOAD=auto tp_up tunnelpyd-defbuf; }

# A slow receiver: the receiving daemon held to TP_SLOW_PCT % of one core (cgroup v1 cpu
# controller, 10 ms periods), as on a small host where the daemon, not the link, is the
# bottleneck; so the latency columns show the receive queue's AQM (io/codel.py) at work, and
# with TUNNELPY_TEST_AQM=off without it.
tun_tunnelpyd-slow_up() { TP_OFFLOAD=auto tp_up tunnelpyd-slow && tp_slow tunnelpyd-slow; }
tun_tunnelpyd-slow-noaqm_up() {
  TUNNELPY_TEST_AQM=off TP_OFFLOAD=auto tp_up tunnelpyd-slow-noaqm && tp_slow tunnelpyd-slow-noaqm
}
# A receiver without offloads behind a sender with them: the receiving daemon is the bottleneck
# and the queue stands in its socket buffer, where the AQM acts.
tun_tunnelpyd-rxoff_up() { TP_OFFLOAD=auto TP_OFFLOAD_B=off tp_up tunnelpyd-rxoff; }
tun_tunnelpyd-slow_down() { tp_unslow; }
tun_tunnelpyd-slow-noaqm_down() { tp_unslow; }
TP_CG=/sys/fs/cgroup/cpu/tunnelpy-bench-$$

tp_slow() {              # tp_slow ROW : the receiving daemon (the last one started) into TP_CG
  local pct=${TP_SLOW_PCT:-25}
  [ -d /sys/fs/cgroup/cpu ] || { log "needs the cgroup v1 cpu controller"; return 1; }
  mkdir -p "$TP_CG" && echo 10000 >"$TP_CG/cpu.cfs_period_us" &&
    echo $((pct * 100)) >"$TP_CG/cpu.cfs_quota_us" || return 1
  local pid=${DAEMON_PIDS[-1]} p
  for p in $pid $(pgrep -P "$pid"); do echo "$p" >"$TP_CG/cgroup.procs"; done
  NOTE[$1]+=", receiving daemon held to ${pct} % of a core${TUNNELPY_TEST_AQM:+, AQM $TUNNELPY_TEST_AQM}"
}

tp_unslow() {
  [ -d "$TP_CG" ] || return 0
  local p; while read -r p; do echo "$p" >/sys/fs/cgroup/cpu/cgroup.procs; done <"$TP_CG/cgroup.procs"
  rmdir "$TP_CG"
}

tp_up() {                # tp_up ROW : both daemons, with $TP_OFFLOAD
  local row=$1
  local -a cmd; mapfile -t cmd < <(tp_daemon_cmd)
  # The checkout must be importable inside `ip netns exec` when tunnelpyd is not installed.
  export PYTHONPATH="$TUNNELPY_ROOT${PYTHONPATH:+:$PYTHONPATH}"
  tp_keypair tp-a && tp_keypair tp-b || return 1
  (umask 077
   tp_conf "$TP_A" tp-a "$IN_A" "$UL_B" tp-b "$IN_B" >"$W/$TP_A.conf"
   TP_OFFLOAD=${TP_OFFLOAD_B:-$TP_OFFLOAD} tp_conf "$TP_B" tp-b "$IN_B" "$UL_A" tp-a "$IN_A" >"$W/$TP_B.conf")
  # shellcheck disable=SC2086  # TUNNELPYD_ARGS is a word list on purpose
  bg_in "$NS_A" "$W/$row-a.log" "${cmd[@]}" -c "$W/$TP_A.conf" ${TUNNELPYD_ARGS:-}
  # shellcheck disable=SC2086
  bg_in "$NS_B" "$W/$row-b.log" "${cmd[@]}" -c "$W/$TP_B.conf" ${TUNNELPYD_ARGS:-}
  if [ -z "${TP_VXLAN:-}" ]; then   # (plain VXLAN has no TUN, only the segment's TAP)
    wait_link "$NS_A" "$TP_A" && wait_link "$NS_B" "$TP_B" || return 1
  fi
  if [ -n "${TP_L2:-}${TP_VXLAN:-}" ]; then wait_link "$NS_A" "l$TP_A" && wait_link "$NS_B" "l$TP_B" || return 1; fi
  local rev; rev=$(git -C "$TUNNELPY_ROOT" describe --always --dirty 2>/dev/null || echo unknown)
  NOTE[$row]="tunnelpyd $rev, Offload = $TP_OFFLOAD, Workers = ${TP_WORKERS:-1}${TUNNELPY_SOCKET_BUFFER:+, socket buffers $TUNNELPY_SOCKET_BUFFER (0 = kernel default)}${TP_L2:+, L2 segment (TAP)}${TP_VXLAN:+, plain VXLAN (no cipher), segment TAP}, $(python3 -c 'import sys; print("Python", sys.version.split()[0])')"
}

tun_tunnelpyd_down() {   # keep the daemon's own view of the session next to the results
  nsa wg show "$TP_A" >"$OUTDIR/tunnelpyd-wg-show-run$RUN.txt" 2>&1 || true
}
tun_tunnelpyd-off_down() {
  nsa wg show "$TP_A" >"$OUTDIR/tunnelpyd-off-wg-show-run$RUN.txt" 2>&1 || true
}
