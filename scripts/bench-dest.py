#!/usr/bin/env python3
"""Many destinations, smtp-relay against Postfix, alternating runs
(scripts/bench.sh fanout and drain; issue 16 cases 1 and 2).

  bench-dest.py fanout|drain relay=BIN load=SMTP_LOAD sink=SMTP_SINK
      pfscript=scripts/postfix-instance.sh tmp=DIR n=N runs=R c=C size=BYTES
      out=FILE [timeout=S]

Ten sinks (Postfix's smtp-sink -c, each counting DATA transactions) on
127.0.0.11 to 127.0.0.20, one port. smtp-relay routes each domain to its
sink with --route; Postfix (scripts/postfix-instance.sh) with a
transport_maps table, so for both a domain's next hop is its own address.
Completion is read from each relay's log (a `status=sent` line per
recipient) and its queue: smtp-sink -c updates its counters only when a
session ends, and Postfix keeps idle connections open for a while, so
the counters lag (they must never exceed the count).
The load is examples/smtp-load.rs (one message per connection, HELO, no
pipelining, like smtp-source, which cannot spread recipients over domains).

fanout: N messages of SIZE bytes from C sessions, each to 10 recipients in
  d0..d9.example (one per sink): the clock stops when the relay has logged
  10 x N recipients sent and its queue is empty. Rate in messages/s.
drain: a backlog of N messages, one recipient each, over 100 domains
  (d00..d99.example, ten per sink), injected from C sessions while the
  sinks are down, then drained when they come back. Each relay's queue
  is filled so that it ends with N queued files, each one deferred and
  due at the flush, and nothing else in flight:
  - smtp-relay: as in an outage: the load goes to its listener, each
    message has its failed attempt (connection refused), and the fill
    ends when its log has a `status=deferred` line for each. Its next
    retry is 5 minutes away (--retry-min), so only the flush makes it due.
  - Postfix: through a second smtpd on its own port, started only for
    this case (master.cf, `-o smtpd_recipient_restrictions=
    check_recipient_access,static:HOLD`, access(5) HOLD): cleanup writes
    each message straight to the hold queue and nothing is attempted.
    When all N are there and incoming/active are empty, each held file's
    time stamp is set an hour ahead and `postsuper -H ALL` moves them to
    the (hashed) deferred queue: exactly the state a failed attempt leaves
    (qmgr gives a deferred file the time of its next attempt as its
    modification time and takes it only after that, or at a flush, which
    scans "all time stamps"). Then `postfix reload` ends the fill's idle
    smtpd and cleanup processes (they would count in the drain's memory;
    after a real outage they would long have exited) and starts qmgr
    afresh; the drain runs with the instance's configuration unchanged
    (the fill's smtpd gets no connection then). Postfix cannot be filled
    the relay's way at this size: with the sinks down, qmgr moves every
    message through active, attempts it, or defers it through the error
    agent once the site is dead, and the instance's short retry times
    (1-10 s) bring the deferred ones back at once (with 3,000, each was
    deferred 2 to 5 times before all sat in the deferred queue; with
    40,000 it had not settled after 6 minutes). What the hold fill
    leaves out: the defer log a failed attempt writes (defer/ID, one small
    file per message, which Postfix removes when it takes the message in
    again) and the dead-site marks, which `postqueue -f` clears anyway.
  Then the sinks come up and the queue is flushed (`smtp-relay queue
  flush`, `postqueue -f`): the clock runs from the flush until the relay
  has logged N recipients sent and its queue is empty. Nothing may have
  been sent before, nor, for Postfix, attempted (both checked; without
  the time stamps ahead, its qmgr attempts the released messages within
  a second or two, which this check reports). When a few are
  deferred again at the flush and wait for their retry time, minutes
  away (Postfix did that when it was filled the relay's way), the run stops 15 s after the last progress
  past 95 %, reports them and clears them; the rate until 95 % sent is
  then the comparable figure (reported for every run); 60 s without
  progress below 95 % ends the run as stalled. Peak memory is over the
  drain; CPU includes the flush command's own (smtp-relay's reads every
  envelope).

Runs alternate smtp-relay, Postfix, smtp-relay, Postfix. CPU is the
relay's process tree (utime+stime, reaped children included) over the
measured span; logs are read incrementally (only what was appended since
the last poll); peak memory is smtp-relay's VmHWM (reset per run) and
Postfix's peak summed PSS (sampled every 0.5 s). Every wait has a
deadline; every process started is stopped. A benchmark: nothing here
asserts speed; a run that loses or duplicates a message is reported.
"""
import json
import os
import re
import resource
import signal
import socket
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import status_kib, stop  # noqa: E402

HZ = os.sysconf("SC_CLK_TCK")
SINK_IPS = [f"127.0.0.{11 + k}" for k in range(10)]


def read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def procs():
    out = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            s = read(f"/proc/{d}/stat")
            if s:
                f = s[s.rfind(")") + 2:].split()
                out[int(d)] = (int(f[1]), int(f[11]) + int(f[12]) + int(f[13]) + int(f[14]))
    return out


def tree(root, ps):
    kids = {}
    for p, (pp, _) in ps.items():
        kids.setdefault(pp, []).append(p)
    res, stack = [], [root]
    while stack:
        p = stack.pop()
        if p in ps:
            res.append(p)
            stack.extend(kids.get(p, []))
    return res


def tree_cpu(root):
    ps = procs()
    return sum(ps[p][1] for p in tree(root, ps)) / HZ


def tree_pss_kib(root):
    total = 0
    for p in tree(root, procs()):
        for line in read(f"/proc/{p}/smaps_rollup").splitlines():
            if line.startswith("Pss:"):
                total += int(line.split()[1])
    return total


def free_port():
    """A port free on every sink address and on 127.0.0.1."""
    for _ in range(50):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        try:
            for ip in SINK_IPS:
                t = socket.socket()
                t.bind((ip, port))
                t.close()
            return port
        except OSError:
            continue
    raise SystemExit("no free port on 127.0.0.11-20")


def greets(ip, port, timeout):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with socket.create_connection((ip, port), timeout=2) as s:
                if s.recv(64).startswith(b"220"):
                    s.sendall(b"QUIT\r\n")
                    return True
        except OSError:
            pass
        time.sleep(0.05)
    return False


class Sinks:
    def __init__(self, binary, tmp, port):
        self.binary, self.tmp, self.port, self.procs = binary, tmp, port, []
        self.done = 0  # transactions counted by sinks already stopped

    def count_now(self):
        """DATA transactions the running sinks counted: the last complete
        `sess=.. quit=.. mesg=N` record of each."""
        n = 0
        for k in range(len(SINK_IPS)):
            tail = read(os.path.join(self.tmp, f"sink{k}.count"))[-256:]
            found = re.findall(r"sess=\d+ quit=\d+ mesg=(\d+)", tail)
            n += int(found[-1]) if found else 0
        return n

    def total(self):
        return self.done + self.count_now()

    def start(self):
        for k, ip in enumerate(SINK_IPS):
            out = open(os.path.join(self.tmp, f"sink{k}.count"), "w")
            self.procs.append(subprocess.Popen(
                [self.binary, "-c", "-u", "nobody", "-m", "2000", f"{ip}:{self.port}", "1024"],
                stdout=out, stderr=subprocess.DEVNULL))
        for ip in SINK_IPS:
            if not greets(ip, self.port, 10):
                raise SystemExit(f"smtp-sink on {ip}:{self.port} did not start")

    def stop(self):
        self.done = self.total()
        for p in self.procs:
            stop(p, 5)
        self.procs = []


def count_files(dirs):
    return sum(len(files) for d in dirs for _, _, files in os.walk(d))


class LogCount:
    """Occurrences of `needle` in a log after `offset`, counted as the log
    grows: each call reads only the whole lines appended since the last,
    so a poll every few ms stays cheap when the log reaches 100 MB (the
    benchmark shares the machine's CPUs with the relay it measures)."""

    def __init__(self, path, offset, needle):
        self.path, self.pos, self.needle, self.n = path, offset, needle, 0

    def __call__(self):
        try:
            with open(self.path, "rb") as f:
                f.seek(self.pos)
                chunk = f.read()
        except OSError:
            return self.n
        end = chunk.rfind(b"\n") + 1
        self.n += chunk.count(self.needle, 0, end)
        self.pos += end
        return self.n


def size_of(path):
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


class Relay:
    kind = "relay"
    attempts_in_fill = True  # each message's failed attempt is the fill

    def __init__(self, a, domains, port):
        self.a, self.dir = a, os.path.join(a["tmp"], "relay")
        self.spool = os.path.join(self.dir, "spool")
        self.log = os.path.join(self.dir, "relay.log")
        self.port = port
        os.makedirs(self.dir, exist_ok=True)
        args = [a["relay"], "serve", "--listen", f"127.0.0.1:{port}", "--spool", self.spool, "--no-dns",
                "--hostname", "relay.bench"]
        for d, ip in domains:
            args += ["--route", f"{d}={ip}:{a['sink_port']}"]
        self.p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=open(self.log, "ab"))
        line = self.p.stdout.readline()
        if not line.startswith(b"listening on"):
            raise SystemExit(f"smtp-relay did not start; see {self.log}")
        self.pid = self.p.pid
        self.fill_port = port
        self.queues = [os.path.join(self.spool, "queue"), os.path.join(self.spool, "tmp")]

    def reset_peak(self):
        with open(f"/proc/{self.pid}/clear_refs", "w") as f:
            f.write("5")

    def peak_kib(self, sampled):
        return status_kib(self.pid, "VmHWM")

    def sample_kib(self):
        return status_kib(self.pid, "VmRSS") or 0

    def filled(self, n, logoff):
        """A condition: every one of the n messages has had its failed
        attempt (a `status=deferred` line each)."""
        deferred = LogCount(self.log, logoff, b"status=deferred")
        return lambda: deferred() >= n

    def make_due(self, n):
        """Nothing to do: each failed attempt left its message deferred,
        due at its retry time or at a flush. Problems found (none)."""
        return []

    def clear(self):
        subprocess.run([self.a["relay"], "queue", "delete", "--spool", self.spool], timeout=120,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def flush(self):
        return run_cpu([self.a["relay"], "queue", "flush", "--spool", self.spool])

    def stop(self):
        stop(self.p, 30)


class Postfix:
    kind = "postfix"
    attempts_in_fill = False  # held, never attempted before the flush

    def __init__(self, a, domains, port, fill_port=None):
        self.a, self.dir = a, os.path.join(a["tmp"], "postfix")
        self.etc = os.path.join(self.dir, "etc")
        os.makedirs(a["tmp"], exist_ok=True)
        extra = os.path.join(a["tmp"], "postfix-main.cf")
        transport = os.path.join(a["tmp"], "postfix-transport")
        with open(transport, "w") as f:
            for d, ip in domains:
                f.write(f"{d} smtp:[{ip}]:{a['sink_port']}\n")
        os.chmod(a["tmp"], 0o755)
        os.chmod(transport, 0o644)
        with open(extra, "w") as f:
            f.write(f"transport_maps = texthash:{transport}\n")
        env = dict(os.environ, MAIN_CF_EXTRA=extra)
        if fill_port:
            # drain's fill: a second smtpd whose every message goes to the
            # hold queue (access(5) HOLD), so nothing is attempted while
            # the backlog is injected; the drain itself never touches it
            master = os.path.join(a["tmp"], "postfix-master.cf")
            with open(master, "w") as f:
                f.write(f"127.0.0.1:{fill_port} inet n - n - - smtpd"
                        " -o smtpd_recipient_restrictions=check_recipient_access,static:HOLD\n")
            env["MASTER_CF_EXTRA"] = master
        subprocess.run(["bash", a["pfscript"], "start", self.dir, str(port), a["sink_port"]], check=True,
                       env=env, stdout=subprocess.DEVNULL, timeout=120)
        self.pid = int(read(os.path.join(self.dir, "queue/pid/master.pid")).strip())
        self.log = os.path.join(self.dir, "maillog")
        self.port, self.fill_port = port, fill_port
        self.q = os.path.join(self.dir, "queue")
        self.queues = self.subqueues("incoming", "active", "deferred", "hold", "maildrop")

    def subqueues(self, *names):
        return [os.path.join(self.q, d) for d in names]

    def reset_peak(self):
        pass

    def peak_kib(self, sampled):
        return sampled

    def sample_kib(self):
        return tree_pss_kib(self.pid)

    def filled(self, n, logoff):
        """A condition: the n messages are in the hold queue and none is
        on its way anywhere else."""
        moving, hold = self.subqueues("incoming", "active", "maildrop"), self.subqueues("hold")
        return lambda: count_files(moving) == 0 and count_files(hold) >= n

    def make_due(self, n):
        """Held messages become deferred ones, as a failed attempt leaves
        them: qmgr gives a deferred file the time of its next attempt as
        its modification time and picks it up only once that has passed,
        or at a flush (`postqueue -f` scans "all time stamps"). Each held
        file's time is set an hour ahead, then `postsuper -H ALL` renames
        them into the hashed deferred queue (a rename: the time stays), so
        qmgr leaves them alone until the flush. Problems found."""
        later = time.time() + 3600
        for d in self.subqueues("hold"):
            for top, _, files in os.walk(d):
                for name in files:
                    os.utime(os.path.join(top, name), (later, later))
        r = subprocess.run(["/usr/sbin/postsuper", "-c", self.etc, "-H", "ALL"], capture_output=True, text=True,
                           timeout=600)
        deferred, held = count_files(self.subqueues("deferred")), count_files(self.subqueues("hold"))
        if r.returncode != 0 or deferred != n or held != 0:
            return [f"postsuper -H ALL (exit {r.returncode}, {r.stderr.strip()[-200:]!r}) left {deferred} deferred"
                    f" and {held} held of {n}"]
        return self.retire_fill()

    def retire_fill(self):
        """The fill's smtpd and cleanup processes (one each per session)
        would sit idle for max_idle (100 s) and count in the drain's
        memory; after an outage they would be long gone. `postfix reload`
        makes every process end once idle (qmgr starts again, and skips
        the deferred files: their time is ahead). Problems found."""
        subprocess.run(["/usr/sbin/postfix", "-c", self.etc, "reload"], check=True, timeout=60,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            left = [p for p in tree(self.pid, procs()) if read(f"/proc/{p}/comm").strip() in ("smtpd", "cleanup")]
            if not left:
                return []
            time.sleep(0.1)
        return [f"{len(left)} smtpd/cleanup processes of the fill still run 30 s after postfix reload"]

    def clear(self):
        subprocess.run(["/usr/sbin/postsuper", "-c", self.etc, "-d", "ALL"], timeout=120,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def flush(self):
        return run_cpu(["/usr/sbin/postqueue", "-c", self.etc, "-f"])

    def stop(self):
        subprocess.run(["bash", self.a["pfscript"], "stop", self.dir], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=60)


def own_cpu():
    """This script's CPU seconds: what measuring took from the machine."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def run_cpu(cmd):
    """Runs a queue command (a flush) to its end; the CPU seconds it used
    (its own and its children's), which belong to the drain although
    the command is no child of the relay."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def load(a, port, n, domains, mode):
    return subprocess.Popen([a["load"], f"127.0.0.1:{port}", a["c"], str(n), a["size"],
                             ",".join(d for d, _ in domains), mode],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_until(cond, deadline, relay, mem, every=0.005):
    """Polls cond() every `every` s, sampling memory every 0.5 s; the time
    it became true, or None at the deadline."""
    next_mem = 0.0
    while time.monotonic() < deadline:
        now = time.monotonic()
        if now >= next_mem:
            mem[0] = max(mem[0], relay.sample_kib())
            next_mem = now + 0.5
        if cond():
            return time.monotonic()
        time.sleep(every)
    return None


def sent_counter(relay, logoff):
    """Recipients the relay logged `status=sent` since `logoff`: a
    counter to call as often as needed."""
    return LogCount(relay.log, logoff, b"status=sent")


def check_counts(sinks, base, got, want):
    """The relay's log must show every recipient sent once; the sinks'
    counters must not show more (they may show fewer: smtp-sink -c writes
    them when a session ends, and Postfix keeps idle connections open)."""
    problems = []
    if got != want:
        problems.append(f"log shows {got} recipients sent for {want}")
    counted = sinks.total() - base
    if counted > want:
        problems.append(f"sinks counted {counted} transactions for {want}")
    return problems


def run_fanout(a, relay, sinks, domains, rep):
    n, timeout = int(a["n"]), float(a["timeout"])
    base = sinks.total()
    want = n * len(domains)
    sent = sent_counter(relay, size_of(relay.log))
    relay.reset_peak()
    cpu0, mem = tree_cpu(relay.pid), [0]
    t0 = time.monotonic()
    p = load(a, relay.port, n, domains, "all")
    done = wait_until(lambda: p.poll() is not None and sent() >= want
                      and count_files(relay.queues) == 0, t0 + timeout, relay, mem)
    if p.poll() is None:
        p.kill()
    out, err = p.communicate()
    cpu = tree_cpu(relay.pid) - cpu0
    time.sleep(0.3)
    got = sent()
    problems = []
    if done is None:
        problems.append("timeout")
    if p.returncode != 0:
        problems.append("load: " + (err.strip().splitlines() or ["failed"])[0])
    problems += check_counts(sinks, base, got, want)
    s = (done - t0) if done else None
    return {"kind": relay.kind, "case": "fanout", "rep": rep, "n": n, "deliveries": got,
            "seconds": s, "rate": n / s if s and not problems else None,
            "deliveries_per_s": got / s if s and not problems else None,
            "cpu_s": cpu, "cpu_ms_per_msg": cpu / n * 1000, "peak_kib": relay.peak_kib(mem[0]),
            "load_stdout": out.strip(), "problems": problems}


def fill(a, relay, n, domains, logoff, timeout):
    """The backlog, with the sinks down (see the module's doc); `logoff`:
    where the relay's log stood before. Returns seconds until the load
    ended, until every message was deferred, and until every one was due
    at a flush (make_due), the load's output, and problems."""
    t_fill = time.monotonic()
    p = load(a, relay.fill_port, n, domains, "rotate")
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
    load_s = time.monotonic() - t_fill
    problems = []
    if p.returncode != 0:
        problems.append("load: " + (err.strip().splitlines() or ["failed"])[0])
    filled = wait_until(relay.filled(n, logoff), time.monotonic() + timeout, relay, [0], every=0.2)
    if filled is None:
        problems.append("not every message was deferred before the flush")
    else:
        problems += relay.make_due(n)
    return {"fill_s": round(load_s, 2), "until_all_deferred_s": round((filled or time.monotonic()) - t_fill, 2),
            "until_due_s": round(time.monotonic() - t_fill, 2)}, out.strip(), problems


def run_drain(a, relay, sinks, domains, rep):
    n, timeout = int(a["n"]), float(a["timeout"])
    sinks.stop()
    logoff = size_of(relay.log)
    filled, out, problems = fill(a, relay, n, domains, logoff, timeout)
    queued = count_files(relay.queues)
    time.sleep(1)
    sinks.start()
    base = sinks.total()
    # counts from the fill on: nothing may have been sent before the clock
    sent = sent_counter(relay, logoff)
    relay.reset_peak()
    cpu0, mem, own0 = tree_cpu(relay.pid), [0], own_cpu()
    early = sent()
    if early:
        problems.append(f"{early} sent before the flush")
    deferrals = LogCount(relay.log, logoff, b"status=deferred")()
    if deferrals and not relay.attempts_in_fill:
        problems.append(f"{deferrals} attempts before the flush")
    t0 = time.monotonic()
    flush_cpu = relay.flush()
    # stalled: 95 % sent and nothing more for 15 s (the rest wait for
    # their retry time, minutes away: deferred again at the flush), or
    # nothing more for 60 s below that (stuck, or more than 5 % deferred
    # again: a problem); the run ends there, and what is left is cleared
    prog = {"n": -1, "t": t0, "t95": None}

    def finished():
        got = sent()
        now = time.monotonic()
        if got != prog["n"]:
            prog["n"], prog["t"] = got, now
        if prog["t95"] is None and got >= 0.95 * n:
            prog["t95"] = now
        if got >= n and count_files(relay.queues) == 0:
            return True
        return now - prog["t"] > (15 if prog["t95"] is not None else 60)

    done = wait_until(finished, t0 + timeout, relay, mem)
    cpu = tree_cpu(relay.pid) - cpu0 + flush_cpu
    harness_cpu = own_cpu() - own0
    time.sleep(0.3)
    got = sent()
    left = n - got
    if left > 0:
        relay.clear()
    if done is None:
        problems.append("timeout")
    elif prog["t95"] is None:
        problems.append(f"stalled: {got} of {n} sent, none more for 60 s")
    problems += check_counts(sinks, base, got + left, n) if left > 0 else check_counts(sinks, base, got, n)
    if left > 0:
        problems = [p for p in problems if not p.startswith("log shows")]
    s = (done - t0) if done and left == 0 else None
    t95 = (prog["t95"] - t0) if prog["t95"] else None
    return {"kind": relay.kind, "case": "drain", "rep": rep, "n": n, "deliveries": got, **filled,
            "queue_files_before": queued, "deferrals_before_flush": deferrals,
            "seconds": s, "rate": n / s if s and not problems else None,
            "seconds_95": t95, "rate_95": 0.95 * n / t95 if t95 and not problems else None,
            "left_for_retry": left,
            "cpu_s": cpu, "flush_cpu_s": flush_cpu, "cpu_ms_per_msg": cpu / n * 1000,
            "harness_cpu_s": round(harness_cpu, 2),
            "peak_kib": relay.peak_kib(mem[0]), "load_stdout": out, "problems": problems}


def spread(xs):
    """(median, largest deviation from it in %)."""
    xs = [x for x in xs if x is not None]
    if not xs:
        return None, None
    m = statistics.median(xs)
    return m, (max(abs(x - m) for x in xs) / m * 100 if m else None)


def main():
    # a TERM (bench.sh's timeout, its exit) stops everything started here
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    case = sys.argv[1]
    a = dict(x.split("=", 1) for x in sys.argv[2:])
    a.setdefault("timeout", "600")
    os.makedirs(a["tmp"], exist_ok=True)
    a["sink_port"] = str(free_port())
    if case == "fanout":
        domains = [(f"d{k}.example", SINK_IPS[k]) for k in range(10)]
        run = run_fanout
    else:
        domains = [(f"d{k:02d}.example", SINK_IPS[k % 10]) for k in range(100)]
        run = run_drain
    sinks = Sinks(a["sink"], a["tmp"], a["sink_port"])
    sinks.start()
    relays = []
    try:
        relays = [Relay(a, domains, free_port()),
                  Postfix(a, domains, free_port(), fill_port=free_port() if case == "drain" else None)]
        runs = []
        for rep in range(1, int(a["runs"]) + 1):
            for r in relays:
                res = run(a, r, sinks, domains, rep)
                runs.append(res)
                f = lambda x, p="%.0f": "-" if x is None else p % x
                print(f"  {r.kind:8s} {case} run {rep}: {f(res['rate'])} msg/s ({f(res['seconds'], '%.2f')} s), "
                      f"CPU {res['cpu_ms_per_msg']:.2f} ms/msg, peak {f(res['peak_kib'] and res['peak_kib'] / 1024)} MB"
                      + (f", injected in {res['fill_s']} s, all deferred and due after {res['until_due_s']} s"
                         if "fill_s" in res else "")
                      + ("" if not res["problems"] else "  !! " + "; ".join(res["problems"])), flush=True)
                time.sleep(1)
    finally:
        for r in relays:
            r.stop()
        sinks.stop()
    summary = {}
    for kind in ("relay", "postfix"):
        rs = [r for r in runs if r["kind"] == kind]
        med, dev = spread([r["rate"] for r in rs])
        med95, dev95 = spread([r.get("rate_95") for r in rs])
        summary[kind] = {"rate_median": med, "rate_max_dev_pct": dev,
                         "rate_95_median": med95, "rate_95_max_dev_pct": dev95,
                         "left_for_retry": [r.get("left_for_retry", 0) for r in rs],
                         "cpu_ms_per_msg_median": statistics.median([r["cpu_ms_per_msg"] for r in rs]),
                         "peak_kib_median": statistics.median([r["peak_kib"] or 0 for r in rs]),
                         "ok_runs": sum(1 for r in rs if not r["problems"]), "runs": len(rs)}
    R, P = summary["relay"], summary["postfix"]
    ratio = R["rate_median"] / P["rate_median"] if R["rate_median"] and P["rate_median"] else None
    ratio95 = (R["rate_95_median"] / P["rate_95_median"]
               if R.get("rate_95_median") and P.get("rate_95_median") else None)
    res = {"schema": "smtp-relay-bench-dest/1", "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "commit": os.environ.get("SHA", "")[:12], "built_from": os.environ.get("BUILT_FROM"),
           "postfix_version": subprocess.run(["/usr/sbin/postconf", "-dh", "mail_version"], capture_output=True,
                                             text=True).stdout.strip(),
           "cpus": os.cpu_count(), "loadavg_at_end": open("/proc/loadavg").read().split()[:3],
           "case": case, "n": int(a["n"]), "c": int(a["c"]), "size": int(a["size"]), "domains": len(domains),
           "sinks": len(SINK_IPS), "runs": runs, "summary": summary, "ratio": ratio, "ratio_95": ratio95,
           "cpu_ratio": R["cpu_ms_per_msg_median"] / P["cpu_ms_per_msg_median"] if P["cpu_ms_per_msg_median"] else None}
    with open(a["out"], "w") as f:
        json.dump(res, f, indent=1)
    f1 = lambda x: "-" if x is None else f"{x:.1f}"
    for kind in ("relay", "postfix"):
        s = summary[kind]
        print(f"{kind:8s} {case}: median {f1(s['rate_median'])} msg/s (max deviation {f1(s['rate_max_dev_pct'])} %), "
              f"CPU {s['cpu_ms_per_msg_median']:.2f} ms/msg, peak {s['peak_kib_median'] / 1024:.0f} MB, "
              f"ok runs {s['ok_runs']}/{s['runs']}"
              + (f"; 95 % sent: median {f1(s['rate_95_median'])} msg/s (max deviation {f1(s['rate_95_max_dev_pct'])} %),"
                 f" left for their retry {s['left_for_retry']}" if case == "drain" else ""))
    x = lambda v: "-" if v is None else f"{v:.2f}x"
    print(f"ratio smtp-relay / Postfix: {x(ratio)} (CPU per message {x(res['cpu_ratio'])})"
          + (f"; until 95 % sent: {x(ratio95)}" if case == "drain" else ""))
    return 0 if all(not r["problems"] for r in runs) else 3


if __name__ == "__main__":
    sys.exit(main())
