#!/usr/bin/env bash
# Install what pppssh, its lab and its tests need on a fresh Debian 12 machine (run as root).
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(user-mode-linux kmod ppp openssh-server openssh-client sudo iproute2 iputils-ping
          procps util-linux shellcheck systemd iperf3 tinyproxy-bin nftables iptables
          softhsm2)
missing=()
for p in "${packages[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	echo "installing: ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	# The lab starts its own iperf3 servers inside UML: no daemon on the host.
	echo "iperf3 iperf3/start_daemon boolean false" | debconf-set-selections
	apt-get update -qq
	# Keep services from starting on the host: the lab starts its own sshd inside UML.
	printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d.pppssh
	chmod +x /usr/sbin/policy-rc.d.pppssh
	[ -e /usr/sbin/policy-rc.d ] || ln -s policy-rc.d.pppssh /usr/sbin/policy-rc.d
	apt-get install -y -qq "${missing[@]}" >/dev/null
	[ "$(readlink /usr/sbin/policy-rc.d 2>/dev/null)" = policy-rc.d.pppssh ] && rm -f /usr/sbin/policy-rc.d
	rm -f /usr/sbin/policy-rc.d.pppssh
fi
# The DNS lab test needs a resolvconf: openresolv's .deb is only downloaded here, and the lab
# unpacks it inside UML's throw-away overlay. Installed on the host it would own
# /etc/resolv.conf (and its ppp hooks would run for every pppd), so it never is.
LAB_DEBS=/var/cache/pppssh-lab
if ! ls "$LAB_DEBS"/openresolv_*.deb >/dev/null 2>&1; then
	mkdir -p "$LAB_DEBS"
	(cd "$LAB_DEBS" && apt-get download -qq openresolv 2>/dev/null) \
		|| { apt-get update -qq && (cd "$LAB_DEBS" && apt-get download -qq openresolv); }
fi
# The test extras include python-pkcs11 (PKCS#11 keys, asyncssh.pkcs11) and fido2 (FIDO keys,
# asyncssh.sk), optional for pppssh itself (its extras `pkcs11` and `fido`); the tests use them
# with SoftHSM2 (a file-backed token made in a temporary folder through SOFTHSM2_CONF: no
# daemon) and a fake authenticator.
python3 -m pip install -q --disable-pip-version-check -e ".[test]"
