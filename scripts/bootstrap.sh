#!/usr/bin/env bash
# Create the project's virtualenv and install metanode with its test extras.
# Installs what a fresh Debian/Ubuntu machine lacks (the GMP headers that
# fastecdsa, a dependency of libp2p, compiles against; Chromium, which the
# console's browser tests drive) when run as root, and otherwise says exactly
# what to install.
set -euo pipefail
PY=${1:-python3}
VENV=${2:-.venv}

die() { echo "bootstrap: $*" >&2; exit 2; }

command -v "$PY" >/dev/null || die "$PY not found; metanode needs Python >= 3.11"
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || die "$PY is $("$PY" -V 2>&1); metanode needs Python >= 3.11"

have_header() { echo "#include <$1>" | cc -E -x c - >/dev/null 2>&1; }
missing=()
command -v cc >/dev/null || missing+=(gcc)
have_header gmp.h || missing+=(libgmp-dev)
command -v chromium >/dev/null || missing+=(chromium)
"$PY" -c 'import sysconfig,os,sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"],"Python.h")))' \
  || missing+=(python3-dev)
if ((${#missing[@]})); then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "bootstrap: installing ${missing[*]} with apt-get"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    die "missing system packages: ${missing[*]} (Debian/Ubuntu: sudo apt-get install ${missing[*]})"
  fi
fi

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -e '.[test]' 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
echo "bootstrap: installed metanode into $VENV"
