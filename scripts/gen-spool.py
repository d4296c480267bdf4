#!/usr/bin/env python3
"""Fill a spool with N small deferred messages, for measuring start-up
recovery, `queue list`, `queue list --summary` and scheduler memory at
scale (README "At scale", scripts/bench.sh case 4).

Writes the files smtp-relay writes (queue/ID.msg and queue/ID.env in
envelope format version 2, src/spool/envelope.rs), straight into the
spool, without fsync: it makes a test fixture, not mail. The spool must
not be in use by a server. Ids are real queue ids (microseconds << 12 |
pid bits, 16 hex digits) in the past, so they sort by arrival and the
server's id generator is seeded past them at start.

  scripts/gen-spool.py --spool /tmp/big --count 100000 [--domains 50]
      [--size 512] [--due-in 3600]

--due-in: next try this many seconds from now (spread over one more such
span); 0 makes every message due at once (a drain after an outage).
"""
import argparse
import os
import random
import time

ERRORS = [
    # code, enhanced, source, text
    ("451", "4.3.0", "remote mx.%s 192.0.2.1:25", "Temporary local problem"),
    ("421", "4.7.0", "remote mx.%s 192.0.2.1:25", "Try again later"),
    ("451", "4.4.1", "local connect-failed", "connect failed: Connection refused (os error 111)"),
    ("450", "4.2.1", "remote mx.%s 192.0.2.1:25", "Mailbox busy"),
]


def envelope(qid, i, arrived, size, dom, next_try, err, tried):
    code, enh, source, text = err
    source = source % dom if "%s" in source else source
    rcpt = "<user%d@%s>" % (i, dom)
    reply = "%s\t%s\t%s\t%s" % (code, enh, source, text)
    return (
        "smtp-relay-envelope: 2\n"
        "id: %s\narrived: %d\nclient: 127.0.0.1\nhelo: gen.example\n"
        "from: <sender%d@gen.example>\nsize: %d\nbody: -\nsmtputf8: no\n"
        "attempts: 3\nnext-try: %d\n"
        "rcpt: deferred\t%s\t%s %s %s\n"
        "rcpt-reply: %s\n"
        "rcpt-tries: 3\t%d\t%d\n"
        "rcpt-attempt: %d\tmx.%s[192.0.2.1]:25\t%s\n"
        "end\n"
        % (qid, arrived, i % 977, size, next_try, rcpt, code, enh, text, reply,
           arrived, tried, tried, dom, reply)
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spool", required=True)
    ap.add_argument("--count", type=int, default=100_000)
    ap.add_argument("--domains", type=int, default=50)
    ap.add_argument("--size", type=int, default=512, help="body bytes per message")
    ap.add_argument("--due-in", type=int, default=3600)
    args = ap.parse_args()

    queue = os.path.join(args.spool, "queue")
    for d in ("tmp", "queue", "corrupt", "flush.d"):
        os.makedirs(os.path.join(args.spool, d), mode=0o700, exist_ok=True)
    now = int(time.time())
    rng = random.Random(42)
    # one id per message, 1 ms apart, ending a minute ago
    first_us = (now - 60) * 1_000_000 - args.count * 1000
    pid_bits = os.getpid() & 0xFFF
    body = ("x" * 76 + "\r\n") * max(1, args.size // 78)
    for i in range(args.count):
        us = first_us + i * 1000
        qid = "%016X" % ((us << 12) | pid_bits)
        dom = "d%d.example" % rng.randrange(args.domains)
        arrived = us // 1_000_000
        msg = (
            "Received: from gen.example ([127.0.0.1])\r\n\tby gen (smtp-relay) with ESMTP id %s;\r\n"
            "\tThu, 1 Jan 1970 00:00:00 +0000\r\nSubject: generated %d\r\n\r\n%s" % (qid, i, body)
        ).encode()
        with open(os.path.join(queue, qid + ".msg"), "wb") as f:
            f.write(msg)
        if args.due_in > 0:
            next_try = now + args.due_in + rng.randrange(args.due_in)
        else:
            next_try = now
        env = envelope(qid, i, arrived, len(msg), dom, next_try, rng.choice(ERRORS),
                       min(now, arrived + 60))
        with open(os.path.join(queue, qid + ".env"), "w") as f:
            f.write(env)
    print("wrote %d messages to %s" % (args.count, queue))


if __name__ == "__main__":
    main()
