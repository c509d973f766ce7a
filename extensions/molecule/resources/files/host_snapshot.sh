#!/bin/sh
# What offboarding must put back, as sorted text: rulesets (without counters),
# policy routing, accounts, unit files, and the files under the paths the
# collection writes to. Run with sh on a sandbox host.
set -eu
echo "## iptables"; iptables-save | grep -v '^#' | sed 's/\[[0-9]*:[0-9]*\]//'
echo "## ip6tables"; ip6tables-save | grep -v '^#' | sed 's/\[[0-9]*:[0-9]*\]//'
echo "## nft"; nft list ruleset
echo "## ip rule"; ip rule; ip -6 rule
echo "## routes"; ip route show table all | grep -v '^local\|^broadcast\|^multicast\|fe80::' | sort
echo "## passwd"; sort /etc/passwd
echo "## group"; sort /etc/group
# Login sessions (the test's own SSH connections) are not the host's state; systemd 257
# names them c1, c2... where older releases number them.
echo "## units"; systemctl list-unit-files --no-legend --no-pager | grep -v '^session-[0-9a-z]*\.scope ' | sort
echo "## files"
find /etc /usr/local /opt /var/lib/hostmesh /run/hostmesh -xdev \
  ! -path /etc/ld.so.cache ! -name '*.pyc' ! -path '*/__pycache__*' \
  -printf '%p %u %g %m\n' 2>/dev/null | sort
