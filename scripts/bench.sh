#!/usr/bin/env bash
# bench.sh: smtp-relay against Postfix as a relay, under identical load.
#
#   scripts/bench.sh [--quick] [-n N] [--runs R] [--cases LIST] [--out FILE]
#                    [--run-timeout SEC] [--max-minutes MIN] [--keep]
#   scripts/bench.sh idle [--sessions N] [--out FILE] [--keep]
#   scripts/bench.sh shaping [-n N] [--limited M] [--out FILE] [--keep]
#   scripts/bench.sh spool [-n N] [--out FILE] [--keep]
#   scripts/bench.sh fanout|drain [-n N] [--runs R] [-c C] [--out FILE] [--keep]
#
# Compare mode starts, each in its own temporary folder and on its own
# loopback ports:
#   - one sink: Postfix's smtp-sink, counting with -c (its "mesg=" counter
#     goes up once per complete DATA transaction; it writes the counter to
#     a file as it changes, which is how deliveries are counted);
#   - a private Postfix instance relaying everything to the sink
#     (scripts/postfix-instance.sh when it is committed, otherwise the
#     equivalent set-up below with Postfix's shipped defaults);
#   - smtp-relay, built with --release:
#       smtp-relay serve --listen 127.0.0.1:P --spool TMP --route '*=127.0.0.1:SINK'
#                        --no-dns --hostname relay.bench
# then drives both with Postfix's smtp-source (one message per connection,
# HELO, no pipelining) with the same load, alternating runs A B A B per case.
#
# A run's clock starts when smtp-source starts. Injection ends when
# smtp-source exits (every message got its 250). End to end ends when the
# sink has counted N more transactions AND the relay's queue is empty
# (smtp-relay: no file in SPOOL/queue or SPOOL/tmp; Postfix: no file in
# incoming, active, deferred, hold, maildrop). Polled every 5 ms.
#
# CPU: /proc/PID/stat utime+stime+cutime+cstime summed over the process
# tree, before and after the run. smtp-relay is one process (all threads).
# For Postfix the tree is the master and its descendants: a child that
# exits during the run is reaped by the master, so its time moves into the
# master's cutime/cstime and is still counted. Source and sink are not
# counted. Memory: smtp-relay's peak RSS (VmHWM, reset per run through
# /proc/PID/clear_refs); Postfix's peak of the summed PSS of its tree
# (smaps_rollup), sampled every second and at the end (a summed RSS would
# count the shared libraries once per process). "other CPU" is what the
# rest of the machine used during the run (busy CPU time, steal excepted,
# less relay, source, sink and this script; the processes that used it are
# named): a noise indicator, about 0 when quiet. The load average is not
# one: the relays' own threads waiting on fsync raise it. Before each run
# the script waits up to --quiet-wait seconds for the machine to be idle.
# "99 % delivered" is the end-to-end clock at 99 % of N: it shows
# stragglers.
#
# Idle mode starts smtp-relay with --workers 5100 --max-per-ip 6000
# --backlog 64, opens 5,000 idle SMTP sessions (each greeted), reports the
# relay's RSS and threads, checks the 5,001st connection is greeted at
# once and can send a message, then fills the workers and the backlog and
# checks the next connection gets 421 at once.
#
# Shaping mode (issue 16 case 3) and spool mode (case 4) run smtp-relay
# alone, through scripts/bench-scale.py (its doc says what they measure):
# shaping limits one of ten domains (each with its own smtp-sink on
# 127.0.0.X) to 2 connections and 300 messages/min and compares the
# others' throughput with a run where none is limited; spool fills a spool
# with N deferred messages (scripts/gen-spool.py) and measures restart to
# accepting, `queue list --summary` and resident memory per message.
#
# Fan-out and drain modes (issue 16 cases 1 and 2) compare with Postfix
# over many destinations, through scripts/bench-dest.py (its doc says how):
# ten smtp-sinks on 127.0.0.11-20, each domain routed to its own, the load
# from examples/smtp-load.rs (smtp-source cannot spread recipients over
# domains), runs alternating as in compare mode.
#
# Needs root (Postfix's master starts as root), python3, and Postfix's
# smtp-source/smtp-sink (scripts/ci-deps.sh installs them if missing).
# Writes one JSON file (its path is printed). Every run has a timeout;
# everything started is stopped on exit. A benchmark, not a test.
set -euo pipefail

PROG=scripts/bench.sh
ROOT=$(cd "$(dirname "$0")/.." && pwd -P)
SMTP_SOURCE=${SMTP_SOURCE:-/usr/sbin/smtp-source}
SMTP_SINK=${SMTP_SINK:-/usr/sbin/smtp-sink}
POSTFIX=${POSTFIX:-/usr/sbin/postfix}
POSTSUPER=${POSTSUPER:-/usr/sbin/postsuper}

usage() {
  cat <<EOF
Usage:
  $PROG [--quick] [-n N] [--runs R] [--cases LIST] [--out FILE]
        [--run-timeout SEC] [--max-minutes MIN] [--keep]
      smtp-relay against Postfix (relay to a sink), same load, runs A B A B.
      Default: N=10000 messages per run, 2 runs each, cases
        C=1,10,50 sessions x S=1k,10k,100k bytes, 1 recipient,
        and C=50 10k with 10 recipients.
      --quick        N=2000 and the cases 1:10k:1 50:1k:1 50:10k:1 50:10k:10
      --cases LIST   comma-separated C:SIZE:RCPTS, e.g. 1:10k:1,50:10k:10
      --runs R       runs per relay per case (default 2)
      --run-timeout  seconds one run may take (default 60 + N/40)
      --max-minutes  skip the remaining runs after this (default 40; quick 15)
      --out FILE     the JSON (default target/bench/bench-DATE-COMMIT.json)
      --keep         keep the temporary folder (spools, logs)
      --quiet-wait S before each run, wait up to S seconds (default 2) for the
                     machine to be idle (< 0.3 cores busy); 0 turns it off
      --rev REV      build commit REV (git archive into target/bench-src, own
                     target dir) instead of the work tree as it is
      --relay-args "OPTS"  more options for smtp-relay serve (e.g. "--sync fsync"),
                     split on spaces; recorded in the JSON
  $PROG idle [--sessions N] [--rev REV] [--out FILE] [--keep]
      N (default 5000) concurrent idle sessions against smtp-relay started
      with --workers N+100 --max-per-ip N+1000 --backlog 64: RSS, then the
      next connection must be served at once, and past workers+backlog a
      connection must get 421 at once.
  $PROG shaping [-n N] [--limited M] [--rev REV] [--out FILE] [--keep]
      ten domains, d0 limited to 2 connections and 300/min: M (default 300)
      messages to d0 and N (default 1000) to each of the nine others; d0's
      measured rate against its limit, the others' throughput against a
      run without the limit. smtp-relay only.
  $PROG spool [-n N] [--rev REV] [--out FILE] [--keep]
      N (default 200000) deferred messages written by scripts/gen-spool.py:
      restart to 'listening on', until every envelope is read, queue list
      --summary, RSS per message. smtp-relay only; needs about 8 KB of disk
      per message. --spool-dir DIR: a spool gen-spool.py filled before, with
      N messages (kept; its page cache stays warm).
  $PROG fanout [-n N] [--runs R] [-c C] [--rev REV] [--out FILE] [--keep]
      N (default 5000) messages of 10 KB from C (default 50) sessions, each to
      10 recipients in 10 domains, each domain's next hop its own smtp-sink
      (127.0.0.11-20); smtp-relay and Postfix alternating, R (default 3) runs
      each: messages/s until every recipient reached its sink, CPU per
      message, peak memory, ratios, and the spread (median, largest
      deviation from it) of each relay.
  $PROG drain [-n N] [--runs R] [-c C] [--rev REV] [--out FILE] [--keep]
      with the sinks down, N (default 20000) messages over 100 domains are
      injected and deferred (smtp-relay: each has its failed attempt;
      Postfix: held on arrival, then moved to its deferred queue due at
      the flush, scripts/bench-dest.py says why); then the sinks come up,
      the queue is flushed, and the time until it is empty is measured,
      alternating as above.
Environment: SMTP_SOURCE, SMTP_SINK, POSTFIX (paths), BENCH_POSTFIX=builtin
(ignore scripts/postfix-instance.sh), CARGO (default cargo), BENCH_TMPDIR
(default /tmp: where the run's folder, with both relays' queues, is made;
the JSON records its filesystem, and for ext4 whether it has a journal,
which decides smtp-relay's commit order: README "The spool").
EOF
}

die() {
  echo "$PROG: $*" >&2
  exit 1
}

MODE=compare
N=
QUICK=0
RUNS=2
CASES=
OUT=
RUN_TIMEOUT=
MAX_MINUTES=
KEEP=0
REV=
QUIET_WAIT=2
SESSIONS=5000
LIMITED=300
CONC=50
RUNS_SET=0
SPOOL_DIR=
RELAY_ARGS=
while [ $# -gt 0 ]; do
  case $1 in
    idle) MODE=idle ;;
    shaping) MODE=shaping ;;
    spool) MODE=spool ;;
    fanout) MODE=fanout ;;
    drain) MODE=drain ;;
    -c | --concurrency) CONC=${2:?}; shift ;;
    --limited) LIMITED=${2:?}; shift ;;
    --quick) QUICK=1 ;;
    -n | --messages) N=${2:?}; shift ;;
    --runs) RUNS=${2:?}; RUNS_SET=1; shift ;;
    --cases) CASES=${2:?}; shift ;;
    --out) OUT=${2:?}; shift ;;
    --run-timeout) RUN_TIMEOUT=${2:?}; shift ;;
    --max-minutes) MAX_MINUTES=${2:?}; shift ;;
    --sessions) SESSIONS=${2:?}; shift ;;
    --keep) KEEP=1 ;;
    --rev) REV=${2:?}; shift ;;
    --quiet-wait) QUIET_WAIT=${2:?}; shift ;;
    --spool-dir) SPOOL_DIR=${2:?}; shift ;;
    --relay-args) RELAY_ARGS=${2:?}; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument '$1'" ;;
  esac
  shift
done
case $MODE in
  shaping) : "${N:=1000}" ;;
  spool) : "${N:=200000}" ;;
  fanout) : "${N:=5000}" ;;
  drain) : "${N:=20000}" ;;
esac
case $MODE in fanout | drain) [ "$RUNS_SET" = 1 ] || RUNS=3 ;; esac
if [ "$QUICK" = 1 ]; then
  : "${N:=2000}" "${CASES:=1:10k:1,50:1k:1,50:10k:1,50:10k:10}" "${MAX_MINUTES:=15}"
else
  : "${N:=10000}" "${MAX_MINUTES:=40}"
  : "${CASES:=1:1k:1,10:1k:1,50:1k:1,1:10k:1,10:10k:1,50:10k:1,1:100k:1,10:100k:1,50:100k:1,50:10k:10}"
fi
: "${RUN_TIMEOUT:=$((60 + N / 40))}"
[[ $N =~ ^[0-9]+$ && $N -gt 0 ]] || die "-n must be a positive number"
[[ $RUNS =~ ^[0-9]+$ && $RUNS -gt 0 ]] || die "--runs must be a positive number"
[[ $SESSIONS =~ ^[0-9]+$ && $SESSIONS -gt 0 ]] || die "--sessions must be a positive number"
[[ $CONC =~ ^[0-9]+$ && $CONC -gt 0 ]] || die "-c must be a positive number"

# ---------------------------------------------------------------- set-up
[ "$MODE" = spool ] || [ "$MODE" = shaping ] || [ "$(id -u)" -eq 0 ] ||
  die "must run as root (Postfix's master starts as root)"
if [ "$MODE" != spool ] && { [ ! -x "$SMTP_SOURCE" ] || [ ! -x "$SMTP_SINK" ] || [ ! -x "$POSTFIX" ]; }; then
  echo "$PROG: installing Postfix's tools (scripts/ci-deps.sh)" >&2
  bash "$ROOT/scripts/ci-deps.sh"
fi
[ "$MODE" = spool ] || { [ -x "$SMTP_SOURCE" ] && [ -x "$SMTP_SINK" ] && [ -x "$POSTFIX" ]; } || die "smtp-source/smtp-sink/postfix missing after scripts/ci-deps.sh"
command -v python3 >/dev/null || die "python3 is needed"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

if [ -n "$REV" ]; then
  SHA=$(git -C "$ROOT" rev-parse --verify "$REV^{commit}") || die "no commit '$REV'"
  SRC=$ROOT/target/bench-src/$SHA
  if [ ! -f "$SRC/Cargo.toml" ]; then
    rm -rf "$SRC"
    mkdir -p "$SRC"
    git -C "$ROOT" archive "$SHA" | tar -x -C "$SRC" || die "git archive $SHA failed"
  fi
  BUILT_FROM="commit $SHA"
  echo "$PROG: building smtp-relay $SHA (--release, target/bench-build)"
  (cd "$SRC" && CARGO_TARGET_DIR=$ROOT/target/bench-build "${CARGO:-cargo}" build --release --quiet --bin smtp-relay) ||
    die "cargo build --release failed"
  RELAY_BIN=$ROOT/target/bench-build/release/smtp-relay
  BUILD_DIR=$SRC TARGET_DIR=$ROOT/target/bench-build
else
  SHA=$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)
  if [ -n "$(git -C "$ROOT" status --porcelain --untracked-files=no -- src Cargo.toml Cargo.lock 2>/dev/null)" ]; then
    BUILT_FROM="work tree, HEAD $SHA with uncommitted changes"
  else
    BUILT_FROM="work tree, HEAD $SHA"
  fi
  echo "$PROG: building smtp-relay (--release) from the $BUILT_FROM"
  (cd "$ROOT" && "${CARGO:-cargo}" build --release --quiet --bin smtp-relay) || die "cargo build --release failed"
  RELAY_BIN=$ROOT/target/release/smtp-relay
  BUILD_DIR=$ROOT TARGET_DIR=$ROOT/target
fi
export BUILT_FROM SHA
[ -x "$RELAY_BIN" ] || die "$RELAY_BIN missing after the build"

TMP=$(mktemp -d "${BENCH_TMPDIR:-/tmp}/smtp-relay-bench.XXXXXX")
chmod 755 "$TMP" # the postfix user must reach its queue below it
SINK_PID=
RELAY_PID=
PF_DIR=
PF_HOW=
FAILED=0

stop_pid() { # PID [seconds]: TERM, then KILL
  local pid=$1 wait=${2:-15} i=0
  [ -n "$pid" ] || return 0
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  while kill -0 "$pid" 2>/dev/null && [ $i -lt $((wait * 10)) ]; do
    sleep 0.1
    i=$((i + 1))
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

postfix_stop() {
  [ -n "$PF_DIR" ] || return 0
  if [ "$PF_HOW" = script ]; then
    bash "$ROOT/scripts/postfix-instance.sh" stop "$PF_DIR" >/dev/null 2>&1 || true
  fi
  if [ -f "$PF_DIR/etc/main.cf" ] && "$POSTFIX" -c "$PF_DIR/etc" status >/dev/null 2>&1; then
    "$POSTFIX" -c "$PF_DIR/etc" stop >/dev/null 2>&1 || true
    local i=0
    while "$POSTFIX" -c "$PF_DIR/etc" status >/dev/null 2>&1 && [ $i -lt 150 ]; do
      sleep 0.1
      i=$((i + 1))
    done
    "$POSTFIX" -c "$PF_DIR/etc" status >/dev/null 2>&1 && "$POSTFIX" -c "$PF_DIR/etc" abort >/dev/null 2>&1 || true
  fi
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  stop_pid "$RELAY_PID" 15
  postfix_stop
  stop_pid "$SINK_PID" 5
  if [ "$FAILED" = 1 ] && [ "$KEEP" != 1 ] && [ -n "$OUT" ]; then
    # a run failed: keep the logs (compressed) beside the JSON
    local logs=${OUT%.json}-logs
    mkdir -p "$logs"
    [ -f "$TMP/relay/relay.log" ] && gzip -c "$TMP/relay/relay.log" >"$logs/smtp-relay.log.gz"
    [ -n "$PF_DIR" ] && [ -f "$PF_DIR/maillog" ] && gzip -c "$PF_DIR/maillog" >"$logs/postfix-maillog.gz"
    echo "$PROG: a run failed; logs kept in $logs"
  fi
  if [ "$KEEP" = 1 ]; then
    echo "$PROG: kept $TMP"
  else
    rm -rf "$TMP"
  fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# The measuring side: one run, the report, idle sessions, free ports.
cat >"$TMP/benchlib.py" <<'PY'
import json, os, re, resource, selectors, socket, statistics, subprocess, sys, threading, time

HZ = os.sysconf("SC_CLK_TCK")


def read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def proc_stat(pid):
    s = read(f"/proc/{pid}/stat")
    if not s:
        return None
    f = s[s.rfind(")") + 2:].split()
    return {"ppid": int(f[1]), "cpu": int(f[11]) + int(f[12]), "ccpu": int(f[13]) + int(f[14])}


def all_procs():
    out = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            st = proc_stat(d)
            if st:
                out[int(d)] = st
    return out


def cpu_by_process():
    """{pid: (name, CPU seconds)} of every process (for naming the noise)."""
    out = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            s = read(f"/proc/{d}/stat")
            if s:
                f = s[s.rfind(")") + 2:].split()
                out[int(d)] = (s[s.find("(") + 1:s.rfind(")")], (int(f[11]) + int(f[12])) / HZ)
    return out


def top_others(before, after, ours):
    """The processes, not ours, that used the most CPU between two snapshots."""
    by_name = {}
    for pid, (name, cpu) in after.items():
        if pid in ours:
            continue
        d = cpu - before.get(pid, (name, 0.0))[1]
        if d > 0:
            by_name[name] = by_name.get(name, 0.0) + d
    return [(n, round(c, 1)) for n, c in sorted(by_name.items(), key=lambda x: -x[1])[:3] if c >= 0.5]


def tree(root, procs):
    kids = {}
    for p, st in procs.items():
        kids.setdefault(st["ppid"], []).append(p)
    res, stack = [], [root]
    while stack:
        p = stack.pop()
        if p in procs:
            res.append(p)
            stack.extend(kids.get(p, []))
    return res


def tree_cpu(root):
    """CPU seconds of root and its descendants, reaped children included."""
    procs = all_procs()
    return sum(procs[p]["cpu"] + procs[p]["ccpu"] for p in tree(root, procs)) / HZ


def status(pid):
    out = {}
    for line in (read(f"/proc/{pid}/status") or "").splitlines():
        k, _, v = line.partition(":")
        out[k] = v.split()[0] if v.split() else ""
    return out


def rollup(pid):
    rss = pss = 0
    for line in (read(f"/proc/{pid}/smaps_rollup") or "").splitlines():
        if line.startswith("Rss:"):
            rss = int(line.split()[1])
        elif line.startswith("Pss:"):
            pss = int(line.split()[1])
    return rss, pss


def tree_mem(root):
    """(sum RSS kB, sum PSS kB, processes) of the tree."""
    pids = tree(root, all_procs())
    rss = pss = 0
    for p in pids:
        r, s = rollup(p)
        rss += r
        pss += s
    return rss, pss, len(pids)


def sys_busy():
    """Busy CPU seconds of the whole machine (user, nice, system, irq, softirq, steal)."""
    f = [int(x) for x in read("/proc/stat").splitlines()[0].split()[1:]]
    total = sum(f[:8])
    return (total - f[3] - f[4]) / HZ


def sys_split():
    """(user+nice+system, irq+softirq, steal) CPU seconds of the whole machine."""
    f = [int(x) for x in read("/proc/stat").splitlines()[0].split()[1:]]
    return (f[0] + f[1] + f[2]) / HZ, (f[5] + f[6]) / HZ, f[7] / HZ


def sink_counts(path):
    """(sessions, quits, messages) from smtp-sink -c output."""
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - 256))
            tail = f.read()
    except OSError:
        return (0, 0, 0)
    m = re.findall(rb"sess=(\d+) quit=(\d+) mesg=(\d+)", tail)
    return tuple(int(x) for x in m[-1]) if m else (0, 0, 0)


def count_files(dirs):
    n = 0
    for d in dirs:
        for _, _, files in os.walk(d):
            n += len(files)
    return n


def log_size(path):
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def scan_log(kind, path, offset):
    """Counts of what a run logged, and a few unusual lines."""
    c = {"sent": 0, "other_status": 0, "warnings": 0}
    odd = []
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read().decode("utf-8", "replace")
    except OSError:
        return c, odd
    for line in data.splitlines():
        if "status=sent" in line:
            c["sent"] += 1
            continue
        unusual = False
        if "status=" in line:
            c["other_status"] += 1
            unusual = True
        if kind == "relay":
            if " WARN " in line or " ERROR " in line:
                c["warnings"] += 1
                unusual = True
        else:
            if re.search(r"\b(warning|error|fatal|panic):", line):
                c["warnings"] += 1
                unusual = True
        if unusual and len(odd) < 5:
            odd.append(line[:300])
    return c, odd


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def max_dev_pct(xs):
    """The largest deviation of one of `xs` from their median, in % of it."""
    m = median(xs)
    return max(abs(x - m) for x in xs) / m * 100 if xs and m else None


def parse_size(s):
    s = s.lower()
    mult = 1
    if s.endswith("k"):
        mult, s = 1024, s[:-1]
    elif s.endswith("m"):
        mult, s = 1024 * 1024, s[:-1]
    return int(s) * mult


class SpeedProbe(threading.Thread):
    """The machine's speed during a run: every 0.2 s a fixed loop (pure
    CPU, no system call) is timed in this thread's own CPU time, which a
    busy machine does not stretch by making the thread wait, only by
    running it slower: the host taking the virtual CPU away without the
    guest seeing it (steal that /proc/stat does not report here), other
    programs on the host's cores. Costs under 1 % of a core. The median
    is the run's `probe_ms`: higher is slower."""

    LOOPS = 20000

    def __init__(self):
        super().__init__(daemon=True)
        self.stop = threading.Event()
        self.samples = []

    def run(self):
        while not self.stop.wait(0.2):
            t = time.thread_time()
            x = 0
            for i in range(self.LOOPS):
                x += i * i
            self.samples.append((time.thread_time() - t) * 1000)

    def result(self):
        self.stop.set()
        self.join(5)
        return median(self.samples) if self.samples else None


# ------------------------------------------------------------------ run
def cmd_run(a):
    kind, pid, n, c, size, rcpts = a["kind"], int(a["pid"]), int(a["n"]), int(a["c"]), int(a["size"]), int(a["rcpts"])
    qdirs = a["queue"].split(":")
    sink_file, sink_pid = a["sink_out"], int(a["sink_pid"])
    timeout = float(a["timeout"])
    # wait (bounded) for a quiet moment: other jobs on the machine skew everything
    quiet_wait, waited, busy_before = float(a.get("quiet_wait", 2)), 0.0, None
    tq = time.monotonic()
    while True:
        b0 = sys_busy()
        time.sleep(0.5)
        busy_before = (sys_busy() - b0) / 0.5  # cores busy
        if busy_before < 0.3 or time.monotonic() - tq >= quiet_wait:
            break
    waited = time.monotonic() - tq
    base = sink_counts(sink_file)
    logoff = log_size(a["log"])
    if kind == "relay":
        try:
            with open(f"/proc/{pid}/clear_refs", "w") as f:
                f.write("5")  # reset VmHWM: the peak of this run only
        except OSError:
            pass
    load0 = read("/proc/loadavg").split()[0]
    self0 = resource.getrusage(resource.RUSAGE_SELF)
    cpu0, sink0, split0 = tree_cpu(pid), tree_cpu(sink_pid), sys_split()
    snap0 = cpu_by_process()
    cmd = [a["smtp_source"], "-s", str(c), "-m", str(n), "-l", str(size), "-r", str(rcpts),
           "-f", "bench@src.example", "-t", "rcpt@dest.example", "-M", "client.bench",
           f"127.0.0.1:{a['port']}"]
    errf = open(a["source_err"], "wb")
    probe = SpeedProbe()
    probe.start()
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errf)
    inj = {}

    def waiter():
        _, st, ru = os.wait4(p.pid, 0)
        inj["t"] = time.monotonic()
        inj["rc"] = os.waitstatus_to_exitcode(st)
        inj["cpu"] = ru.ru_utime + ru.ru_stime

    th = threading.Thread(target=waiter, daemon=True)
    th.start()
    mem = {"rss": 0, "pss": 0, "procs": 0}

    def sample():
        if kind == "relay":
            r, s = rollup(pid)
            np = 1
        else:
            r, s, np = tree_mem(pid)
        mem["rss"], mem["pss"], mem["procs"] = max(mem["rss"], r), max(mem["pss"], s), max(mem["procs"], np)

    state, t_e2e, t_99, next_mem = "ok", None, None, t0 + 0.5
    while True:
        now = time.monotonic()
        if now - t0 > timeout:
            state = "timeout"
            break
        if now >= next_mem:
            sample()
            next_mem = time.monotonic() + 1.0
        if "t" in inj:
            if inj["rc"] != 0 and now - inj["t"] > 5:
                # smtp-source gave up: wait no longer than for what was accepted
                if count_files(qdirs) == 0:
                    state = "source-failed"
                    break
            got = sink_counts(sink_file)[2] - base[2]
            if t_99 is None and got >= 0.99 * n:
                t_99 = time.monotonic()
            if got >= n and count_files(qdirs) == 0:
                t_e2e = time.monotonic()
                break
        time.sleep(0.005)
    if "t" not in inj:
        p.kill()
        th.join(5)
    th.join(5)
    probe_ms = probe.result()
    sample()
    cpu1, sink1, split1 = tree_cpu(pid), tree_cpu(sink_pid), sys_split()
    procs1 = all_procs()
    ours = set(tree(pid, procs1)) | {sink_pid, os.getpid()}
    noise = top_others(snap0, cpu_by_process(), ours)
    self1 = resource.getrusage(resource.RUSAGE_SELF)
    hwm = int(status(pid).get("VmHWM", 0) or 0) if kind == "relay" else None
    threads = int(status(pid).get("Threads", 0) or 0) if kind == "relay" else None
    time.sleep(0.3)
    final = sink_counts(sink_file)
    load1 = read("/proc/loadavg").split()[0]
    errf.close()
    logc, odd = scan_log(kind, a["log"], logoff)
    src_err = (read(a["source_err"]) or "").strip().splitlines()[:5]
    relay_cpu = cpu1 - cpu0
    own = (self1.ru_utime + self1.ru_stime) - (self0.ru_utime + self0.ru_stime)
    src_cpu = inj.get("cpu", 0.0)
    # processes other than ours (builds, tests). Interrupt time counts in
    # (the kernel charges part of it to our processes' stime too); steal not
    other = (split1[0] + split1[1] - split0[0] - split0[1]) - relay_cpu - src_cpu - (sink1 - sink0) - own
    irq_s, steal_s = split1[1] - split0[1], split1[2] - split0[2]
    delivered = final[2] - base[2]
    inject_s = inj["t"] - t0 if "t" in inj else None
    e2e_s = t_e2e - t0 if t_e2e else None
    if state == "ok" and inj.get("rc") != 0:
        state = "source-failed"
    problems = []
    if state != "ok":
        problems.append(state)
    if delivered != n:
        problems.append(f"sink counted {delivered} transactions for {n} messages")
    if logc["sent"] != n * rcpts:
        problems.append(f"log shows {logc['sent']} recipients sent, expected {n * rcpts}")
    if logc["other_status"] or logc["warnings"]:
        problems.append(f"log: {logc['other_status']} non-sent statuses, {logc['warnings']} warnings/errors")
    if src_err:
        problems.append("smtp-source: " + " | ".join(src_err))
    peak_kb = hwm if kind == "relay" else mem["pss"]
    r = {
        "kind": kind, "case": a["case"], "rep": int(a["rep"]), "n": n, "c": c, "size": size, "rcpts": rcpts,
        "status": state, "inject_s": inject_s, "e2e_s": e2e_s,
        "inject_rate": n / inject_s if inject_s and state == "ok" else None,
        "e2e_rate": n / e2e_s if e2e_s and state == "ok" else None,
        "e2e99_s": t_99 - t0 if t_99 else None,
        "e2e99_rate": 0.99 * n / (t_99 - t0) if t_99 and state == "ok" else None,
        "busy_cores_before": round(busy_before, 2), "quiet_wait_s": round(waited, 1),
        "cpu_s": relay_cpu, "cpu_s_per_1k": relay_cpu / n * 1000,
        "peak_mem_kb": peak_kb,
        "peak_mem_method": "VmHWM (peak RSS)" if kind == "relay" else "peak of summed PSS, sampled 1/s",
        "sampled_rss_sum_kb": mem["rss"], "sampled_pss_kb": mem["pss"], "max_processes": mem["procs"],
        "threads": threads, "source_cpu_s": src_cpu, "sink_cpu_s": sink1 - sink0, "other_cpu_s": other,
        "irq_softirq_s": irq_s, "steal_s": steal_s, "other_top": noise, "probe_ms": probe_ms,
        "sink_delivered": delivered, "sink_sessions": final[0] - base[0],
        "log": logc, "log_unusual": odd, "source_rc": inj.get("rc"), "source_stderr": src_err,
        "load_before": float(load0), "load_after": float(load1), "problems": problems,
    }
    if a.get("results"):
        with open(a["results"], "a") as f:
            f.write(json.dumps(r) + "\n")
    fmt = lambda x, f="%.0f": (f % x) if x is not None else "-"
    print(f"  {kind:8s} {a['case']:14s} run {a['rep']}: inject {fmt(r['inject_rate'])} msg/s, "
          f"end-to-end {fmt(r['e2e_rate'])} msg/s ({fmt(e2e_s, '%.2f')} s; 99 % at {fmt(r['e2e99_s'], '%.2f')} s), "
          f"CPU {r['cpu_s_per_1k']:.2f} s/1k msgs, peak {peak_kb / 1024:.0f} MB, "
          f"other CPU {other:.1f} s" + (f" ({', '.join(f'{n} {c}' for n, c in noise)})" if noise and other > 2 else "")
          + f", load {load0}" + (f", probe {probe_ms:.2f} ms" if probe_ms else "")
          + (f", waited {waited:.0f} s for quiet" if waited > 1 else "")
          + ("" if not problems else "  !! " + "; ".join(problems)), flush=True)
    for line in odd:
        print("      " + line, flush=True)
    return 0 if state == "ok" else 3


# --------------------------------------------------------------- report
TARGETS = [  # issue 16
    ("end-to-end at C=50, 10 KB, 1 rcpt >= 4x Postfix", "50:10k:1", "e2e_rate", 4.0, ">="),
    ("end-to-end at C=1, 10 KB, 1 rcpt >= 2x Postfix", "1:10k:1", "e2e_rate", 2.0, ">="),
    ("CPU per message at C=50, 10 KB <= 1/4 of Postfix", "50:10k:1", "cpu_s_per_1k", 1 / 4, "<="),
    ("CPU per message at C=1, 10 KB <= 1/3 of Postfix", "1:10k:1", "cpu_s_per_1k", 1 / 3, "<="),
]


def cmd_report(a):
    runs = [json.loads(l) for l in open(a["results"]) if l.strip()]
    meta = json.load(open(a["meta"]))
    order = meta["cases"]
    cases = []
    metrics = ["inject_rate", "e2e_rate", "cpu_s_per_1k", "peak_mem_kb", "e2e99_rate", "other_cpu_s"]
    for case in order:
        row = {"case": case}
        for kind in ("relay", "postfix"):
            rs = [r for r in runs if r["case"] == case and r["kind"] == kind]
            ok = [r for r in rs if r["status"] == "ok"]
            row[kind] = {m: median([r[m] for r in ok]) for m in metrics}
            row[kind]["runs"] = len(rs)
            row[kind]["ok_runs"] = len(ok)
            # the spread over the alternating runs: largest deviation of
            # one run's end-to-end rate from the median, in % of it
            rates = [r["e2e_rate"] for r in ok if r["e2e_rate"]]
            row[kind]["e2e_rates"] = [round(x, 1) for x in rates]
            row[kind]["e2e_max_dev_pct"] = max_dev_pct(rates)
            row[kind]["problems"] = sorted({p for r in rs for p in r["problems"]})
        # the machine's speed during each run (SpeedProbe): each run's rate
        # brought to the case's median probe shows how much of the spread
        # is the machine's; the spread above stays the figure judged
        probes = [r["probe_ms"] for r in runs if r["case"] == case and r["status"] == "ok"
                  and r.get("probe_ms") and r["e2e_rate"]]
        p_med = median(probes)
        for kind in ("relay", "postfix"):
            ok = [r for r in runs if r["case"] == case and r["kind"] == kind and r["status"] == "ok"
                  and r.get("probe_ms") and r["e2e_rate"]]
            row[kind]["probe_ms"] = [round(r["probe_ms"], 3) for r in ok]
            adj = [r["e2e_rate"] * r["probe_ms"] / p_med for r in ok] if p_med else []
            row[kind]["e2e_adjusted_rates"] = [round(x, 1) for x in adj]
            row[kind]["e2e_adjusted_max_dev_pct"] = max_dev_pct(adj)
            try:
                row[kind]["rate_probe_correlation"] = statistics.correlation(
                    [r["e2e_rate"] for r in ok], [r["probe_ms"] for r in ok]) if len(ok) >= 3 else None
            except statistics.StatisticsError:
                row[kind]["rate_probe_correlation"] = None
        if not (row["relay"]["runs"] or row["postfix"]["runs"]):
            continue
        row["ratio"] = {}
        for m in metrics[:5]:
            x, y = row["relay"][m], row["postfix"][m]
            row["ratio"][m] = x / y if x is not None and y else None
        c, s, rc = case.split(":")
        row["c"], row["size"], row["rcpts"] = int(c), s, int(rc)
        cases.append(row)
    by = {r["case"]: r for r in cases}
    targets = []
    for name, case, m, thr, op in TARGETS:
        v = by.get(case, {}).get("ratio", {}).get(m)
        met = None if v is None else (v >= thr if op == ">=" else v <= thr)
        targets.append({"target": name, "case": case, "metric": m, "ratio": v, "threshold": thr, "op": op, "met": met})
    cpu_all = [r["ratio"]["cpu_s_per_1k"] for r in cases if r["ratio"].get("cpu_s_per_1k") is not None]
    if cpu_all:
        worst = max(cpu_all)
        targets.append({"target": "CPU per message <= 1/3 of Postfix in every case (worst case shown)",
                        "case": "all", "metric": "cpu_s_per_1k", "ratio": worst, "threshold": 1 / 3,
                        "op": "<=", "met": worst <= 1 / 3})
    out = dict(meta)
    out["runs"] = runs
    out["cases"] = cases
    out["targets"] = targets
    with open(a["out"], "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")

    def f0(x):
        return "-" if x is None else f"{x:.0f}"

    def f2(x):
        return "-" if x is None else f"{x:.2f}"

    def f1(x):
        return "-" if x is None else f"{x:.1f}"

    def mb(x):
        return "-" if x is None else f"{x / 1024:.0f}"

    def rx(x):
        return "-" if x is None else f"{x:.2f}x"

    lines = []
    lines.append(f"smtp-relay {meta['commit']}{' (dirty)' if meta['dirty'] else ''} vs Postfix {meta['postfix_version']}, "
                 f"{meta['date']}, {meta['host']['cpus']} CPUs, {meta['host']['fs']}, N={meta['n']} per run, "
                 f"medians of {meta['runs_per_case']} runs each (A B A B)")
    lines.append("")
    lines.append("| C | size | rcpt | inject msg/s relay / Postfix (x) | end-to-end msg/s relay / Postfix (x) "
                 "| 99 % delivered, msg/s (x) | CPU s per 1k msgs relay / Postfix (x) | peak MB relay / Postfix (x) | other CPU s |")
    lines.append("|---:|---:|---:|---|---|---|---|---|---|")
    for r in cases:
        R, P, X = r["relay"], r["postfix"], r["ratio"]
        note = ""
        if R["ok_runs"] < R["runs"] or P["ok_runs"] < P["runs"]:
            note = f" (ok runs {R['ok_runs']}/{R['runs']} and {P['ok_runs']}/{P['runs']})"
        lines.append(f"| {r['c']} | {r['size']} | {r['rcpts']} "
                     f"| {f0(R['inject_rate'])} / {f0(P['inject_rate'])} ({rx(X['inject_rate'])}) "
                     f"| {f0(R['e2e_rate'])} / {f0(P['e2e_rate'])} ({rx(X['e2e_rate'])}) "
                     f"| {f0(R['e2e99_rate'])} / {f0(P['e2e99_rate'])} ({rx(X['e2e99_rate'])}) "
                     f"| {f2(R['cpu_s_per_1k'])} / {f2(P['cpu_s_per_1k'])} ({rx(X['cpu_s_per_1k'])}) "
                     f"| {mb(R['peak_mem_kb'])} / {mb(P['peak_mem_kb'])} ({rx(X['peak_mem_kb'])}) "
                     f"| {f1(R['other_cpu_s'])} / {f1(P['other_cpu_s'])} |{note}")
    lines.append("")
    lines.append("Spread of the end-to-end rate over the runs (median msg/s, largest deviation from it):")
    for r in cases:
        R, P = r["relay"], r["postfix"]
        lines.append(f"- {r['case']}: smtp-relay {f0(R['e2e_rate'])} +/- {f1(R['e2e_max_dev_pct'])} % "
                     f"(runs {R['e2e_rates']}), Postfix {f0(P['e2e_rate'])} +/- {f1(P['e2e_max_dev_pct'])} % "
                     f"(runs {P['e2e_rates']})")
    if any(r["relay"].get("probe_ms") for r in cases):
        lines.append("")
        lines.append("The machine's speed during each run (a fixed loop timed every 0.2 s, median ms; higher is "
                     "slower), how each relay's rate followed it (correlation), and the spread of the rates "
                     "brought to the case's median probe (rate x probe / median probe):")
        for r in cases:
            R, P = r["relay"], r["postfix"]
            lines.append(f"- {r['case']}: smtp-relay probes {R['probe_ms']} (r = {f2(R['rate_probe_correlation'])}), "
                         f"adjusted {f0(median(R['e2e_adjusted_rates']))} +/- {f1(R['e2e_adjusted_max_dev_pct'])} %; "
                         f"Postfix probes {P['probe_ms']} (r = {f2(P['rate_probe_correlation'])}), "
                         f"adjusted {f0(median(P['e2e_adjusted_rates']))} +/- {f1(P['e2e_adjusted_max_dev_pct'])} %")
    lines.append("")
    for t in targets:
        verdict = "n/a (not measured)" if t["met"] is None else ("MET" if t["met"] else "MISSED")
        lines.append(f"- {t['target']}: {rx(t['ratio'])} -> {verdict}")
    probs = [(r["case"], k, p) for r in cases for k in ("relay", "postfix") for p in r[k]["problems"]]
    if probs:
        lines.append("")
        lines.append("Problems seen:")
        for case, k, p in probs:
            lines.append(f"- {k} {case}: {p}")
    lines.append("")
    lines.append("Peak memory: smtp-relay VmHWM (RSS), Postfix summed PSS of its processes. "
                 "x = smtp-relay / Postfix (rates: higher is better; CPU, memory: lower is better). "
                 "other CPU: CPU seconds the rest of the machine used during a run (median, relay run / Postfix run): "
                 "0 on a quiet machine; large values mean the figures are disturbed. "
                 "99 % delivered: the rate until 99 % of the messages reached the sink (stragglers excluded).")
    print("\n".join(lines))
    return 0


# ----------------------------------------------------------------- idle
def greet_all(socks, deadline):
    """Read the first reply line of every socket: {sock: line or None}."""
    sel = selectors.DefaultSelector()
    got, bufs = {}, {}
    for s in socks:
        sel.register(s, selectors.EVENT_READ)
        bufs[s] = b""
    while len(got) < len(socks) and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=0.2):
            s = key.fileobj
            try:
                d = s.recv(512)
            except BlockingIOError:
                continue
            except OSError:
                d = b""
            bufs[s] += d
            if b"\n" in bufs[s] or not d:
                got[s] = bufs[s].split(b"\n")[0].decode("ascii", "replace").strip() or "(closed)"
                sel.unregister(s)
    sel.close()
    return got


def first_line(s, timeout):
    s.settimeout(timeout)
    t = time.monotonic()
    buf = b""
    try:
        while b"\n" not in buf:
            d = s.recv(512)
            if not d:
                break
            buf += d
    except socket.timeout:
        return None, time.monotonic() - t
    return buf.split(b"\n")[0].decode("ascii", "replace").strip(), time.monotonic() - t


def transaction(port, timeout=10):
    """One message over a fresh connection; returns (ok, detail, seconds)."""
    t = time.monotonic()
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        f = s.makefile("rb")

        def reply():
            while True:
                l = f.readline()
                if not l:
                    raise OSError("connection closed")
                if l[3:4] != b"-":
                    return l.decode("ascii", "replace").strip()

        g = reply()
        if not g.startswith("220"):
            return False, "greeting: " + g, time.monotonic() - t
        steps = [b"EHLO idle.bench\r\n", b"MAIL FROM:<idle@src.example>\r\n", b"RCPT TO:<rcpt@dest.example>\r\n",
                 b"DATA\r\n", b"Subject: idle probe\r\n\r\nhello\r\n.\r\n", b"QUIT\r\n"]
        want = ["250", "250", "250", "354", "250", "221"]
        last = ""
        for cmd, w in zip(steps, want):
            s.sendall(cmd)
            last = reply()
            if not last.startswith(w):
                return False, f"{cmd.split()[0].decode()}: {last}", time.monotonic() - t
        s.close()
        return True, "queued", time.monotonic() - t
    except OSError as e:
        return False, str(e), time.monotonic() - t


def cmd_idle(a):
    port, pid, nsess = int(a["port"]), int(a["pid"]), int(a["sessions"])
    workers, backlog = int(a["workers"]), int(a["backlog"])
    sink_file = a["sink_out"]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = workers + backlog + 200
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(need, soft)), hard))
    deadline = time.monotonic() + float(a["timeout"])
    st0 = status(pid)
    res = {"sessions": nsess, "workers": workers, "backlog": backlog,
           "rss_start_kb": int(st0.get("VmRSS", 0)), "threads_start": int(st0.get("Threads", 0))}
    t0 = time.monotonic()
    socks, connect_errors, got = [], [], {}
    # paced: batches of 50 (below the backlog of 64), each greeted before
    # the next, so the count measures capacity, not a connect burst
    while len(socks) < nsess and time.monotonic() < deadline and len(connect_errors) <= 20:
        batch = []
        for i in range(min(50, nsess - len(socks))):
            try:
                s = socket.create_connection(("127.0.0.1", port), timeout=5)
                s.setblocking(False)
                batch.append(s)
            except OSError as e:
                connect_errors.append(str(e))
        got.update(greet_all(batch, min(deadline, time.monotonic() + 10)))
        socks.extend(batch)
    res["greet_s"] = time.monotonic() - t0
    res["greeted_220"] = sum(1 for v in got.values() if v.startswith("220"))
    res["got_421"] = sum(1 for v in got.values() if v.startswith("421"))
    res["no_greeting"] = len(socks) - len(got)
    res["connect_errors"] = len(connect_errors)
    time.sleep(1.0)
    st1 = status(pid)
    _, pss1 = rollup(pid)
    res.update({"rss_idle_kb": int(st1.get("VmRSS", 0)), "hwm_idle_kb": int(st1.get("VmHWM", 0)),
                "pss_idle_kb": pss1, "threads_idle": int(st1.get("Threads", 0))})
    # the next connection: greeted (or refused with 421) at once, and usable
    base = sink_counts(sink_file)[2]
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    line, dt = first_line(s, 5)
    s.close()
    res["next_reply"], res["next_reply_s"] = line, dt
    res["next_ok"] = line is not None and (line.startswith("220") or line.startswith("421")) and dt < 1.0
    ok, detail, dt = transaction(port)
    res["next_transaction"] = {"ok": ok, "detail": detail, "seconds": dt}
    t = time.monotonic()
    while sink_counts(sink_file)[2] < base + 1 and time.monotonic() - t < 10:
        time.sleep(0.05)
    res["next_transaction"]["delivered_s"] = (time.monotonic() - t) if sink_counts(sink_file)[2] >= base + 1 else None
    # fill the workers, then the backlog; the one after must get 421 at once
    served = res["greeted_220"]
    extra, fill = [], {"opened": 0, "greeted_220": 0, "got_421": 0, "waiting": 0}
    while fill["got_421"] == 0 and fill["opened"] < workers + backlog and time.monotonic() < deadline:
        want = max(1, workers - served - fill["greeted_220"] + backlog - fill["waiting"])
        batch = []
        for i in range(want):
            try:
                x = socket.create_connection(("127.0.0.1", port), timeout=5)
                x.setblocking(False)
                batch.append(x)
            except OSError as e:
                connect_errors.append(str(e))
                break
        got2 = greet_all(batch, time.monotonic() + 3)
        fill["opened"] += len(batch)
        fill["greeted_220"] += sum(1 for v in got2.values() if v.startswith("220"))
        fill["got_421"] += sum(1 for v in got2.values() if v.startswith("421"))
        fill["waiting"] += len(batch) - len(got2)
        extra.extend(batch)
        if not batch:
            break
    res["fill"] = fill
    # A connect burst can get 421 while a few workers are still waking, so
    # the backlog may not be exactly full: probe until one gets 421; a probe
    # with no reply within 0.3 s took a free backlog slot (it waits there)
    probes, queued = [], 0
    for i in range(backlog + 10):
        x = socket.create_connection(("127.0.0.1", port), timeout=5)
        line, dt = first_line(x, 0.3)
        extra.append(x)
        if line is None:
            queued += 1
            continue
        probes.append({"reply": line, "ms": round(dt * 1000, 2)})
        if line.startswith("421"):
            break
    res["overflow_probes"] = probes
    res["overflow_probes_queued"] = queued
    res["overflow_421_at_once"] = any(p["reply"].startswith("421") and p["ms"] < 1000 for p in probes)
    st2 = status(pid)
    res["rss_full_kb"], res["threads_full"] = int(st2.get("VmRSS", 0)), int(st2.get("Threads", 0))
    for x in socks + extra:
        try:
            x.close()
        except OSError:
            pass
    time.sleep(2)
    st3 = status(pid)
    res["rss_after_close_kb"] = int(st3.get("VmRSS", 0))
    # information only: a connect burst at full speed, workers all idle
    burst = []
    t = time.monotonic()
    for i in range(2000):
        try:
            x = socket.create_connection(("127.0.0.1", port), timeout=5)
            x.setblocking(False)
            burst.append(x)
        except OSError:
            break
    got3 = greet_all(burst, time.monotonic() + 10)
    res["burst"] = {"connections": len(burst), "seconds": round(time.monotonic() - t, 2),
                    "greeted_220": sum(1 for v in got3.values() if v.startswith("220")),
                    "got_421": sum(1 for v in got3.values() if v.startswith("421"))}
    for x in burst:
        x.close()
    time.sleep(1)
    ok, detail, dt = transaction(port)
    res["after_transaction"] = {"ok": ok, "detail": detail, "seconds": dt}
    res["relay_alive"] = os.path.exists(f"/proc/{pid}")
    res["pass"] = bool(res["greeted_220"] == nsess and res["next_ok"] and res["next_transaction"]["ok"]
                       and res["overflow_421_at_once"] and res["after_transaction"]["ok"] and res["relay_alive"])
    meta = json.load(open(a["meta"]))
    meta["idle"] = res
    with open(a["out"], "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    mbk = lambda k: f"{k / 1024:.0f} MB"
    print(f"idle sessions: {res['greeted_220']}/{nsess} greeted with 220 in {res['greet_s']:.1f} s "
          f"(421: {res['got_421']}, no greeting: {res['no_greeting']}, connect errors: {res['connect_errors']})")
    print(f"smtp-relay RSS: {mbk(res['rss_start_kb'])} at start ({res['threads_start']} threads), "
          f"{mbk(res['rss_idle_kb'])} with {nsess} idle sessions (PSS {mbk(res['pss_idle_kb'])}, "
          f"{res['threads_idle']} threads), {mbk(res['rss_after_close_kb'])} after they closed")
    print(f"session {nsess + 1}: first reply {res['next_reply']!r} after {res['next_reply_s'] * 1000:.1f} ms "
          f"-> {'OK' if res['next_ok'] else 'FAILED'}; a message over it: {res['next_transaction']}")
    print(f"then filling the workers and the backlog: {res['fill']}; then {queued} more waited in the backlog "
          f"and the next connection got: {probes} "
          f"-> 421 at once: {'OK' if res['overflow_421_at_once'] else 'FAILED'}")
    print(f"information: 2000 connects in a burst with every worker idle: {res['burst']}")
    print(f"after closing all: a message {res['after_transaction']}, relay alive: {res['relay_alive']}")
    print(f"idle check: {'PASSED' if res['pass'] else 'FAILED'}")
    return 0 if res["pass"] else 1


def cmd_ports(a):
    socks = []
    for _ in range(int(a["count"])):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    print(" ".join(str(s.getsockname()[1]) for s in socks))
    return 0


def cmd_greets(a):
    """Wait until 127.0.0.1:PORT answers with 220."""
    end = time.monotonic() + float(a["timeout"])
    while time.monotonic() < end:
        try:
            s = socket.create_connection(("127.0.0.1", int(a["port"])), timeout=2)
            line, _ = first_line(s, 2)
            s.close()
            if line and line.startswith("220"):
                return 0
        except OSError:
            pass
        time.sleep(0.1)
    return 1


def cmd_drain(a):
    """Wait until the queue dirs are empty and the sink count is stable."""
    end = time.monotonic() + float(a["timeout"])
    qdirs = a["queue"].split(":")
    last, stable_since = None, time.monotonic()
    while time.monotonic() < end:
        cur = sink_counts(a["sink_out"])[2]
        if cur != last:
            last, stable_since = cur, time.monotonic()
        if count_files(qdirs) == 0 and time.monotonic() - stable_since > 1.0:
            return 0
        time.sleep(0.1)
    return 1


if __name__ == "__main__":
    cmd = sys.argv[1]
    args = dict(x.split("=", 1) for x in sys.argv[2:])
    sys.exit({"run": cmd_run, "report": cmd_report, "idle": cmd_idle, "ports": cmd_ports,
              "greets": cmd_greets, "drain": cmd_drain}[cmd](args))
PY
LIB=$TMP/benchlib.py

read -r SINK_PORT RELAY_PORT PF_PORT < <(python3 "$LIB" ports count=3)

start_sink() {
  mkdir -p "$TMP/sink"
  # -c: counters on stdout ("sess=.. quit=.. mesg=..", updated per message)
  "$SMTP_SINK" -c -u nobody -m 2000 "127.0.0.1:$SINK_PORT" 1024 >"$TMP/sink/count" 2>"$TMP/sink/stderr" &
  SINK_PID=$!
  python3 "$LIB" greets port="$SINK_PORT" timeout=10 || die "smtp-sink did not start: $(cat "$TMP/sink/stderr")"
  kill -0 "$SINK_PID" 2>/dev/null || die "smtp-sink exited (port $SINK_PORT taken?): $(cat "$TMP/sink/stderr")"
}

# $1 = spool dir, rest = extra options
start_relay() {
  local spool=$1
  shift
  mkdir -p "$TMP/relay"
  : >"$TMP/relay/stdout"
  # shellcheck disable=SC2086 # --relay-args: split on spaces on purpose
  "$RELAY_BIN" serve --listen "127.0.0.1:$RELAY_PORT" --spool "$spool" --route "*=127.0.0.1:$SINK_PORT" \
    --no-dns --hostname relay.bench $RELAY_ARGS "$@" >"$TMP/relay/stdout" 2>>"$TMP/relay/relay.log" &
  RELAY_PID=$!
  local i=0
  until grep -q '^listening on' "$TMP/relay/stdout"; do
    kill -0 "$RELAY_PID" 2>/dev/null || die "smtp-relay exited at start: $(tail -5 "$TMP/relay/relay.log")"
    [ $i -lt 300 ] || die "smtp-relay did not listen within 30 s"
    sleep 0.1
    i=$((i + 1))
  done
}

postfix_builtin_start() { # DIR LISTEN RELAYHOST: Postfix's shipped defaults, relay only
  local dir=$1 listen=$2 relayhost=$3
  mkdir -p "$dir/etc" "$dir/queue" "$dir/data"
  chmod 755 "$dir" "$dir/etc" "$dir/queue"
  chown root:root "$dir/etc" "$dir/queue"
  chown postfix "$dir/data"
  chmod 700 "$dir/data"
  : >"$dir/maillog"
  chown postfix "$dir/maillog"
  cat >"$dir/etc/main.cf" <<EOF
# written by $PROG: a plain relay to the sink, otherwise Postfix's defaults
compatibility_level = 3.6
queue_directory = $dir/queue
data_directory = $dir/data
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix.bench
mydomain = bench
myorigin = \$myhostname
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
relayhost = [127.0.0.1]:$relayhost
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
maillog_file = $dir/maillog
maillog_file_prefixes = $dir
EOF
  cat >"$dir/etc/master.cf" <<EOF
# written by $PROG; Debian's master.cf services with chroot off
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
EOF
  "$POSTFIX" -c "$dir/etc" start >"$dir/start.out" 2>&1 || die "postfix -c $dir/etc start failed: $(cat "$dir/start.out")"
  python3 "$LIB" greets port="$listen" timeout=30 || die "Postfix did not greet on $listen: $(tail -5 "$dir/maillog")"
}

start_postfix() {
  PF_DIR=$TMP/postfix
  if [ "${BENCH_POSTFIX:-}" != builtin ] && [ -f "$ROOT/scripts/postfix-instance.sh" ] &&
    git -C "$ROOT" ls-files --error-unmatch scripts/postfix-instance.sh >/dev/null 2>&1; then
    PF_HOW=script
    bash "$ROOT/scripts/postfix-instance.sh" start "$PF_DIR" "$PF_PORT" "$SINK_PORT" >/dev/null ||
      die "scripts/postfix-instance.sh start failed"
  else
    PF_HOW=builtin
    postfix_builtin_start "$PF_DIR" "$PF_PORT" "$SINK_PORT"
  fi
  local i=0
  until [ -s "$PF_DIR/queue/pid/master.pid" ]; do
    [ $i -lt 100 ] || die "no $PF_DIR/queue/pid/master.pid"
    sleep 0.1
    i=$((i + 1))
  done
  PF_PID=$(tr -d ' \n' <"$PF_DIR/queue/pid/master.pid")
}

meta_json() { # MODE OUT: what, where, when
  python3 - "$1" "$N" "$RUNS" "$CASES" "$PF_HOW" "$RUN_TIMEOUT" <<'PY'
import json, os, platform, subprocess, sys, time
mode, n, runs, cases, pf_how, run_timeout = sys.argv[1:7]
def sh(*c):
    try:
        return subprocess.run(c, capture_output=True, text=True, check=True).stdout.strip()
    except Exception:
        return ""
root = os.environ["ROOT"]
def has_journal(path):
    # the mount's entry in /proc/fs/jbd2 is named after its block device
    dev = os.stat(path).st_dev
    try:
        name = os.path.basename(os.readlink(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}"))
        return any(e.startswith(name + "-") for e in os.listdir("/proc/fs/jbd2"))
    except OSError:
        return False
fs = sh("findmnt", "-no", "FSTYPE", "-T", os.environ["TMP"]) or "?"
if fs == "ext4":
    fs += " (journal)" if has_journal(os.environ["TMP"]) else " (no journal)"
mem = [l for l in open("/proc/meminfo") if l.startswith("MemTotal")][0].split()[1]
model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
print(json.dumps({
    "schema": "smtp-relay-bench/1", "mode": mode,
    "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    "commit": os.environ["SHA"][:12],
    "built_from": os.environ["BUILT_FROM"],
    "dirty": "uncommitted" in os.environ["BUILT_FROM"],
    "postfix_version": sh("/usr/sbin/postconf", "-dh", "mail_version"),
    "postfix_setup": "scripts/postfix-instance.sh" if pf_how == "script" else "built into scripts/bench.sh (shipped defaults)",
    "host": {"cpus": os.cpu_count(), "mem_gib": round(int(mem) / 2**20, 1), "cpu": model,
             "kernel": platform.release(), "fs": fs, "loadavg_at_start": open("/proc/loadavg").read().split()[:3]},
    "n": int(n), "runs_per_case": int(runs), "relay_args": os.environ.get("RELAY_ARGS", ""), "quiet_wait_s": float(os.environ.get("QUIET_WAIT", 0)), "cases": cases.split(","), "run_timeout_s": float(run_timeout),
    "load": "smtp-source: one message per connection, HELO, no pipelining; -r recipients all in one domain",
    "sink": "smtp-sink -c (counts DATA transactions)",
}))
PY
}
export ROOT TMP QUIET_WAIT RELAY_ARGS

STAMP=$(date -u +%Y%m%dT%H%M%SZ)
COMMIT=${SHA:0:12}
if [ -z "$OUT" ]; then
  mkdir -p "$ROOT/target/bench"
  if [ "$MODE" = compare ]; then OUT=$ROOT/target/bench/bench-$STAMP-$COMMIT.json; else OUT=$ROOT/target/bench/bench-$MODE-$STAMP-$COMMIT.json; fi
fi
mkdir -p "$(dirname "$OUT")"

# ------------------------------------------------- shaping, spool (no Postfix)
if [ "$MODE" = shaping ]; then
  rc=0
  echo "$PROG shaping: d0 limited to 2 connections, 300/min, $LIMITED messages; d1..d9 $N each; temp $TMP"
  python3 "$ROOT/scripts/bench-scale.py" shaping relay="$RELAY_BIN" source="$SMTP_SOURCE" sink="$SMTP_SINK" \
    tmp="$TMP" others="$N" limited="$LIMITED" rate=300/min conns=2 out="$OUT" \
    timeout="$((RUN_TIMEOUT + LIMITED / 5 + 60))" || rc=$?
  echo "JSON: $OUT"
  exit $rc
fi
if [ "$MODE" = spool ]; then
  if [ -n "$SPOOL_DIR" ]; then
    [ -d "$SPOOL_DIR/queue" ] || die "--spool-dir $SPOOL_DIR: no queue/ in it (fill it with scripts/gen-spool.py)"
  else
    need=$((N * 8 / 1000 + 1000000))
    free=$(df -Pk "$TMP" | awk 'NR==2 {print $4}')
    [ "$free" -gt "$need" ] || die "$N messages need about $((need / 1000)) MB free in $TMP, $((free / 1000)) MB are"
  fi
  rc=0
  echo "$PROG spool: $N deferred messages; temp $TMP"
  python3 "$ROOT/scripts/bench-scale.py" spool relay="$RELAY_BIN" gen="$ROOT/scripts/gen-spool.py" tmp="$TMP" \
    count="$N" out="$OUT" keep="$KEEP" ${SPOOL_DIR:+spool="$SPOOL_DIR"} || rc=$?
  echo "JSON: $OUT"
  exit $rc
fi

if [ "$MODE" = fanout ] || [ "$MODE" = drain ]; then
  (cd "$BUILD_DIR" && CARGO_TARGET_DIR=$TARGET_DIR "${CARGO:-cargo}" build --release --quiet --example smtp-load) ||
    die "cargo build --release --example smtp-load failed"
  rc=0
  echo "$PROG $MODE: N=$N, C=$CONC, runs=$RUNS (alternating smtp-relay, Postfix); temp $TMP"
  echo "load average now: $(cut -d' ' -f1-3 /proc/loadavg)"
  python3 "$ROOT/scripts/bench-dest.py" "$MODE" relay="$RELAY_BIN" load="$TARGET_DIR/release/examples/smtp-load" \
    sink="$SMTP_SINK" pfscript="$ROOT/scripts/postfix-instance.sh" tmp="$TMP/dest" n="$N" runs="$RUNS" \
    c="$CONC" size=10240 out="$OUT" timeout="$((RUN_TIMEOUT + N / 50))" || rc=$?
  echo "JSON: $OUT"
  exit $rc
fi

# ------------------------------------------------------------------ idle
if [ "$MODE" = idle ]; then
  WORKERS=$((SESSIONS + 100))
  echo "$PROG idle: $SESSIONS sessions; smtp-relay --workers $WORKERS --max-per-ip $((SESSIONS + 1000)) --backlog 64; temp $TMP"
  start_sink
  start_relay "$TMP/relay/spool" --workers "$WORKERS" --max-per-ip $((SESSIONS + 1000)) --backlog 64
  PF_HOW=none
  meta_json idle >"$TMP/meta.json"
  rc=0
  python3 "$LIB" idle port="$RELAY_PORT" pid="$RELAY_PID" sessions="$SESSIONS" workers="$WORKERS" backlog=64 \
    sink_out="$TMP/sink/count" meta="$TMP/meta.json" out="$OUT" timeout=180 || rc=$?
  if grep -E ' (WARN|ERROR) ' "$TMP/relay/relay.log" | head -5 | grep -q .; then
    echo "smtp-relay warnings/errors:"
    grep -E ' (WARN|ERROR) ' "$TMP/relay/relay.log" | head -5
  fi
  echo "JSON: $OUT"
  exit $rc
fi

# --------------------------------------------------------------- compare
echo "$PROG: N=$N, runs=$RUNS, cases=$CASES; temp $TMP; ports sink $SINK_PORT relay $RELAY_PORT postfix $PF_PORT"
echo "load average now: $(cut -d' ' -f1-3 /proc/loadavg)"
start_sink
start_relay "$TMP/relay/spool"
start_postfix
echo "Postfix $("${POSTFIX%/*}/postconf" -dh mail_version) (${PF_HOW}), master pid $PF_PID; smtp-relay pid $RELAY_PID"
meta_json compare >"$TMP/meta.json"

RELAY_Q=$TMP/relay/spool/queue:$TMP/relay/spool/tmp
PF_Q=$PF_DIR/queue/incoming:$PF_DIR/queue/active:$PF_DIR/queue/deferred:$PF_DIR/queue/hold:$PF_DIR/queue/maildrop
RESULTS=$TMP/results.jsonl
: >"$RESULTS"
RESETS=0

# run KIND CASE REP C SIZE RCPTS N [results-file]
run_one() {
  local kind=$1 case=$2 rep=$3 c=$4 size=$5 rcpts=$6 n=$7 results=${8:-}
  local pid port q log
  if [ "$kind" = relay ]; then
    pid=$RELAY_PID port=$RELAY_PORT q=$RELAY_Q log=$TMP/relay/relay.log
  else
    pid=$PF_PID port=$PF_PORT q=$PF_Q log=$PF_DIR/maillog
  fi
  python3 "$LIB" run kind="$kind" pid="$pid" port="$port" queue="$q" log="$log" case="$case" rep="$rep" \
    c="$c" size="$size" rcpts="$rcpts" n="$n" sink_out="$TMP/sink/count" sink_pid="$SINK_PID" \
    smtp_source="$SMTP_SOURCE" source_err="$TMP/source.err" timeout="$RUN_TIMEOUT" results="$results" \
    quiet_wait="$QUIET_WAIT"
}

# After a failed run: empty that relay's queue so the next run starts clean.
reset_relay() {
  local kind=$1
  RESETS=$((RESETS + 1))
  FAILED=1
  echo "  resetting $kind (its queue is set aside in $TMP)"
  if [ "$kind" = relay ]; then
    stop_pid "$RELAY_PID" 15
    mv "$TMP/relay/spool" "$TMP/relay/spool.failed.$RESETS"
    start_relay "$TMP/relay/spool"
  else
    # a failed Postfix run may have left the instance broken (once its
    # postlogd died of a watchdog timeout at load 30, and postsuper then
    # blocked forever writing to the dead log socket): stop it, empty the
    # queue with a deadline, start it again
    postfix_stop
    timeout 120 "$POSTSUPER" -c "$PF_DIR/etc" -d ALL >/dev/null 2>&1 || true
    "$POSTFIX" -c "$PF_DIR/etc" start >/dev/null 2>&1 || die "Postfix did not start again after a failed run"
    local i=0
    until [ -s "$PF_DIR/queue/pid/master.pid" ] && python3 "$LIB" greets port="$PF_PORT" timeout=1; do
      [ $i -lt 30 ] || die "Postfix did not greet again after a failed run"
      sleep 1
      i=$((i + 1))
    done
    PF_PID=$(tr -d ' \n' <"$PF_DIR/queue/pid/master.pid")
  fi
  python3 "$LIB" drain queue="$RELAY_Q:$PF_Q" sink_out="$TMP/sink/count" timeout=60 || true
}

settle() {
  sync
  sleep 1
}

echo "warm-up (300 messages each, not measured)"
for kind in relay postfix; do
  run_one "$kind" warmup 0 10 1024 1 300 >/dev/null || reset_relay "$kind"
  settle
done

START=$(date +%s)
SKIPPED=0
IFS=, read -r -a CASE_LIST <<<"$CASES"
for spec in "${CASE_LIST[@]}"; do
  IFS=: read -r c size rcpts <<<"$spec"
  [[ $c =~ ^[0-9]+$ && $rcpts =~ ^[0-9]+$ && $size =~ ^[0-9]+[kKmM]?$ ]] || die "bad case '$spec' (want C:SIZE:RCPTS)"
  bytes=$(python3 -c "import sys; s=sys.argv[1].lower(); m={'k':1024,'m':1048576}.get(s[-1],1); print(int(s.rstrip('km'))*m)" "$size")
  echo "case C=$c size=$size ($bytes bytes) rcpts=$rcpts:"
  for rep in $(seq 1 "$RUNS"); do
    for kind in relay postfix; do
      if [ $(($(date +%s) - START)) -gt $((MAX_MINUTES * 60)) ]; then
        SKIPPED=$((SKIPPED + 1))
        continue
      fi
      if ! run_one "$kind" "$spec" "$rep" "$c" "$bytes" "$rcpts" "$N" "$RESULTS"; then
        reset_relay "$kind"
      fi
      settle
    done
  done
done
[ "$SKIPPED" -eq 0 ] || echo "!! --max-minutes $MAX_MINUTES reached: $SKIPPED runs skipped"

echo
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg); elapsed $(($(date +%s) - START)) s"
echo
python3 "$LIB" report results="$RESULTS" meta="$TMP/meta.json" out="$OUT"
echo
echo "JSON: $OUT"
# the unusual lines of the relays' logs, for the record
if grep -E ' (WARN|ERROR) ' "$TMP/relay/relay.log" | grep -q .; then
  echo "smtp-relay log, warnings/errors (first 10):"
  grep -E ' (WARN|ERROR) ' "$TMP/relay/relay.log" | head -10
fi
if grep -E '(warning|error|fatal|panic):' "$PF_DIR/maillog" | grep -q .; then
  echo "Postfix log, warnings/errors (first 10):"
  grep -E '(warning|error|fatal|panic):' "$PF_DIR/maillog" | head -10
fi
