#!/usr/bin/env bash
# Vendor ECharts from the npm registry into the metrics page (no CDN at run time):
#   deploy/vendor-echarts.sh [version]     (default: the version the page was built with)
set -euo pipefail
version="${1:-6.1.0}"
target="$(cd "$(dirname "$0")/.." && pwd)/services/metrics/page/static"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "echarts@$version" >/dev/null && tar xzf "echarts-$version.tgz")
cp "$work/package/dist/echarts.min.js" "$target/echarts.min.js"
cat "$work/package/LICENSE" "$work/package/NOTICE" > "$target/echarts.LICENSE"
echo "ECharts $version vendored into $target"
