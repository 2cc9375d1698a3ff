#!/usr/bin/env bash
# A throw-away OpenSSH sshd on 127.0.0.1 for dtest's ssh gateway tests.
#
#   sshd_harness.sh start DIR   keys, config, start, wait until it accepts
#   sshd_harness.sh stop DIR    kill it
#
# After `start`, DIR holds:
#   port                 the port sshd listens on
#   id_ed25519[.pub]     a user key pair, authorised for the current user
#   other_ed25519[.pub]  a second key pair that is NOT authorised
#   known_hosts          "[127.0.0.1]:PORT <host key>"
#   wrong_known_hosts    the same host with a different key (host key "changed")
#   empty_known_hosts    an empty file (host "unknown")
#   remote-home/         $HOME of remote sessions (sshd SetEnv), so a test's
#                        ~/.cache/dtest on the "remote" side is isolated
#   sshd.log             sshd's log (LogLevel VERBOSE)
# Exit 77 when sshd or ssh-keygen is missing (the tests then skip).
#
# HARNESS_ADDR (default 127.0.0.1) and HARNESS_PORT (default: a free one)
# choose where sshd listens, e.g. inside a network namespace:
#   HARNESS_ADDR=10.250.1.2 HARNESS_PORT=22 ip netns exec NS sshd_harness.sh start DIR
# HARNESS_MAX_STARTUPS (default 100:30:200) and HARNESS_MAX_SESSIONS (default
# 100) set sshd's MaxStartups and MaxSessions (OpenSSH's defaults: 10:30:100
# and 10).
set -euo pipefail

cmd=${1:-}
dir=${2:-}
if [[ -z "$cmd" || -z "$dir" ]]; then
  echo "usage: $0 start|stop DIR" >&2
  exit 2
fi

SSHD=${SSHD:-/usr/sbin/sshd}

stop() {
  if [[ -f "$dir/sshd.pid" ]]; then
    local pid
    pid=$(cat "$dir/sshd.pid" 2>/dev/null || true)
    if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.05
      done
      kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$dir/sshd.pid"
  fi
}

# A free TCP port on 127.0.0.1 (bind to port 0, read it back).
free_port() {
  python3 - <<'PY' 2>/dev/null && return 0
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
PY
  # No python: try random high ports until one is not connectable.
  local p
  for _ in $(seq 1 50); do
    p=$((20000 + RANDOM % 40000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      echo "$p"
      return 0
    fi
  done
  return 1
}

ADDR=${HARNESS_ADDR:-127.0.0.1}
can_connect() { (exec 3<>"/dev/tcp/$ADDR/$1") 2>/dev/null; }

start() {
  if [[ ! -x "$SSHD" ]]; then
    echo "sshd_harness: $SSHD not found (install openssh-server)" >&2
    exit 77
  fi
  if ! command -v ssh-keygen >/dev/null; then
    echo "sshd_harness: ssh-keygen not found (install openssh-client)" >&2
    exit 77
  fi
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  stop
  mkdir -p /run/sshd 2>/dev/null || true
  mkdir -p "$dir/remote-home"
  rm -f "$dir"/ssh_host_* "$dir"/id_ed25519* "$dir"/other_ed25519* "$dir"/other_host*
  ssh-keygen -q -t ed25519 -N '' -C dtest-harness-host -f "$dir/ssh_host_ed25519_key"
  ssh-keygen -q -t ed25519 -N '' -C dtest-harness-other-host -f "$dir/other_host_ed25519_key"
  ssh-keygen -q -t ed25519 -N '' -C dtest-harness-user -f "$dir/id_ed25519"
  ssh-keygen -q -t ed25519 -N '' -C dtest-harness-other -f "$dir/other_ed25519"
  cp "$dir/id_ed25519.pub" "$dir/authorized_keys"
  chmod 600 "$dir/authorized_keys" "$dir/id_ed25519" "$dir/other_ed25519"

  local port
  if [[ -n "${HARNESS_PORT:-}" ]]; then
    port=$HARNESS_PORT
  else
    port=$(free_port) || { echo "sshd_harness: no free port" >&2; exit 1; }
  fi
  cat > "$dir/sshd_config" <<CFG
ListenAddress $ADDR
Port $port
HostKey $dir/ssh_host_ed25519_key
PidFile $dir/sshd.pid
AuthorizedKeysFile $dir/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
StrictModes no
UsePAM no
LogLevel VERBOSE
MaxStartups ${HARNESS_MAX_STARTUPS:-100:30:200}
MaxSessions ${HARNESS_MAX_SESSIONS:-100}
SetEnv HOME=$dir/remote-home
Subsystem sftp internal-sftp
CFG
  : > "$dir/sshd.log"
  "$SSHD" -f "$dir/sshd_config" -E "$dir/sshd.log"
  # Readiness: sshd accepts connections (it daemonises after binding).
  local ok=""
  for _ in $(seq 1 200); do
    if can_connect "$port"; then ok=1; break; fi
    sleep 0.025
  done
  if [[ -z "$ok" ]]; then
    echo "sshd_harness: sshd did not start listening on $ADDR:$port; log:" >&2
    cat "$dir/sshd.log" >&2 || true
    stop
    exit 1
  fi
  echo "$port" > "$dir/port"
  local name="[$ADDR]:$port"
  [[ $port == 22 ]] && name=$ADDR
  echo "$name $(cut -d' ' -f1,2 "$dir/ssh_host_ed25519_key.pub")" > "$dir/known_hosts"
  echo "$name $(cut -d' ' -f1,2 "$dir/other_host_ed25519_key.pub")" > "$dir/wrong_known_hosts"
  : > "$dir/empty_known_hosts"
}

case "$cmd" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop DIR" >&2; exit 2 ;;
esac
