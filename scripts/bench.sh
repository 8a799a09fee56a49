#!/usr/bin/env bash
# pppssh beside the C path (the HOWTO's pppd over OpenSSH), measured in one run in the lab
# kernel: throughput both ways, RTT idle and loaded, time to up, CPU per GB, peak RSS,
# alternating rounds (bench/lab.py); then one hub with 4..32 tunnels (bench/scale.py).
# First, on this host at native speed, the pump alone: pppssh's bridge vs the OpenSSH client
# through a pty and one SSH channel to a throw-away sshd on 127.0.0.1 (bench/pump.py).
# `--wan` instead: both paths on a shaped WAN behind a router (bench/wan.py: 4 and 20 Mbit/s
# with a small queue, 8 Mbit/s with 1% loss, unshaped; throughput and RTT under load, and
# where the queue sits). `--quick` for a short run. Results (text and JSON):
# lab-results/bench-pump-*.json and the lab run's folder lab-results/run-*/ (bench-lab.*,
# bench-scale.*, bench-wan.* and bench-wan-*.png).
set -euo pipefail
cd "$(dirname "$0")/.."
wan="" quick=""
for arg in "$@"; do
	case $arg in
	--wan) wan=1 ;;
	--quick) quick=1 ;;
	*) echo "usage: bash scripts/bench.sh [--wan] [--quick]" >&2 && exit 2 ;;
	esac
done
bash scripts/install-deps.sh
if [ -n "$wan" ]; then
	opts="--rounds 3 --time 15 --probe"
	[ -n "$quick" ] && opts="--rounds 1 --time 8 --pings 10 --probe"
	echo "== in the lab kernel: pppssh beside the HOWTO on a shaped WAN"
	# shellcheck disable=SC2086
	exec python3 -m tests.lab --mem 4G --timeout 2400 run -- python3 -m bench.wan $opts
fi
lab="--rounds 3" steps="4,8,16,32" pump="--mib 256 --rounds 3"
if [ -n "$quick" ]; then
	lab="--rounds 1 --time 3 --pings 20" steps="2,4" pump="--mib 32 --rounds 1 --frames 500"
fi
mkdir -p lab-results
echo "== on this host: the pump alone, pppssh's bridge beside the OpenSSH client"
# shellcheck disable=SC2086
python3 -m bench.pump $pump --json "lab-results/bench-pump-$(date +%Y%m%d-%H%M%S).json"
echo "== in the lab kernel: pppssh beside the HOWTO, then one hub with many tunnels"
exec python3 -m tests.lab --mem 4G run -- sh -c \
	"python3 -m bench.lab $lab; a=\$?; python3 -m bench.scale --steps $steps; b=\$?; \
	 [ \$a -eq 0 ] && [ \$b -eq 0 ]"
