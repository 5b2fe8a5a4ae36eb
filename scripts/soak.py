#!/usr/bin/env python3
"""Long soak of the real tickd binary (not run in CI).

Runs `tickd run` on 1000 in-process jobs at 5 Hz plus child-process jobs, samples the daemon's
RSS, descriptors, threads, runs and fire lateness every 10 s into a CSV, and plots it to a PNG.

    python3 scripts/soak.py                 # one hour
    python3 scripts/soak.py --minutes 15    # shorter
    python3 scripts/soak.py --pause-at 30   # + SIGSTOP the daemon for 90 s at minute 30
    python3 scripts/soak.py --out target/soak

With --pause-at, the daemon is stopped (SIGSTOP) for --pause-for seconds, then continued; the runs
it starts in the first second after SIGCONT are counted and written to pause.txt: with the default
on_missed = "skip", each job runs at most once for the fires it missed (the latest one), so the
count stays near 1000 + 5 x 1000, not the 450,000 fires the stop covered.

Lateness comes from tickd's own `tickd_fire_lateness_seconds` histogram (its /metrics endpoint):
each sample reports the bucket bounds holding the window's median and 99th percentile.
matplotlib is installed into target/pydeps on first use if it is missing.
"""
import argparse
import csv
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def jobs_file(directory, port, children):
    lines = [f'[daemon]\nhttp = "127.0.0.1:{port}"\nshutdown_timeout = "10s"\n']
    for i in range(1000):
        lines.append(f'[jobs.inproc-{i}]\nevery = "200ms"\nhandler = "log"\n')
    for i in range(children):
        lines.append(f'[jobs.child-{i}]\nevery = "1s"\ncommand = ["sh", "-c", "echo run $$"]\n')
    path = os.path.join(directory, "jobs.toml")
    with open(path, "w") as f:
        f.write("\n".join(lines))
    return path


def proc(pid):
    with open(f"/proc/{pid}/status") as f:
        status = dict(line.split(":", 1) for line in f if ":" in line)
    rss_kb = int(status["VmRSS"].split()[0])
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    threads = len(os.listdir(f"/proc/{pid}/task"))
    return rss_kb, fds, threads


def metrics(port):
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    buckets, runs = {}, 0.0
    for line in text.splitlines():
        if line.startswith("tickd_fire_lateness_seconds_bucket"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            buckets[le] = buckets.get(le, 0.0) + float(line.rsplit(" ", 1)[1])
        elif line.startswith("tickd_runs_total"):
            runs += float(line.rsplit(" ", 1)[1])
    return buckets, runs


def quantile_bound(before, after, q):
    """The upper bound of the bucket holding quantile q of the observations between samples."""
    def key(le):
        return float("inf") if le == "+Inf" else float(le)
    les = sorted(after, key=key)
    total = after[les[-1]] - before.get(les[-1], 0.0)
    if total <= 0:
        return float("nan")
    for le in les:
        if after[le] - before.get(le, 0.0) >= q * total:
            return key(le) * 1000.0
    return float("inf")


def plot(csv_path, png_path):
    sys.path.insert(0, os.path.join(ROOT, "target", "pydeps"))
    try:
        import matplotlib
    except ImportError:
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--target",
                        os.path.join(ROOT, "target", "pydeps"), "matplotlib"], check=True)
        import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = list(csv.DictReader(open(csv_path)))
    t = [float(r["seconds"]) / 60 for r in rows]
    fig, axes = plt.subplots(4, 1, figsize=(9, 10), sharex=True)
    axes[0].plot(t, [float(r["rss_mb"]) for r in rows]); axes[0].set_ylabel("RSS MB")
    axes[1].plot(t, [int(r["fds"]) for r in rows], label="fds")
    axes[1].plot(t, [int(r["threads"]) for r in rows], label="threads"); axes[1].legend()
    axes[2].plot(t, [float(r["runs_per_s"]) for r in rows]); axes[2].set_ylabel("runs/s")
    axes[3].plot(t, [float(r["lateness_p50_ms_le"]) for r in rows], label="p50 <=")
    axes[3].plot(t, [float(r["lateness_p99_ms_le"]) for r in rows], label="p99 <=")
    axes[3].set_yscale("log"); axes[3].set_ylabel("lateness ms"); axes[3].legend()
    axes[3].set_xlabel("minutes")
    fig.suptitle("tickd soak: 1000 jobs x 5 Hz + 10 child jobs x 1 Hz")
    fig.tight_layout()
    fig.savefig(png_path)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=60)
    parser.add_argument("--out", default=os.path.join(ROOT, "target", "soak"))
    parser.add_argument("--interval", type=float, default=10)
    parser.add_argument("--children", type=int, default=10, help="child-process jobs at 1 Hz")
    parser.add_argument("--pause-at", type=float, default=None,
                        help="minute at which to SIGSTOP the daemon")
    parser.add_argument("--pause-for", type=float, default=90, help="seconds stopped")
    args = parser.parse_args()
    pause_summary = None
    os.makedirs(args.out, exist_ok=True)
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    binary = os.path.join(ROOT, "target", "release", "tickd")
    directory = tempfile.mkdtemp()
    port = free_port()
    config = jobs_file(directory, port, args.children)
    env = dict(os.environ, TICKD_LOG="warn")
    daemon = subprocess.Popen([binary, "run", config], cwd=directory, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    csv_path = os.path.join(args.out, "soak.csv")
    start = time.time()
    try:
        time.sleep(2)
        before, runs_before = metrics(port)
        sampled = time.time()
        with open(csv_path, "w", newline="") as f:
            out = csv.writer(f)
            out.writerow(["seconds", "rss_mb", "fds", "threads", "runs_total", "runs_per_s",
                          "lateness_p50_ms_le", "lateness_p99_ms_le"])
            paused = False
            while time.time() - start < args.minutes * 60:
                time.sleep(args.interval)
                if (args.pause_at is not None and not paused
                        and time.time() - start >= args.pause_at * 60):
                    paused = True
                    _, runs_at_stop = metrics(port)
                    daemon.send_signal(signal.SIGSTOP)
                    time.sleep(args.pause_for)
                    daemon.send_signal(signal.SIGCONT)
                    time.sleep(1.0)
                    _, runs_after = metrics(port)
                    pause_summary = (
                        f"SIGSTOP for {args.pause_for:g} s at minute {args.pause_at:g} "
                        f"(fires covered by the stop: about {int(args.pause_for * 5 * 1000)} "
                        f"in-process + {int(args.pause_for * args.children)} child); "
                        f"runs started in the first second after SIGCONT: "
                        f"{int(runs_after - runs_at_stop)}\n")
                    print(pause_summary, end="")
                rss_kb, fds, threads = proc(daemon.pid)
                after, runs = metrics(port)
                now = time.time()
                out.writerow([round(now - start), round(rss_kb / 1024, 2), fds, threads,
                              int(runs), round((runs - runs_before) / (now - sampled), 1),
                              quantile_bound(before, after, 0.5),
                              quantile_bound(before, after, 0.99)])
                f.flush()
                before, runs_before, sampled = after, runs, now
    finally:
        daemon.send_signal(signal.SIGTERM)
        code = daemon.wait(timeout=60)
    print(f"tickd exited {code}; samples in {csv_path}")
    if pause_summary:
        with open(os.path.join(args.out, "pause.txt"), "w") as f:
            f.write(pause_summary)
    png = os.path.join(args.out, "soak.png")
    plot(csv_path, png)
    print(f"plot in {png}")


if __name__ == "__main__":
    main()
