#!/bin/sh
# systemd-sleep hook: after a resume every running pppssh site drops its link (its TCP
# connection died during the sleep) and dials again at once, instead of waiting for its
# keepalives and the backoff.
# Install: install -m 0755 scripts/pppssh-sleep.sh /usr/lib/systemd/system-sleep/pppssh
# systemd-sleep runs it as root: pppssh pre|post suspend|hibernate|hybrid-sleep|...
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
PPPSSH=${PPPSSH:-pppssh}
RUN_DIR=${PPPSSH_RUN_DIR:-/run/pppssh}

[ "${1:-}" = post ] || exit 0
for state in "$RUN_DIR"/*.json; do
	[ -e "$state" ] || continue
	site=$(basename "$state" .json)
	# a site whose daemon is gone is said so by pppssh and left alone
	"$PPPSSH" reconnect "$site" || true
done
exit 0
