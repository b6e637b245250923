"""What the client scripts (client_*.py) share: the relay's address, the
codecs, the golden topics' names, the timeout.

capture.sh runs each script from this folder, so `import golden_client` finds
this module.
"""
import sys

BS = sys.argv[1]
CODECS = ["gzip", "snappy", "lz4", "zstd"]
TIMEOUT = 15


def topic_names(short):
    """(plain, idempotent, {codec: topic}) of the client named `short`."""
    return (f"golden-{short}-plain", f"golden-{short}-idempotent",
            {c: f"golden-{short}-{c}" for c in CODECS})
