#!/usr/bin/env bash
# pppssh beside the C path (the HOWTO's pppd over OpenSSH), measured in one run in the lab
# kernel: throughput both ways, RTT idle and loaded, time to up, CPU per GB, peak RSS,
# alternating rounds (bench/lab.py); then one hub with 4..32 tunnels (bench/scale.py).
# First, on this host at native speed, the pump alone: pppssh's bridge vs the OpenSSH client
# through a pty and one SSH channel to a throw-away sshd on 127.0.0.1 (bench/pump.py).
# `--quick` for a short run. Results (text and JSON): lab-results/bench-pump-*.json and the
# lab run's folder lab-results/run-*/ (bench-lab.*, bench-scale.*).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
lab="--rounds 3" steps="4,8,16,32" pump="--mib 256 --rounds 3"
if [ "${1-}" = --quick ]; then
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
