#!/bin/sh
# The host's DNS set-up, as offboarding must leave it: resolv.conf (link and
# bytes), systemd-resolved's state and settings, and the DNS rules in nat/raw.
echo "== resolv.conf"; stat -c "%A %N" /etc/resolv.conf; sha256sum /etc/resolv.conf
readlink -f /etc/resolv.conf; cat /etc/resolv.conf
echo "== resolved"; systemctl is-active systemd-resolved 2>/dev/null || true
for f in /etc/systemd/resolved.conf /etc/systemd/resolved.conf.d/*; do [ -f "$f" ] && sha256sum "$f"; done
command -v resolvectl >/dev/null && resolvectl dns 2>/dev/null | sort
echo "== rules"
for table in nat raw; do
  iptables-save -t "$table" 2>/dev/null | grep -v '^#' | sed 's/\[[0-9]*:[0-9]*\]//'
  ip6tables-save -t "$table" 2>/dev/null | grep -v '^#' | sed 's/\[[0-9]*:[0-9]*\]//'
done
