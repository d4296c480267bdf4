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
drain: the sinks are down; N messages, one recipient each, over 100 domains
  (d00..d99.example, ten per sink) are injected from C sessions and
  deferred (every one has had its failed attempt: smtp-relay's log has a
  `status=deferred` line for each, Postfix's deferred queue holds each and
  nothing is left in incoming or active). Then the sinks come up and the queue is flushed (`smtp-relay queue
  flush`, `postqueue -f`): the clock runs from the flush until the relay
  has logged N recipients sent and its queue is empty. When a few are
  deferred again at the flush (Postfix does that) and wait for their
  retry time, minutes away, the run stops 15 s after the last progress
  past 95 %, reports them and clears them; the rate until 95 % sent is
  then the comparable figure (reported for every run). Peak memory is over the drain.

Runs alternate smtp-relay, Postfix, smtp-relay, Postfix. CPU is the
relay's process tree (utime+stime, reaped children included) over the
measured span; peak memory is smtp-relay's VmHWM (reset per run) and
Postfix's peak summed PSS (sampled every 0.5 s). Every wait has a
deadline; every process started is stopped. A benchmark: nothing here
asserts speed; a run that loses or duplicates a message is reported.
"""
import json
import os
import re
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


def log_count(path, offset, needle):
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read().count(needle)
    except OSError:
        return 0


def size_of(path):
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


class Relay:
    kind = "relay"

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
        self.queues = [os.path.join(self.spool, "queue"), os.path.join(self.spool, "tmp")]

    def reset_peak(self):
        with open(f"/proc/{self.pid}/clear_refs", "w") as f:
            f.write("5")

    def peak_kib(self, sampled):
        return status_kib(self.pid, "VmHWM")

    def sample_kib(self):
        return status_kib(self.pid, "VmRSS") or 0

    def all_deferred(self, n, logoff):
        """Every one of the n messages has had its failed attempt."""
        return log_count(self.log, logoff, b"status=deferred") >= n

    def clear(self):
        subprocess.run([self.a["relay"], "queue", "delete", "--spool", self.spool], timeout=120,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def flush(self):
        subprocess.run([self.a["relay"], "queue", "flush", "--spool", self.spool], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)

    def stop(self):
        stop(self.p, 30)


class Postfix:
    kind = "postfix"

    def __init__(self, a, domains, port):
        self.a, self.dir = a, os.path.join(a["tmp"], "postfix")
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
        subprocess.run(["bash", a["pfscript"], "start", self.dir, str(port), a["sink_port"]], check=True,
                       env=env, stdout=subprocess.DEVNULL, timeout=120)
        self.pid = int(read(os.path.join(self.dir, "queue/pid/master.pid")).strip())
        self.log = os.path.join(self.dir, "maillog")
        self.port = port
        q = os.path.join(self.dir, "queue")
        self.queues = [os.path.join(q, d) for d in ("incoming", "active", "deferred", "hold", "maildrop")]

    def reset_peak(self):
        pass

    def peak_kib(self, sampled):
        return sampled

    def sample_kib(self):
        return tree_pss_kib(self.pid)

    def all_deferred(self, n, logoff):
        """Every message is in the deferred queue and none elsewhere (a
        message can be logged deferred twice: the log is not enough)."""
        q = os.path.join(self.dir, "queue")
        moving = [os.path.join(q, d) for d in ("incoming", "active", "maildrop")]
        return count_files(moving) == 0 and count_files([os.path.join(q, "deferred")]) >= n

    def clear(self):
        subprocess.run(["/usr/sbin/postsuper", "-c", os.path.join(self.dir, "etc"), "-d", "ALL"], timeout=120,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def flush(self):
        subprocess.run(["/usr/sbin/postqueue", "-c", os.path.join(self.dir, "etc"), "-f"], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)

    def stop(self):
        subprocess.run(["bash", self.a["pfscript"], "stop", self.dir], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=60)


def load(a, relay, n, domains, mode):
    return subprocess.Popen([a["load"], f"127.0.0.1:{relay.port}", a["c"], str(n), a["size"],
                             ",".join(d for d, _ in domains), mode],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_until(cond, deadline, relay, mem):
    """Polls cond() every 5 ms, sampling memory every 0.5 s; the time it
    became true, or None at the deadline."""
    next_mem = 0.0
    while time.monotonic() < deadline:
        now = time.monotonic()
        if now >= next_mem:
            mem[0] = max(mem[0], relay.sample_kib())
            next_mem = now + 0.5
        if cond():
            return time.monotonic()
        time.sleep(0.005)
    return None


def sent(relay, logoff):
    """Recipients the relay logged `status=sent` since `logoff`."""
    return log_count(relay.log, logoff, b"status=sent")


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
    logoff = size_of(relay.log)
    relay.reset_peak()
    cpu0, mem = tree_cpu(relay.pid), [0]
    t0 = time.monotonic()
    p = load(a, relay, n, domains, "all")
    done = wait_until(lambda: p.poll() is not None and sent(relay, logoff) >= want
                      and count_files(relay.queues) == 0, t0 + timeout, relay, mem)
    if p.poll() is None:
        p.kill()
    out, err = p.communicate()
    cpu = tree_cpu(relay.pid) - cpu0
    time.sleep(0.3)
    got = sent(relay, logoff)
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


def run_drain(a, relay, sinks, domains, rep):
    n, timeout = int(a["n"]), float(a["timeout"])
    sinks.stop()
    logoff = size_of(relay.log)
    t_fill = time.monotonic()
    p = load(a, relay, n, domains, "rotate")
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
    fill_s = time.monotonic() - t_fill
    # every message has had its failed first attempt
    deferred = wait_until(lambda: relay.all_deferred(n, logoff),
                          time.monotonic() + timeout, relay, [0])
    fill_wait_s = time.monotonic() - t_fill
    queued = count_files(relay.queues)
    time.sleep(1)
    sinks.start()
    base = sinks.total()
    logoff = size_of(relay.log)
    relay.reset_peak()
    cpu0, mem = tree_cpu(relay.pid), [0]
    t0 = time.monotonic()
    relay.flush()
    # stalled: 95 % sent and nothing more for 15 s (the rest wait for
    # their retry time, minutes away: Postfix defers a few again at the
    # flush); the run ends there, and what is left is cleared
    prog = {"n": -1, "t": t0, "t95": None}

    def finished():
        got = sent(relay, logoff)
        now = time.monotonic()
        if got != prog["n"]:
            prog["n"], prog["t"] = got, now
        if prog["t95"] is None and got >= 0.95 * n:
            prog["t95"] = now
        if got >= n and count_files(relay.queues) == 0:
            return True
        return prog["t95"] is not None and now - prog["t"] > 15

    done = wait_until(finished, t0 + timeout, relay, mem)
    cpu = tree_cpu(relay.pid) - cpu0
    time.sleep(0.3)
    got = sent(relay, logoff)
    left = n - got
    if left > 0:
        relay.clear()
    problems = []
    if p.returncode != 0:
        problems.append("load: " + (err.strip().splitlines() or ["failed"])[0])
    if deferred is None:
        problems.append("not every message was deferred before the flush")
    if done is None:
        problems.append("timeout")
    problems += check_counts(sinks, base, got + left, n) if left > 0 else check_counts(sinks, base, got, n)
    if left > 0:
        problems = [p for p in problems if not p.startswith("log shows")]
    s = (done - t0) if done and left == 0 else None
    t95 = (prog["t95"] - t0) if prog["t95"] else None
    return {"kind": relay.kind, "case": "drain", "rep": rep, "n": n, "deliveries": got,
            "fill_s": round(fill_s, 2), "until_all_deferred_s": round(fill_wait_s, 2), "queue_files_before": queued,
            "seconds": s, "rate": n / s if s and not problems else None,
            "seconds_95": t95, "rate_95": 0.95 * n / t95 if t95 and not problems else None,
            "left_for_retry": left,
            "cpu_s": cpu, "cpu_ms_per_msg": cpu / n * 1000, "peak_kib": relay.peak_kib(mem[0]),
            "load_stdout": out.strip(), "problems": problems}


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
        relays = [Relay(a, domains, free_port()), Postfix(a, domains, free_port())]
        runs = []
        for rep in range(1, int(a["runs"]) + 1):
            for r in relays:
                res = run(a, r, sinks, domains, rep)
                runs.append(res)
                f = lambda x, p="%.0f": "-" if x is None else p % x
                print(f"  {r.kind:8s} {case} run {rep}: {f(res['rate'])} msg/s ({f(res['seconds'], '%.2f')} s), "
                      f"CPU {res['cpu_ms_per_msg']:.2f} ms/msg, peak {f(res['peak_kib'] and res['peak_kib'] / 1024)} MB"
                      + (f", filled in {res['fill_s']} s" if "fill_s" in res else "")
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
