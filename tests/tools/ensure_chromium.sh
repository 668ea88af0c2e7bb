#!/usr/bin/env bash
# Make sure a headless-capable Chromium is on PATH (Debian/Ubuntu `chromium` package).
# Idempotent: exits 0 immediately when chromium is already installed.
# Exit codes: 0 chromium available; 1 not installed and cannot install (not root / no apt-get);
#             2 installation was attempted and failed.
set -u
if command -v chromium >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure_chromium: chromium missing and cannot install it (need root and apt-get)" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium; } >&2; then
    echo "ensure_chromium: 'apt-get install chromium' failed" >&2
    exit 2
fi
command -v chromium >/dev/null 2>&1 || { echo "ensure_chromium: chromium still not on PATH" >&2; exit 2; }
exit 0
