#!/usr/bin/env bash
# postfix-instance.sh: a private, throwaway Postfix instance on loopback,
# for interop tests and benchmarks. Everything it owns lives under DIR:
#
#   DIR/etc/main.cf, DIR/etc/master.cf   its configuration (written here)
#   DIR/queue/                           its queue (queue_directory)
#   DIR/data/                            its data_directory (master.lock ...)
#   DIR/maillog                          its log (maillog_file, via postlogd)
#
# It accepts SMTP on 127.0.0.1:LISTEN_PORT from 127.0.0.0/8 only, relays
# every message to [127.0.0.1]:RELAYHOST_PORT, delivers nothing locally,
# and opens no other TCP/UDP listener (its internal services are UNIX
# sockets inside DIR/queue), so it does not collide with a system Postfix.
# No chroot; syslog is not used (the log goes to DIR/maillog).
#
# MAIN_CF_EXTRA=FILE appends FILE's lines to main.cf (later lines win in
# Postfix), e.g. smtpd_tls_* / smtp_tls_* settings for TLS tests.
# MASTER_CF_EXTRA=FILE appends FILE's lines to master.cf, e.g. a second
# smtpd on another 127.0.0.1 port with -o smtpd_tls_wrappermode=yes
# (implicit TLS, RFC 8314).
# SASLDB=FILE turns on SMTP AUTH with Cyrus SASL (Debian's sasl2-bin and
# libsasl2-modules): FILE is a sasldb2 made with
# `saslpasswd2 -c -p -f FILE -u REALM USER`; it is copied to DIR/data/sasldb2
# (readable by postfix), DIR/etc/sasl/smtpd.conf names it (Debian's
# Postfix reads the SASL application file from there), and main.cf gets
# smtpd_sasl_auth_enable = yes with PLAIN and LOGIN offered. Relay
# restrictions, smtpd_sasl_local_domain and smtpd_tls_auth_only are the
# caller's (MAIN_CF_EXTRA).
#
# Postfix's master must start as root (it drops to the `postfix` user),
# so start/stop need root. Needs the Debian `postfix` package
# (scripts/ci-deps.sh installs it); no /etc/postfix/main.cf is needed.
#
# Exit status: 0 ok, 64 usage error, 69 postfix missing or not root,
# 1 anything else (the message says what, with the log's tail).
set -euo pipefail

PROG=$(basename "$0")
POSTFIX=${POSTFIX:-/usr/sbin/postfix}
POSTCONF=${POSTCONF:-/usr/sbin/postconf}
READY_TIMEOUT=${READY_TIMEOUT:-30}  # seconds to wait for the 220 greeting
STOP_TIMEOUT=${STOP_TIMEOUT:-20}    # seconds to wait for master to exit

usage() {
  cat <<EOF
Usage:
  $PROG start DIR LISTEN_PORT RELAYHOST_PORT
      Create a private Postfix under DIR (made if missing; its mode becomes
      755 so the postfix user can reach its queue) that listens on
      127.0.0.1:LISTEN_PORT and relays all mail to [127.0.0.1]:RELAYHOST_PORT,
      start it, and wait until it greets on its port.
      Refuses if an instance already runs in DIR or the port is taken.
  $PROG stop DIR
      Stop the instance in DIR (no error if none runs). DIR is kept: read
      DIR/maillog, remove DIR yourself.
  $PROG status DIR
      Exit 0 when the instance in DIR runs, 1 when it does not.

Environment: POSTFIX, POSTCONF (binaries), READY_TIMEOUT, STOP_TIMEOUT
(seconds; defaults $READY_TIMEOUT and $STOP_TIMEOUT), MAIN_CF_EXTRA and
MASTER_CF_EXTRA (files whose lines are appended to main.cf / master.cf),
SASLDB (a sasldb2 file: SMTP AUTH on, with Cyrus SASL).
Must run as root. Exit: 0 ok, 64 usage, 69 unavailable, 1 failure.
EOF
}

die() {
  echo "$PROG: $*" >&2
  exit 1
}

unavailable() {
  echo "$PROG: $*" >&2
  exit 69
}

usage_error() {
  echo "$PROG: $*" >&2
  usage >&2
  exit 64
}

check_port() {
  local name=$1 value=$2
  [[ $value =~ ^[0-9]+$ ]] && ((value >= 1 && value <= 65535)) ||
    usage_error "$name must be a port number 1-65535, got '$value'"
}

need_postfix() {
  [ -x "$POSTFIX" ] || unavailable "$POSTFIX not found (install the postfix package: scripts/ci-deps.sh)"
  [ -x "$POSTCONF" ] || unavailable "$POSTCONF not found (install the postfix package)"
  [ "$(id -u)" -eq 0 ] || unavailable "must run as root: Postfix's master starts as root"
  getent passwd postfix >/dev/null || unavailable "no 'postfix' user (install the postfix package)"
  getent group postdrop >/dev/null || unavailable "no 'postdrop' group (install the postfix package)"
}

# An absolute DIR without a trailing slash; created when asked.
abs_dir() {
  local dir=$1 create=$2
  [ -n "$dir" ] || usage_error "DIR must not be empty"
  if [ "$create" = yes ]; then
    mkdir -p -- "$dir" || die "cannot create $dir"
  fi
  [ -d "$dir" ] || die "$dir is not a directory"
  (cd -- "$dir" && pwd -P)
}

# Is something accepting TCP connections on 127.0.0.1:$1?
port_open() {
  timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null
}

# Does 127.0.0.1:$1 greet with 220 within 3 s?
greets_220() {
  timeout 3 bash -c '
    exec 3<>/dev/tcp/127.0.0.1/'"$1"' || exit 1
    IFS= read -r line <&3 || exit 1
    printf "QUIT\r\n" >&3
    case $line in 220*) exit 0 ;; *) exit 1 ;; esac' 2>/dev/null
}

running() {
  local dir=$1
  [ -f "$dir/etc/main.cf" ] && "$POSTFIX" -c "$dir/etc" status >/dev/null 2>&1
}

log_tail() {
  local dir=$1
  if [ -s "$dir/maillog" ]; then
    echo "---- last lines of $dir/maillog ----" >&2
    tail -n 30 "$dir/maillog" >&2
  fi
}

write_config() {
  local dir=$1 listen=$2 relayhost=$3
  # Everything a default would take from /etc/postfix or the host is set
  # here, so the instance is the same on every machine.
  cat >"$dir/etc/main.cf" <<EOF
# Written by $PROG; rewritten at every start.
compatibility_level = 3.6
queue_directory = $dir/queue
data_directory = $dir/data
mail_owner = postfix
setgid_group = postdrop

myhostname = postfix.test
mydomain = postfix.test
myorigin = \$myhostname
mydestination =
local_recipient_maps =
local_transport = error:5.1.1 local delivery is off in this instance
alias_maps =
alias_database =
relay_domains =
relayhost = [127.0.0.1]:$relayhost

inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
smtpd_recipient_restrictions =
smtpd_banner = \$myhostname ESMTP Postfix (test instance)
biff = no

# the log: a file of its own, no syslog
maillog_file = $dir/maillog
maillog_file_prefixes = $dir

# loopback only, no DNS for the next hop (an address literal anyway)
smtp_dns_support_level = disabled
smtp_host_lookup = native

# tests and benchmarks: no throttling, quick retries, same size limit as
# smtp-relay's default
in_flow_delay = 0
queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 10s
message_size_limit = 10485760
default_process_limit = 200
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0
smtpd_client_message_rate_limit = 0
default_destination_concurrency_limit = 20
EOF
  if [ -n "${SASLDB:-}" ]; then
    [ -f "$SASLDB" ] || die "SASLDB: $SASLDB is not a file"
    ls /usr/lib/*/sasl2/libsasldb.so >/dev/null 2>&1 ||
      unavailable "SASLDB: the Cyrus SASL plugins are missing (install libsasl2-modules)"
    mkdir -p "$dir/etc/sasl"
    cp -- "$SASLDB" "$dir/data/sasldb2"
    chown postfix "$dir/data/sasldb2"
    chmod 600 "$dir/data/sasldb2"
    cat >"$dir/etc/sasl/smtpd.conf" <<EOF
pwcheck_method: auxprop
auxprop_plugin: sasldb
mech_list: PLAIN LOGIN
sasldb_path: $dir/data/sasldb2
EOF
    cat >>"$dir/etc/main.cf" <<EOF
# from SASLDB=$SASLDB: SMTP AUTH with Cyrus SASL (sasldb)
smtpd_sasl_auth_enable = yes
smtpd_sasl_type = cyrus
smtpd_sasl_path = smtpd
smtpd_sasl_security_options = noanonymous
EOF
  fi
  if [ -n "${MAIN_CF_EXTRA:-}" ]; then
    [ -f "$MAIN_CF_EXTRA" ] || die "MAIN_CF_EXTRA: $MAIN_CF_EXTRA is not a file"
    {
      echo "# from MAIN_CF_EXTRA=$MAIN_CF_EXTRA"
      cat -- "$MAIN_CF_EXTRA"
    } >>"$dir/etc/main.cf"
  fi
  # master.cf: one TCP listener; every other service is a UNIX socket in
  # DIR/queue. No chroot (column 5 "n").
  cat >"$dir/etc/master.cf" <<EOF
# Written by $PROG; rewritten at every start.
# service type  private unpriv  chroot  wakeup  maxproc command + args
127.0.0.1:$listen inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
EOF
  if [ -n "${MASTER_CF_EXTRA:-}" ]; then
    [ -f "$MASTER_CF_EXTRA" ] || die "MASTER_CF_EXTRA: $MASTER_CF_EXTRA is not a file"
    {
      echo "# from MASTER_CF_EXTRA=$MASTER_CF_EXTRA"
      cat -- "$MASTER_CF_EXTRA"
    } >>"$dir/etc/master.cf"
  fi
}

cmd_start() {
  local dir listen=$2 relayhost=$3
  check_port LISTEN_PORT "$listen"
  check_port RELAYHOST_PORT "$relayhost"
  [ "$listen" != "$relayhost" ] || usage_error "LISTEN_PORT and RELAYHOST_PORT must differ (a mail loop)"
  need_postfix
  dir=$(abs_dir "$1" yes)
  case $dir in
    *[[:space:]]*) die "DIR must not contain white space: '$dir'" ;;
  esac
  if running "$dir"; then
    die "an instance already runs in $dir (stop it first: $PROG stop $dir)"
  fi
  if port_open "$listen"; then
    die "127.0.0.1:$listen is already in use"
  fi
  # Postfix wants its config and queue directories root-owned and not
  # group/other-writable, and the postfix user must be able to reach
  # them (so DIR itself becomes mode 755).
  mkdir -p "$dir/etc" "$dir/queue" "$dir/data"
  chmod 755 "$dir"
  chown root:root "$dir/etc" "$dir/queue"
  chmod 755 "$dir/etc" "$dir/queue"
  chown postfix "$dir/data"
  chmod 700 "$dir/data"
  : >"$dir/maillog"
  chown postfix "$dir/maillog"
  write_config "$dir" "$listen" "$relayhost"
  local out
  out=$("$POSTCONF" -c "$dir/etc" -n 2>&1 >/dev/null) || die "postconf rejects the configuration: $out"

  if ! out=$("$POSTFIX" -c "$dir/etc" start 2>&1); then
    echo "$out" >&2
    log_tail "$dir"
    die "postfix -c $dir/etc start failed"
  fi
  local waited=0
  until greets_220 "$listen"; do
    if ((waited >= READY_TIMEOUT * 10)); then
      echo "$out" >&2
      log_tail "$dir"
      "$POSTFIX" -c "$dir/etc" abort >/dev/null 2>&1 || true
      die "Postfix in $dir did not greet on 127.0.0.1:$listen within ${READY_TIMEOUT}s"
    fi
    if ! running "$dir"; then
      echo "$out" >&2
      log_tail "$dir"
      die "Postfix in $dir exited during start-up"
    fi
    sleep 0.1
    waited=$((waited + 1))
  done
  echo "postfix instance in $dir: listening on 127.0.0.1:$listen, relaying to [127.0.0.1]:$relayhost, log $dir/maillog"
}

cmd_stop() {
  local dir
  need_postfix
  if [ ! -d "$1" ]; then
    echo "postfix instance in $1: not running (no such directory)"
    return 0
  fi
  dir=$(abs_dir "$1" no)
  if ! running "$dir"; then
    echo "postfix instance in $dir: not running"
    return 0
  fi
  "$POSTFIX" -c "$dir/etc" stop >/dev/null 2>&1 || true
  local waited=0
  while running "$dir"; do
    if ((waited >= STOP_TIMEOUT * 10)); then
      # still up: kill the master and its children (postfix abort)
      "$POSTFIX" -c "$dir/etc" abort >/dev/null 2>&1 || true
      sleep 1
      running "$dir" && die "Postfix in $dir would not stop"
      break
    fi
    sleep 0.1
    waited=$((waited + 1))
  done
  echo "postfix instance in $dir: stopped"
}

cmd_status() {
  local dir
  dir=$(abs_dir "$1" no)
  if running "$dir"; then
    echo "postfix instance in $dir: running"
    return 0
  fi
  echo "postfix instance in $dir: not running"
  return 1
}

case ${1:-} in
  start)
    [ $# -eq 4 ] || usage_error "start needs DIR LISTEN_PORT RELAYHOST_PORT"
    cmd_start "$2" "$3" "$4"
    ;;
  stop)
    [ $# -eq 2 ] || usage_error "stop needs DIR"
    cmd_stop "$2"
    ;;
  status)
    [ $# -eq 2 ] || usage_error "status needs DIR"
    cmd_status "$2"
    ;;
  -h | --help | help)
    usage
    ;;
  "")
    usage_error "missing command"
    ;;
  *)
    usage_error "unknown command '$1'"
    ;;
esac
