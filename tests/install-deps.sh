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

npm_clients() {  # the two npm folders, installed side by side
  npm_in() {  # folder, packages...
    local dir=$1; shift
    mkdir -p "$dir" && (cd "$dir" && npm install --silent --no-audit --no-fund --save-exact "$@" >/dev/null)
  }
  {
    [ -x .ci/inspector/node_modules/.bin/mcp-inspector ] ||
      npm_in .ci/inspector @modelcontextprotocol/inspector@0.15.0 ||
      echo "install-deps: npm could not install @modelcontextprotocol/inspector"
  } &
  # The TypeScript SDK client: the release that listed no tools on $ref schemas, and the latest.
  [ -d .ci/tsclient/node_modules/sdk-1.22.0 ] && [ -d .ci/tsclient/node_modules/sdk-latest ] ||
    npm_in .ci/tsclient sdk-1.22.0@npm:@modelcontextprotocol/sdk@1.22.0 \
      sdk-latest@npm:@modelcontextprotocol/sdk@latest ||
    echo "install-deps: npm could not install @modelcontextprotocol/sdk"
  wait
}

# What apt-get installs: chromium (unless AUTORESEARCH_CHROMIUM names one), bubblewrap (a sandbox around the
# server, as agent harnesses make one), node and npm. With npm already here, the npm clients install while apt-get
# works (a fresh CI machine waits for the two one after the other otherwise).
packages=()
command -v chromium >/dev/null 2>&1 || [ -n "${AUTORESEARCH_CHROMIUM:-}" ] || packages+=(chromium)
command -v bwrap >/dev/null 2>&1 || packages+=(bubblewrap)
command -v npm >/dev/null 2>&1 || packages+=(nodejs npm)
npm_started=
if command -v npm >/dev/null 2>&1; then
  npm_clients &
  npm_started=1
fi
if [ ${#packages[@]} -gt 0 ] && ! apt_install "${packages[@]}"; then
  for package in "${packages[@]}"; do  # one at a time, to say which one could not be installed
    apt_install "$package" || echo "install-deps: could not install $package (apt-get install $package)"
  done
fi
if [ -z "$npm_started" ]; then
  if command -v npm >/dev/null 2>&1; then npm_clients; else echo "install-deps: no npm: the npm clients are missing"; fi
fi
wait
# Runs' private view: user namespaces (for an ordinary user) and mount/PID namespaces. Nothing to install.
if command -v unshare >/dev/null 2>&1 && ! unshare --user --map-root-user --mount --pid --fork true 2>/dev/null; then
  echo "install-deps: namespaces are refused here (user namespaces disabled, AppArmor's restriction, or a" \
    "container): runs get Landlock only, and the private-view tests fail under CI"
fi
exit 0
