#!/usr/bin/env python3
"""The relay-only cases of scripts/bench.sh (issue 16): no Postfix here.

  bench-scale.py shaping relay=BIN source=SMTP_SOURCE sink=SMTP_SINK tmp=DIR
      others=N limited=M rate=300/min conns=2 out=FILE [timeout=S]
    Case 3, a throttled destination: ten domains, each routed to its own
    smtp-sink on 127.0.0.X (same port); d0 limited by its route section to
    `conns` connections and `rate`, d1..d9 unlimited. Injects M messages
    to d0 and N to each other domain at once (one smtp-source per
    domain), then reads the relay's log: d0's measured rate against its
    limit (first to last delivery), and the others' throughput. Run twice:
    limited, and a control with d0 unlimited, so "the others are not
    slowed" is a comparison, not a guess.

  bench-scale.py spool relay=BIN gen=scripts/gen-spool.py tmp=DIR count=N out=FILE [spool=DIR]
    Case 4, a big spool of deferred messages: restart to accepting (until
    the `listening on` line; first start and a warm restart), until start-up
    recovery has read every envelope (it runs after listening: the
    `recovery read` log line), `queue list --summary`, and the server's
    resident memory beyond an empty spool's, per queued message.

Every process started is stopped; every wait has a deadline. A benchmark,
not a test: it prints and writes JSON, it asserts nothing.
"""
import json
import os
import re
import resource
import shutil
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import status_kib, stop  # noqa: E402


def free_port(host="127.0.0.1"):
    s = socket.socket()
    s.bind((host, 0))
    port = s.getsockname()[1]
    s.close()
    return port


def cpu_s(pid):
    """User + system CPU seconds of a process so far (all its threads)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
        fields = s[s.rfind(")") + 2:].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return None


def start_relay(relay, args, log_path, deadline=600):
    """Starts `serve`; returns (process, seconds until `listening on`).
    The CPU it used until then is in `process.start_cpu_s`: on a busy
    machine the wall time says more about the neighbours."""
    log = open(log_path, "ab")
    t0 = time.monotonic()
    p = subprocess.Popen([relay, "serve"] + args, stdout=subprocess.PIPE, stderr=log)
    os.set_blocking(p.stdout.fileno(), False)
    buf = b""
    end = t0 + deadline
    while time.monotonic() < end:
        chunk = p.stdout.read() or b""
        buf += chunk
        if b"listening on" in buf:
            p.start_cpu_s = cpu_s(p.pid)
            return p, time.monotonic() - t0
        if p.poll() is not None:
            raise SystemExit(f"relay exited at start; see {log_path}")
        time.sleep(0.005)
    stop(p)
    raise SystemExit(f"relay did not listen within {deadline} s")


SENT = re.compile(r"^\[(\S+?)Z? .* to=<?[^@\s>]*@([^>\s]+)>? .* status=sent")


def sent_times(log_path):
    """{domain: [unix seconds of each delivery]} from the relay's log."""
    out = {}
    with open(log_path, errors="replace") as f:
        for line in f:
            m = SENT.match(line)
            if not m:
                continue
            ts = m.group(1).rstrip("Z")
            t = time.mktime(time.strptime(ts[:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
            frac = float("0" + ts[19:]) if len(ts) > 19 else 0.0
            out.setdefault(m.group(2), []).append(t + frac)
    return out


def shaping_run(a, limited):
    tmp = os.path.join(a["tmp"], "limited" if limited else "control")
    os.makedirs(tmp, exist_ok=True)
    others, lim_n = int(a["others"]), int(a["limited"])
    sink_port = free_port()
    relay_port = free_port()
    sinks, sources, relay = [], [], None
    log_path = os.path.join(tmp, "relay.log")
    try:
        for i in range(10):
            cmd = [a["sink"], "-u", "nobody"] if os.geteuid() == 0 else [a["sink"]]
            sinks.append(subprocess.Popen(cmd + [f"127.0.0.{i + 2}:{sink_port}", "256"],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        conf = ["no-dns = yes", "delivery-workers = 32", "max-per-destination = 20"]
        for i in range(10):
            conf += [f"[route d{i}.example]", f"hosts = [127.0.0.{i + 2}]:{sink_port}"]
            if i == 0 and limited:
                conf += [f"max-connections = {a['conns']}", f"message-rate = {a['rate']}"]
        conf_path = os.path.join(tmp, "relay.conf")
        with open(conf_path, "w") as f:
            f.write("\n".join(conf) + "\n")
        time.sleep(0.3)
        relay, _ = start_relay(a["relay"], [
            "--config", conf_path, "--listen", f"127.0.0.1:{relay_port}",
            "--spool", os.path.join(tmp, "spool"), "--hostname", "relay.bench"], log_path, 60)
        t0 = time.time()
        for i in range(10):
            n = lim_n if i == 0 else others
            sources.append(subprocess.Popen(
                [a["source"], "-s", "5", "-m", str(n), "-l", "1024", "-f", "s@bench.example",
                 "-t", f"u@d{i}.example", f"127.0.0.1:{relay_port}"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        total = lim_n + 9 * others
        end = time.monotonic() + float(a.get("timeout", 900))
        done = 0
        while time.monotonic() < end:
            done = sum(len(v) for v in sent_times(log_path).values())
            if done >= total:
                break
            time.sleep(1)
    finally:
        for p in sources:
            stop(p, 5)
        stop(relay)
        for p in sinks:
            stop(p, 5)
    times = sent_times(log_path)
    d0 = sorted(times.get("d0.example", []))
    rest = sorted(t for d, v in times.items() if d != "d0.example" for t in v)
    res = {"limited": limited, "delivered": done, "expected": total}
    if len(d0) > 1:
        span = d0[-1] - d0[0]
        res["d0"] = {"count": len(d0), "span_s": round(span, 2),
                     "rate_per_min": round((len(d0) - 1) / span * 60, 1) if span > 0 else None}
    if len(rest) > 1:
        span = rest[-1] - rest[0]
        res["others"] = {"count": len(rest), "span_s": round(span, 2),
                         "msg_per_s": round((len(rest) - 1) / span, 1) if span > 0 else None,
                         "first_after_s": round(rest[0] - t0, 2)}
    return res


def cmd_shaping(a):
    runs = [shaping_run(a, True), shaping_run(a, False)]
    lim, ctl = runs
    m = re.match(r"(\d+)/(\w+)", a["rate"])
    per = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hour": 3600, "d": 86400}[m.group(2)]
    limit_per_min = int(m.group(1)) * 60 / per
    report = {"case": "throttled destination (issue 16 case 3)", "rate_limit_per_min": limit_per_min,
              "max_connections": int(a["conns"]), "runs": runs}
    measured = lim.get("d0", {}).get("rate_per_min")
    if measured:
        report["d0_rate_error_pct"] = round((measured - limit_per_min) / limit_per_min * 100, 1)
    if lim.get("others", {}).get("msg_per_s") and ctl.get("others", {}).get("msg_per_s"):
        report["others_throughput_ratio"] = round(lim["others"]["msg_per_s"] / ctl["others"]["msg_per_s"], 3)
    print(f"limited d0: {lim.get('d0')} (limit {limit_per_min:g}/min, {a['conns']} connections); "
          f"error {report.get('d0_rate_error_pct')} %")
    print(f"others with d0 limited: {lim.get('others')}")
    print(f"others, control (d0 unlimited): {ctl.get('others')}; control d0: {ctl.get('d0')}")
    print(f"others' throughput, limited run / control: {report.get('others_throughput_ratio')}")
    with open(a["out"], "w") as f:
        json.dump(report, f, indent=1)
    return 0 if lim["delivered"] >= lim["expected"] else 1


def timed(cmd, cpu=None):
    """Wall seconds of a command; its CPU seconds appended to `cpu`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {r.stderr[-500:]}")
    wall = time.monotonic() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if cpu is not None:
        cpu.append(round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 2))
    return wall


def wait_recovered(p, log_path, since, t0, deadline=600):
    """Seconds from `t0` until the relay logs that start-up recovery has
    read every queued envelope (it listens before that), and its CPU
    seconds then; (None, None) if it did not within the deadline."""
    end = time.monotonic() + deadline
    while time.monotonic() < end and p.poll() is None:
        with open(log_path, "rb") as f:
            f.seek(since)
            if b" recovery read " in f.read():
                return time.monotonic() - t0, cpu_s(p.pid)
        time.sleep(0.02)
    return None, None


def settled_rss(pid, wait=60):
    """Resident KiB once it stops growing (the scheduler took the spool)."""
    last, stable = None, 0
    end = time.monotonic() + wait
    while time.monotonic() < end:
        cur = status_kib(pid)
        if cur == last:
            stable += 1
            if stable >= 4:
                break
        else:
            stable = 0
        last = cur
        time.sleep(0.5)
    return last


def cmd_spool(a):
    tmp, n = a["tmp"], int(a["count"])
    # spool=DIR: one filled before (by gen-spool.py, with `count` messages)
    spool = a.get("spool") or os.path.join(tmp, f"spool-{n}")
    empty = os.path.join(tmp, "spool-empty")
    log_path = os.path.join(tmp, "relay-spool.log")
    gen_s = 0.0
    if not a.get("spool"):
        gen_s = timed([sys.executable, a["gen"], "--spool", spool, "--count", str(n), "--domains", "100"])
    # deferred an hour: nothing is delivered, the route goes nowhere
    args = lambda s: ["--listen", f"127.0.0.1:{free_port()}", "--spool", s, "--no-dns",
                      "--route", "*=127.0.0.1:9", "--hostname", "relay.bench"]
    res = {"case": "spool of deferred messages (issue 16 case 4)", "messages": n, "generate_s": round(gen_s, 1)}
    p, _ = start_relay(a["relay"], args(empty), log_path)
    base = settled_rss(p.pid, 10)
    stop(p)
    starts, start_cpu, recovered, recovered_cpu = [], [], [], []
    for _ in range(2):
        since = os.path.getsize(log_path)
        t0 = time.monotonic()
        p, t = start_relay(a["relay"], args(spool), log_path)
        starts.append(round(t, 2))
        start_cpu.append(p.start_cpu_s)
        r, rc = wait_recovered(p, log_path, since, t0)
        recovered.append(r and round(r, 2))
        recovered_cpu.append(rc)
        rss = settled_rss(p.pid)
        hwm = status_kib(p.pid, "VmHWM")
        stop(p, 60)
    res.update({"start_to_listening_s": starts, "start_cpu_s": start_cpu,
                "start_to_all_scheduled_s": recovered, "all_scheduled_cpu_s": recovered_cpu, "rss_empty_kib": base, "rss_kib": rss, "hwm_kib": hwm,
                "rss_bytes_per_message": round((rss - base) * 1024 / n, 1) if rss and base else None,
                "hwm_bytes_per_message": round((hwm - base) * 1024 / n, 1) if hwm and base else None})
    summary_cpu = []
    summary = [round(timed([a["relay"], "queue", "list", "--summary", "--spool", spool], summary_cpu), 2)
               for _ in range(2)]
    res["queue_list_summary_s"] = summary
    res["queue_list_summary_cpu_s"] = summary_cpu
    print(f"{n} messages: start to 'listening on' {starts} s, CPU {start_cpu} s (first, warm restart); "
          f"every envelope read and scheduled {recovered} s, CPU {recovered_cpu} s; "
          f"RSS {rss} KiB (empty spool {base} KiB) = {res['rss_bytes_per_message']} B/message, "
          f"peak {res['hwm_bytes_per_message']} B/message; queue list --summary {summary} s, "
          f"CPU {summary_cpu} s; load average {os.getloadavg()[0]:.1f}")
    with open(a["out"], "w") as f:
        json.dump(res, f, indent=1)
    if a.get("keep") != "1" and not a.get("spool"):
        shutil.rmtree(spool, ignore_errors=True)
    return 0


if __name__ == "__main__":
    args = dict(x.split("=", 1) for x in sys.argv[2:])
    sys.exit({"shaping": cmd_shaping, "spool": cmd_spool}[sys.argv[1]](args))
