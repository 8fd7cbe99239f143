#!/bin/sh
# Create and start a local testnet of real daemons on loopback.
#   testnet/up.sh [DIR] [VALIDATORS]      (stop it: metanode testnet down --dir DIR)
set -eu
DIR="${1:-./testnet-local}"
VALIDATORS="${2:-4}"
METANODE="${METANODE:-metanode}"
if ! command -v "$METANODE" >/dev/null 2>&1; then
    METANODE="python -m node"   # not installed: run from a source checkout
fi
if [ ! -f "$DIR/testnet.json" ]; then
    $METANODE testnet init --validators "$VALIDATORS" --dir "$DIR"
fi
$METANODE testnet up --dir "$DIR"
echo "status: $METANODE testnet status --dir $DIR"
echo "stop:   $METANODE testnet down --dir $DIR"
