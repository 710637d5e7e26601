"""Regenerate ../labels.json (ImageNet-1k class index -> human label).

The class order and the lemma text come from timm's bundled metadata
(timm/data/_info/imagenet_synsets.txt and imagenet_synset_to_lemma.txt),
which is the standard ILSVRC-2012 index order used by the EfficientNet-Lite
checkpoints.

Usage:
    python tools/make_labels.py                      # from an installed timm
    python tools/make_labels.py timm-1.0.31-py3-none-any.whl
"""

from __future__ import annotations

import importlib.util
import json
import sys
import zipfile
from pathlib import Path

SYNSETS = "timm/data/_info/imagenet_synsets.txt"
LEMMAS = "timm/data/_info/imagenet_synset_to_lemma.txt"
OUT = Path(__file__).resolve().parent.parent / "labels.json"


def read_from_wheel(wheel: str, name: str) -> str:
    with zipfile.ZipFile(wheel) as zf:
        return zf.read(name).decode("utf-8")


def read_from_installed(name: str) -> str:
    # Locate the package without importing it (importing timm needs torchvision).
    spec = importlib.util.find_spec("timm")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("timm is not installed; pass the path of a timm wheel instead")
    root = Path(next(iter(spec.submodule_search_locations))).parent
    return (root / name).read_text(encoding="utf-8")


def main() -> None:
    if len(sys.argv) > 1:
        read = lambda name: read_from_wheel(sys.argv[1], name)  # noqa: E731
    else:
        read = read_from_installed
    synsets = read(SYNSETS).split()
    lemmas = dict(line.split("\t", 1) for line in read(LEMMAS).splitlines() if line)
    if len(synsets) != 1000:
        sys.exit(f"expected 1000 synsets, got {len(synsets)}")
    labels = {str(i): lemmas[s].strip() for i, s in enumerate(synsets)}
    OUT.write_text(json.dumps(labels, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {len(labels)} labels to {OUT}")


if __name__ == "__main__":
    main()
