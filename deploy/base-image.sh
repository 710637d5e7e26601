#!/usr/bin/env bash
# Build a Debian bookworm image with Python 3.11 from Debian's packages and import it into
# the local Docker engine: no container registry is needed. The machine's CA bundle goes in
# too, so pip inside builds can reach the package index through TLS-inspecting proxies.
# Usage: deploy/base-image.sh [IMAGE]   (default modelcloud/debian-python:3.11; needs root)
set -euo pipefail
image="${1:-modelcloud/debian-python:3.11}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
  bookworm "$root" "$mirror" >/dev/null
if [[ -f /etc/ssl/certs/ca-certificates.crt ]]; then
  cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
fi
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
tar -C "$root" -c . | docker import \
  -c 'ENV LANG=C.UTF-8 SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
  -c 'CMD ["python3"]' - "$image" >/dev/null
echo "$image"
