#!/usr/bin/env bash
# Vendor Swagger UI from the npm registry for every service's /docs (no CDN at run time):
#   deploy/vendor-swagger-ui.sh [version]     (default: the version vendored now)
set -euo pipefail
version="${1:-5.35.0}"
target="$(cd "$(dirname "$0")/.." && pwd)/services/common/docs_assets"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "swagger-ui-dist@$version" >/dev/null && tar xzf "swagger-ui-dist-$version.tgz")
cp "$work/package/swagger-ui-bundle.js" "$work/package/swagger-ui.css" "$target/"
cat "$work/package/LICENSE" "$work/package/NOTICE" > "$target/swagger-ui.LICENSE"
echo "Swagger UI $version vendored into $target"
