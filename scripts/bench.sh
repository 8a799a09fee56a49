#!/usr/bin/env bash
# Throughput over the bare WAN, the HOWTO's pppd-over-ssh and pppssh, in one lab run (in UML).
# Arguments go to the benchmark: bash scripts/bench.sh --time 8 --repeats 3
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
if ! dpkg-query -W -f='${Status}' iperf3 2>/dev/null | grep -q "ok installed"; then
	echo "installing: iperf3"
	export DEBIAN_FRONTEND=noninteractive
	# The lab starts its own iperf3 servers inside UML: no daemon on the host.
	echo "iperf3 iperf3/start_daemon boolean false" | debconf-set-selections
	apt-get update -qq
	apt-get install -y -qq iperf3 >/dev/null
fi
exec python3 -m tests.lab run -- python3 -m tests.lab.bench "$@"
