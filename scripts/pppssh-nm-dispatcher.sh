#!/bin/sh
# NetworkManager dispatcher script: when an interface comes up (a new Wi-Fi, the cable back,
# another uplink), every running pppssh site drops its link and dials again at once, instead
# of waiting for its keepalives to find the old path dead and then for the backoff.
# Install: install -m 0755 scripts/pppssh-nm-dispatcher.sh \
#              /etc/NetworkManager/dispatcher.d/90-pppssh
# NetworkManager runs it as root with the interface and the action: 90-pppssh IFACE ACTION.
# The same script serves systemd-networkd through networkd-dispatcher, which runs it with no
# arguments and IFACE, STATE in the environment:
#     install -m 0755 scripts/pppssh-nm-dispatcher.sh /etc/networkd-dispatcher/routable.d/90-pppssh
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
PPPSSH=${PPPSSH:-pppssh}
RUN_DIR=${PPPSSH_RUN_DIR:-/run/pppssh}

if [ $# -eq 0 ]; then  # networkd-dispatcher: an interface that became routable is up
	iface=${IFACE:-}
	[ "${STATE:-}" = routable ] && action=up || action=
else
	iface=${1:-}
	action=${2:-}
fi
[ "$action" = up ] || exit 0
case "$iface" in
	# pppssh's own links and virtual interfaces say nothing about the path to a gateway
	ppp*|lo|veth*|docker*|virbr*|br-*|tun*|tap*|wg*) exit 0 ;;
esac
for state in "$RUN_DIR"/*.json; do
	[ -e "$state" ] || continue
	site=$(basename "$state" .json)
	# a site whose daemon is gone is said so by pppssh and left alone
	"$PPPSSH" reconnect "$site" || true
done
exit 0
