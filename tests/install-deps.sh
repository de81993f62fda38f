#!/usr/bin/env bash
# What the tests need besides the Python extras, installed only when missing (run it again at no cost):
# - Debian's Chromium, for the web dashboard's browser tests (through apt-get, as root or with sudo);
# - bubblewrap, to run the private view inside a sandbox such as agent harnesses put a server in;
# - Node.js and npm, then the official MCP Inspector and TypeScript SDK client (1.22.0 and latest), the
#   third-party clients the tests drive, into .ci/ (gitignored).
# The private view of runs needs no package (the server makes the namespace system calls itself), only a kernel
# that allows them: it says so plainly where it does not.
# The README's test command and CI (.ci/run) both run it. A tool it cannot install makes the tests that need it
# skip locally, saying so, and fail under CI.
set -uo pipefail
cd "$(dirname "$0")/.."

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null 2>&1; then sudo "$@"; else return 1; fi
}
apt_install() {
  command -v apt-get >/dev/null 2>&1 || return 1
  if [ -z "${APT_UPDATED:-}" ]; then as_root apt-get update -qq >/dev/null && APT_UPDATED=1; fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

if ! command -v chromium >/dev/null 2>&1 && [ -z "${AUTORESEARCH_CHROMIUM:-}" ]; then
  apt_install chromium || echo "install-deps: could not install chromium (apt-get install chromium)"
fi
if ! command -v bwrap >/dev/null 2>&1; then  # a sandbox around the server, as agent harnesses make one
  apt_install bubblewrap || echo "install-deps: could not install bubblewrap (apt-get install bubblewrap)"
fi
if ! command -v npm >/dev/null 2>&1; then
  apt_install nodejs npm || echo "install-deps: could not install node and npm"
fi
if command -v npm >/dev/null 2>&1; then
  npm_in() {  # folder, packages...
    local dir=$1; shift
    mkdir -p "$dir" && (cd "$dir" && npm install --silent --no-audit --no-fund --save-exact "$@" >/dev/null)
  }
  [ -x .ci/inspector/node_modules/.bin/mcp-inspector ] ||
    npm_in .ci/inspector @modelcontextprotocol/inspector@0.15.0 ||
    echo "install-deps: npm could not install @modelcontextprotocol/inspector"
  # The TypeScript SDK client: the release that listed no tools on $ref schemas, and the latest.
  [ -d .ci/tsclient/node_modules/sdk-1.22.0 ] && [ -d .ci/tsclient/node_modules/sdk-latest ] ||
    npm_in .ci/tsclient sdk-1.22.0@npm:@modelcontextprotocol/sdk@1.22.0 \
      sdk-latest@npm:@modelcontextprotocol/sdk@latest ||
    echo "install-deps: npm could not install @modelcontextprotocol/sdk"
fi
# Runs' private view: user namespaces (for an ordinary user) and mount/PID namespaces. Nothing to install.
if command -v unshare >/dev/null 2>&1 && ! unshare --user --map-root-user --mount --pid --fork true 2>/dev/null; then
  echo "install-deps: namespaces are refused here (user namespaces disabled, AppArmor's restriction, or a" \
    "container): runs get Landlock only, and the private-view tests fail under CI"
fi
exit 0
