#!/usr/bin/env bash
# Fetch the test footage into a cache folder ($EVAD_TEST_DATA, default
# ${XDG_CACHE_HOME:-~/.cache}/evad-deploy/test-data, outside the repository):
#   vtest.avi  OpenCV's pedestrian clip (768x576, 10 fps, 795 frames, MP43 in AVI; Apache-2.0 /
#              BSD-3), from Debian's opencv-doc package: `apt-get download` fetches the .deb
#              (~96 MB, nothing is installed) and `dpkg -x` extracts it; we keep one file.
# Works as root on a fresh Debian/Ubuntu machine. Prints the folder; tests read $EVAD_TEST_DATA.
# Without apt-get / dpkg (another OS) or when the download fails, it says so and exits 0: the
# tests that need the footage then skip with a reason (with CI=true they fail instead, so CI
# cannot pass without them).
set -euo pipefail
cd "$(dirname "$0")/.."
dest="${EVAD_TEST_DATA:-${XDG_CACHE_HOME:-$HOME/.cache}/evad-deploy/test-data}"
mkdir -p "$dest"
if [[ -s "$dest/vtest.avi" ]]; then
    echo "$dest"
    exit 0
fi
skip() {
    echo "test_data.sh: $1; the tests that need vtest.avi will skip (put it in $dest or set" \
        "EVAD_TEST_DATA to a folder holding it)" >&2
    echo "$dest"
    exit 0
}
if ! command -v apt-get >/dev/null || ! command -v dpkg >/dev/null; then
    skip "no apt-get/dpkg on this machine"
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# apt-get download runs as the _apt user when root; it needs a folder that user may write.
chmod 777 "$work"
(cd "$work" && { apt-get download opencv-doc >/dev/null 2>&1 || {
    apt-get update -qq >/dev/null 2>&1 && apt-get download opencv-doc >/dev/null 2>&1; }; }) \
    || skip "apt-get could not download opencv-doc"
dpkg -x "$work"/opencv-doc_*.deb "$work/x"
src="$(find "$work/x" -name vtest.avi -print -quit)"
if [[ -z "$src" ]]; then
    echo "test_data.sh: opencv-doc has no vtest.avi" >&2
    exit 1
fi
cp "$src" "$dest/vtest.avi.tmp" && mv "$dest/vtest.avi.tmp" "$dest/vtest.avi"
echo "$dest"
