#!/bin/sh
# Installs the distribution packages the tests drive, when they are missing:
#   nftables    (nft: the replication fault tests cut brokers off one another)
#   prometheus  (prometheus and promtool: the metrics, rules and dashboard tests)
#   mosquitto   (the MQTT broker of the IoT pipeline example, examples/iot/)
# As root on Debian or Ubuntu it installs them with apt-get; anywhere else it
# says what to install, and the tests that need them skip with that reason.
set -u
missing=""
command -v nft >/dev/null 2>&1 || [ -x /usr/sbin/nft ] || missing="$missing nftables"
command -v promtool >/dev/null 2>&1 || missing="$missing prometheus"
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing="$missing mosquitto"
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -q --no-install-recommends $missing >/dev/null 2>&1; then
        apt-get update -q >/dev/null 2>&1
        apt-get install -y -q --no-install-recommends $missing >/dev/null 2>&1 ||
            echo "note: apt-get could not install$missing; the tests needing them will skip" >&2
    fi
else
    echo "note: install$missing (Debian/Ubuntu: sudo apt-get install$missing); the tests needing them will skip" >&2
fi
exit 0
