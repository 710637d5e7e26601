#!/usr/bin/env bash
# `make run`: the whole journey on the embedded platform. Start it (`modelcloud up`), deploy
# the example model unless it is online already, classify real photos through the gateway,
# print the labels and the URL, and keep serving until Ctrl-C.
set -euo pipefail
: "${BIN:=.venv/bin}" "${EXAMPLE:=examples/imagenet-classifier}" "${PORT:=8000}"
: "${DATA:=$HOME/.modelcloud/platform}"
url="http://127.0.0.1:$PORT"

photo_dir=$(mktemp -d)
platform=""
stop() {
  if [[ -n "$platform" ]]; then kill -INT "$platform" 2>/dev/null || true; wait "$platform" || true; fi
  rm -rf "$photo_dir"
}
trap stop EXIT

# Real photographs that ship inside scikit-image (nothing is downloaded).
"$BIN/python" - "$photo_dir" <<'PY'
import sys
from pathlib import Path
from PIL import Image
from skimage import data
out = Path(sys.argv[1])
Image.fromarray(data.coffee()).save(out / "coffee.jpg", quality=90)
Image.fromarray(data.chelsea()).save(out / "chelsea.jpg", quality=90)
PY

"$BIN/modelcloud" up --data-dir "$DATA" --port "$PORT" &
platform=$!
for _ in $(seq 120); do
  curl -fs "$url/healthz" >/dev/null 2>&1 && break
  kill -0 "$platform" 2>/dev/null || { echo "the platform did not start" >&2; exit 1; }
  sleep 0.5
done

service="demo/imagenet-classifier"
online=$("$BIN/modelcloud" status --json | "$BIN/python" -c '
import json, sys
project, service = sys.argv[1].split("/")
rows = [r for r in json.load(sys.stdin) if (r["project"], r["service"]) == (project, service)]
print(max((r["api_version"] for r in rows if r["state"] == "online"), default=""))' "$service")
if [[ -z "$online" ]]; then
  "$BIN/modelcloud" deploy "$EXAMPLE" --project demo
fi
token=$(cat "$DATA/admin.token")
for _ in $(seq 120); do  # a restarted platform brings its replicas back first
  curl -fs -H "Authorization: Bearer $token" "$url/models/$service/healthz" >/dev/null && break
  sleep 1
done
for photo in coffee chelsea; do
  echo "POST $url/models/$service/classify  photo=$photo.jpg"
  "$BIN/modelcloud" call "$service" classify "photo=@$photo_dir/$photo.jpg"
done
echo "The model is online at $url/models/$service (token: $DATA/admin.token). Ctrl-C stops it."
wait "$platform"
