#!/usr/bin/env bash
# Installs openssh-server (and rsync, for scripts/bench.sh's SSH case) if missing,
# then runs the test that sends through a real sshd on 127.0.0.1 with throwaway keys.
#
# Usage: scripts/ssh-test.sh        (as root, or with sudo available for apt-get)
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ ! -x /usr/sbin/sshd || -z $(command -v rsync) ]]; then
  sudo=""
  ((EUID == 0)) || sudo=sudo
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q openssh-server openssh-client rsync
fi
cargo test --test ssh -- --nocapture
