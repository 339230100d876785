"""Plots a soak run (scripts/soak.sh): gateway RSS, acknowledgement latency and
receive-to-commit latency over time, with the offered rate. Usage: soak_plot.py OUT_DIR"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

out = sys.argv[1]
minutes = [json.loads(line) for line in open(f"{out}/minutes.jsonl")]
rss = [tuple(map(int, line.split())) for line in open(f"{out}/rss.txt") if len(line.split()) == 2]
totals = json.load(open(f"{out}/totals.json"))

fig, axes = plt.subplots(4, 1, figsize=(11, 11), sharex=True)
t = [m["t"] / 60 + 0.5 for m in minutes]
# Latency of minutes in which nothing was acknowledged is not a number, not zero.
nan = float("nan")
def latency(key):
    return [m[key] if m["acknowledged"] else nan for m in minutes]

ax = axes[0]
ax.step(t, [m["rate"] for m in minutes], where="mid", label="offered frames/s", color="grey")
ax.plot(t, [m["acknowledged"] / 60 for m in minutes], ".", label="acknowledged frames/s", color="tab:blue")
ax.set_ylabel("frames/s")
ax.legend(loc="upper right")
ax.set_title(
    f"otelgate soak: {totals['frames_acknowledged']:,} frames acknowledged, "
    f"{totals['frame_rows']:,} frame rows ({totals['distinct_frames']:,} distinct),\n"
    f"{totals['detection_rows']:,} detection rows"
)

ax = axes[1]
ax.plot([s / 60 for s, _ in rss], [kb / 1024 for _, kb in rss], color="tab:green")
ax.set_ylabel("gateway RSS (MiB)")
ax.set_ylim(bottom=0)

ax = axes[2]
ax.plot(t, latency("ack_p50"), label="p50")
ax.plot(t, latency("ack_p99"), label="p99")
ax.set_ylabel("ack latency (ms)")
ax.set_ylim(bottom=0)
ax.legend(loc="upper right")

ax = axes[3]
ax.plot(t, latency("commit_p50"), label="p50")
ax.plot(t, latency("commit_p99"), label="p99")
ax.axhline(50, color="red", linestyle=":", label="50 ms")
ax.set_ylabel("receive-to-commit (ms)")
ax.set_ylim(bottom=0)
ax.legend(loc="upper right")
ax.set_xlabel("minutes since start (per-minute percentiles)")

# Other work on the same machine while the soak ran, if noted: "<from minute> <to minute> <label>"
# per line in busy.txt, shaded on every panel.
try:
    busy = [line.split(maxsplit=2) for line in open(f"{out}/busy.txt") if line.strip()]
except FileNotFoundError:
    busy = []
start_of = {m["minute"]: m["t"] / 60 for m in minutes}
colors = ["orange", "red", "purple", "green"]
seen = {}
for start, end, label in busy:
    label = label.strip()
    first = label not in seen
    color = seen.setdefault(label, colors[len(seen) % len(colors)])
    x0 = start_of.get(int(start), float(start))
    x1 = start_of.get(int(end), float(end))
    for index, ax in enumerate(axes):
        ax.axvspan(x0, x1, color=color, alpha=0.15, label=label if index == 0 and first else None)
if busy:
    axes[0].legend(loc="upper right")

fig.tight_layout()
fig.savefig(f"{out}/soak.png", dpi=90)
print(f"wrote {out}/soak.png")
