#!/usr/bin/env bash
# Rebuilds data/tiny/corpus.txt from the license texts Debian ships (see data/tiny/SOURCE.md).
set -euo pipefail
cd "$(dirname "$0")/.."
L=/usr/share/common-licenses
{ for f in GPL-3 Apache-2.0 MPL-2.0 GPL-2 BSD; do cat "$L/$f"; echo; done; } > data/tiny/corpus.txt
