#!/usr/bin/env python3
"""Fill a spool with N deferred messages, for measuring `queue list`,
`queue list --summary` and start-up recovery at scale.

Writes the same files smtp-relay writes (queue/ID.msg and queue/ID.env in
envelope format version 1), without fsync: it makes a test fixture, not mail.

  scripts/gen-spool.py --spool /tmp/big --count 100000 [--domains 50]
"""
import argparse
import os
import random
import time


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spool", required=True)
    ap.add_argument("--count", type=int, default=100_000)
    ap.add_argument("--domains", type=int, default=50)
    ap.add_argument("--size", type=int, default=2048, help="body bytes per message")
    args = ap.parse_args()

    queue = os.path.join(args.spool, "queue")
    for d in ("tmp", "queue", "corrupt", "flush.d"):
        os.makedirs(os.path.join(args.spool, d), mode=0o700, exist_ok=True)
    now = int(time.time())
    base = int(time.time() * 1_000_000) - args.count * 1000
    rng = random.Random(42)
    errors = [
        "451 4.3.0 Temporary local problem",
        "421 4.7.0 Try again later",
        "451 4.4.1 connect failed: Connection refused (os error 111)",
        "450 4.2.1 Mailbox busy",
    ]
    body = ("x" * 76 + "\r\n") * max(1, args.size // 78)
    for i in range(args.count):
        qid = "%016X" % (base + i * 1000)
        dom = "d%d.example" % rng.randrange(args.domains)
        arrived = now - rng.randrange(1, 4 * 86400)
        msg = (
            "Received: from gen ([127.0.0.1])\r\n\tby gen (smtp-relay) with ESMTP id %s;\r\n"
            "\tThu, 1 Jan 1970 00:00:00 +0000\r\nSubject: generated %d\r\n\r\n%s" % (qid, i, body)
        ).encode()
        with open(os.path.join(queue, qid + ".msg"), "wb") as f:
            f.write(msg)
        err = rng.choice(errors)
        env = (
            "smtp-relay-envelope: 1\nid: %s\narrived: %d\nclient: 127.0.0.1\nhelo: gen\n"
            "from: <sender%d@gen.example>\nsize: %d\nbody: -\nsmtputf8: no\nattempts: 3\n"
            "next-try: %d\nrcpt: deferred\t<user%d@%s>\t%s\n"
            "attempt: %d\t<user%d@%s>\tmx.%s[192.0.2.1]:25\t%s\nend\n"
            % (qid, arrived, i % 977, len(msg), now + 3600 + rng.randrange(3600),
               i, dom, err, arrived + 60, i, dom, dom, err)
        )
        with open(os.path.join(queue, qid + ".env"), "w") as f:
            f.write(env)
    print("wrote %d messages to %s" % (args.count, queue))


if __name__ == "__main__":
    main()
