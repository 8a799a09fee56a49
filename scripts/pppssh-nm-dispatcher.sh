#!/bin/sh
# NetworkManager dispatcher script: when an interface comes up (a new Wi-Fi, the cable back,
# another uplink), every running pppssh site drops its link and dials again at once, instead
# of waiting for its keepalives to find the old path dead and then for the backoff.
# Install: install -m 0755 scripts/pppssh-nm-dispatcher.sh \
#              /etc/NetworkManager/dispatcher.d/90-pppssh
# NetworkManager runs it as root with the interface and the action: 90-pppssh IFACE ACTION.
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
PPPSSH=${PPPSSH:-pppssh}
RUN_DIR=${PPPSSH_RUN_DIR:-/run/pppssh}

[ "${2:-}" = up ] || exit 0
case "${1:-}" in
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
