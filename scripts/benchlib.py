"""What scripts/bench-scale.py and scripts/bench-dest.py both need: reading
a process's /proc status and stopping what a run started."""

import signal
import subprocess


def status_kib(pid, key="VmRSS"):
    """A `kB` line of /proc/PID/status (VmRSS, VmHWM), or None."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def stop(p, wait=15):
    """SIGTERM, then SIGKILL after `wait` seconds; a finished or absent
    process is left alone."""
    if p is None or p.poll() is not None:
        return
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(wait)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
