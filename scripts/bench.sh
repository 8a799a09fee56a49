#!/usr/bin/env bash
# pppssh beside the C path (the HOWTO's pppd over OpenSSH), measured in one run in the lab
# kernel: throughput both ways, RTT idle and loaded, time to up, CPU per GB, peak RSS,
# alternating rounds (bench/lab.py); then one hub with 4..32 tunnels (bench/scale.py).
# `--quick` for a short run. Results (text and JSON): the lab run's folder lab-results/run-*/
# (bench-lab.*, bench-scale.*). The pump alone on this host (bench/pump.py) is run by hand:
# python3 -m bench.pump --mib 1 (larger transfers stall; see README).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
lab="--rounds 3" steps="4,8,16,32"
if [ "${1-}" = --quick ]; then
	lab="--rounds 1 --time 3 --pings 20" steps="2,4"
fi
echo "== in the lab kernel: pppssh beside the HOWTO, then one hub with many tunnels"
exec python3 -m tests.lab --mem 4G run -- sh -c \
	"python3 -m bench.lab $lab; a=\$?; python3 -m bench.scale --steps $steps; b=\$?; \
	 [ \$a -eq 0 ] && [ \$b -eq 0 ]"
