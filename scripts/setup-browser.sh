#!/usr/bin/env bash
# Installs the headless browser the chat-page test (tests/web_chat.rs) drives: Debian's chromium and
# chromium-driver (Selenium comes with the Python reference environment). Idempotent: a no-op when
# both are on PATH. Installing needs root (or passwordless sudo) and apt.
set -euo pipefail
die() { echo "setup-browser: $*" >&2; exit 1; }

if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
  echo "setup-browser: chromium $(chromium --version 2>/dev/null | awk '{print $2}') and chromedriver present"
  exit 0
fi
command -v apt-get >/dev/null || die "chromium and chromedriver are missing and there is no apt-get: install them (Debian: chromium chromium-driver)"
SUDO=""
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null && sudo -n true 2>/dev/null || die "installing chromium needs root: run 'apt-get install chromium chromium-driver' as root"
  SUDO="sudo -n"
fi
echo "setup-browser: installing chromium and chromium-driver (about a minute)"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 \
  || { $SUDO apt-get update -q >/dev/null 2>&1 && $SUDO apt-get install -y -q chromium chromium-driver >/dev/null; } \
  || die "apt-get could not install chromium chromium-driver"
echo "setup-browser: done"
