"""The side-by-side table of scripts/bench-e2e.sh.
Usage: bench_e2e_table.py OUT PACED_FACTOR THROTTLE_MS LATENCY_ROWS"""
import json
import os
import sys

out, paced_factor, throttle_ms, latency_rows = sys.argv[1:]
SHAPES = [s for s in ("mixed", "frames") if os.path.exists(f"{out}/copy-{s}-0.json") or os.path.exists(f"{out}/latency-{s}.json")]


def load(name):
    path = f"{out}/{name}.json"
    return json.load(open(path)) if os.path.exists(path) else None


def ceilings(shape):
    found, n = [], 0
    while os.path.exists(f"{out}/copy-{shape}-{n}.json"):
        found.append(load(f"copy-{shape}-{n}")["rows_per_second"])
        n += 1
    return found


def row(label, cells):
    print(f"| {label} | " + " | ".join(cells) + " |")


def machine(shape):
    """Section 2's CPU steal while the client sent (/proc/stat, as for section 1) and the mean
    idle of its vmstat seconds under load (idle < 80%, which leaves out the pauses before and
    after): on a shared VM, steal and little idle explain a slow run."""
    rows = load(f"latency-{shape}-rows") or {}
    path = f"{out}/latency-{shape}-vmstat.txt"
    idle = [int(f[14]) for f in (line.split() for line in open(path)) if len(f) >= 17 and f[0].isdigit()
            and int(f[14]) < 80] if os.path.exists(path) else []
    text = ""
    if rows.get("steal_percent_while_sending") is not None:
        text += f"; CPU steal {rows['steal_percent_while_sending']:.0f}%"
    if idle:
        text += f"; idle {sum(idle) / len(idle):.0f}%"
    return text


def commit_p99(report):
    db = (report or {}).get("database") or {}
    return db.get("receive_to_commit_ms", {}).get("p99")


def median(values):
    values = sorted(values)
    middle = len(values) // 2
    return values[middle] if len(values) % 2 else (values[middle - 1] + values[middle]) / 2


def ceiling_costs(shape):
    """(CPU s per million rows of the whole machine, of PostgreSQL) of each ceiling run."""
    costs, n = [], 0
    while (c := load(f"copy-{shape}-{n}")) and "postgres_cpu_seconds" in c:
        costs.append(((c["client_cpu_seconds"] + c["postgres_cpu_seconds"]) / c["rows"] * 1e6,
                      c["postgres_cpu_seconds"] / c["rows"] * 1e6))
        n += 1
    return costs


def paced(shape, protocol):
    """The paced runs of one shape and protocol, each judged against the ceilings around it."""
    c, costs, runs, n = ceilings(shape), ceiling_costs(shape), [], 1
    while (report := load(f"paced-{shape}-{protocol}-{n}")) and (rows := load(f"paced-{shape}-{protocol}-{n}-rows")):
        n += 1
        before, after = int(rows["ceiling_before"]), int(rows["ceiling_after"])
        if after >= len(c):
            continue
        rate = rows["rows_per_second_while_sending"]
        run = {"rate": rate, "ratio": rate / ((c[before] + c[after]) / 2),
               "kept_up": rows["backlog_seconds"] < 1.0, "backlog_seconds": rows["backlog_seconds"],
               "p99": commit_p99(report) or 0.0}
        if "postgres_cpu_seconds_while_sending" in rows and after < len(costs):
            committed = max(rows["rows_committed_while_sending"], 1)
            cost = {k: rows[f"{k}_cpu_seconds_while_sending"] / committed * 1e6 for k in ("postgres", "gateway", "client")}
            cost["total"] = sum(cost.values())
            cost["ratio"] = (costs[before][0] + costs[after][0]) / 2 / cost["total"]
            run["cost"] = cost
        run["steal"] = rows.get("steal_percent_while_sending")
        runs.append(run)
    return runs


def steal_row(shape):
    """CPU steal (%) of each ceiling run, then of each paced run while it sent."""
    ceiling, n = [], 0
    while (c := load(f"copy-{shape}-{n}")) and "steal_percent" in c:
        ceiling.append(c["steal_percent"])
        n += 1
    if not ceiling:
        return "-"
    text = "ceilings " + ", ".join(f"{s:.0f}" for s in ceiling)
    for protocol in ("grpc", "http"):
        steals = [r["steal"] for r in paced(shape, protocol) if r.get("steal") is not None]
        if steals:
            text += f"; paced over {protocol} " + ", ".join(f"{s:.0f}" for s in steals)
    return text


tsdb = open(f"{out}/timescaledb.txt").read().strip() if os.path.exists(f"{out}/timescaledb.txt") else ""
if SHAPES:
    print(f"\nRows into PostgreSQL ({tsdb}); shapes: mixed = 2.6 rows per frame, 100 frames per request, "
          f"16 connections; frames = 4 rows per frame, 128 per request, 8 connections\n")
    print("| measurement | " + " | ".join(SHAPES) + " |")
    print("|---|" + "---:|" * len(SHAPES))
    row("raw binary COPY ceiling (rows/s; each measurement of the run)",
        [", ".join(f"{c:,.0f}" for c in ceilings(s)) or "-" for s in SHAPES])
    for protocol in ("grpc", "http"):
        cells = []
        for shape in SHAPES:
            runs = paced(shape, protocol)
            if not runs:
                cells.append("-")
                continue
            ratios = [r["ratio"] for r in runs]
            kept = sum(r["kept_up"] for r in runs)
            cells.append(f"median **{median(ratios):.2f}x** the ceilings around each run (rounds: "
                         + ", ".join(f"{r['rate']:,.0f} = {r['ratio']:.2f}x" for r in runs)
                         + f"); kept up in **{kept} of {len(runs)}** (backlog at the end: "
                         + ", ".join(f"{r['backlog_seconds']:.1f} s" for r in runs)
                         + "); commit p99 " + ", ".join(f"{r['p99']:,.0f}" for r in runs) + " ms")
        row(f"gateway, log on, OTLP/{protocol}, paced at {paced_factor} x the ceiling before: committed while sending", cells)
    cells = []
    for shape in SHAPES:
        costs = ceiling_costs(shape)
        text = "ceiling " + ", ".join(f"{total:.1f} (PostgreSQL {pg:.1f})" for total, pg in costs) if costs else "-"
        for protocol in ("grpc", "http"):
            runs = [r for r in paced(shape, protocol) if r.get("cost")]
            if not runs:
                continue
            text += (f"; gateway over {protocol}: " + ", ".join(
                f"{r['cost']['total']:.1f} (PostgreSQL {r['cost']['postgres']:.1f}, gateway {r['cost']['gateway']:.1f}, "
                f"client {r['cost']['client']:.1f})" for r in runs)
                + f"; the ceilings' cost is a median **{median([r['cost']['ratio'] for r in runs]):.2f}x** this")
        cells.append(text)
    row("CPU seconds per million rows, the whole machine (PostgreSQL, and the client; paced runs while "
        "sending, the gateway too)", cells)
    row("CPU steal, % of the VM's CPU time the hypervisor gave to others during each run (a run with "
        "more than its neighbours is not comparable with them)", [steal_row(s) for s in SHAPES])
    mean = {s: sum(ceilings(s)) / max(len(ceilings(s)), 1) for s in SHAPES}
    for name, label in (("closed", "closed loop, no lag bound"), ("throttled", f"closed loop, throttle_lag_ms = {throttle_ms}, clients retry as advised")):
        cells = []
        for shape in SHAPES:
            report, rows = load(f"{name}-{shape}"), load(f"{name}-{shape}-rows")
            if not report:
                cells.append("-")
                continue
            refused = sum(report["refusals"].values())
            cells.append(f"acknowledged {report['items_per_second_acknowledged'] * (2.6 if shape == 'mixed' else 4):,.0f} rows/s, "
                         f"committed while sending {rows['rows_per_second_while_sending']:,.0f} rows/s "
                         f"({rows['rows_per_second_while_sending'] / mean[shape]:.2f}x the mean ceiling); "
                         f"backlog {rows['backlog_rows']:,} rows ({rows['backlog_seconds']:.1f} s); "
                         f"commit p99 {commit_p99(report):,.0f} ms; {refused:,} requests throttled")
        row(f"gateway, log on, OTLP/gRPC, {label}", cells)
    cells = []
    for shape in SHAPES:
        report, rows = load(f"latency-{shape}"), load(f"latency-{shape}-rows")
        if not report:
            cells.append("-")
            continue
        c = report["database"]["receive_to_commit_ms"]
        cells.append(f"achieved {rows['rows_per_second_while_sending']:,.0f} rows/s; commit p50 {c['p50']:.1f}, "
                     f"**p99 {c['p99']:.1f}**, max {c['max']:.0f} ms; ack p99 {report['ack_latency_ms']['p99']:.1f} ms; "
                     f"{report['database']['frame_rows_found']:,}/{report['items_acknowledged']:,} frames found"
                     f"{machine(shape)}")
    row(f"receive-to-commit, paced at {int(latency_rows):,} rows/s, OTLP/gRPC", cells)

if os.path.exists(f"{out}/forwarding.jsonl"):
    runs = [json.loads(line) for line in open(f"{out}/forwarding.jsonl")]
    rotel = os.path.exists(f"{out}/rotel-version.txt") and open(f"{out}/rotel-version.txt").read().strip()
    compression = os.path.exists(f"{out}/forward-compression.txt") and open(f"{out}/forward-compression.txt").read().strip()
    print(f"\nOTLP forwarding to one counting backend, closed loop, log on ({rotel or 'rotel not run'}); "
          "mixed = 4 connections x 100 frames (~110 spans), spans = 8 connections x 512 plain spans; "
          f"compression towards the backend: {compression or 'none'}\n")
    print("| shape, transport | otelgate spans/s | rotel spans/s | ratio | otelgate CPU s / M spans | rotel | ratio | peak RSS otelgate / rotel |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for shape in ("mixed", "spans"):
        for protocol in ("grpc", "http"):
            mine = next((r for r in runs if r["collector"] == "otelgate" and r["shape"] == shape and r["protocol"] == protocol), None)
            theirs = next((r for r in runs if r["collector"] == "rotel" and r["shape"] == shape and r["protocol"] == protocol), None)
            if not mine:
                continue
            t = theirs or {}
            ratio = lambda a, b: f"{a / b:.2f}x" if a and b else "-"
            print(f"| {shape}, {protocol} | {mine['delivered_per_second']:,} | {t.get('delivered_per_second', 0):,} | "
                  f"**{ratio(mine['delivered_per_second'], t.get('delivered_per_second'))}** | "
                  f"{mine['cpu_seconds_per_million_spans']:.2f} | {t.get('cpu_seconds_per_million_spans', 0):.2f} | "
                  f"**{ratio(mine['cpu_seconds_per_million_spans'], t.get('cpu_seconds_per_million_spans'))}** | "
                  f"{mine['peak_rss_mib']} / {t.get('peak_rss_mib', '-')} MiB |")
    lost = [r for r in runs if r["spans_delivered"] < r["spans_acknowledged"]]
    for r in lost:
        print(f"  {r['collector']} {r['shape']} {r['protocol']}: delivered {r['spans_delivered']:,} of {r['spans_acknowledged']:,} acknowledged spans")

if os.path.exists(f"{out}/overload.json"):
    o = load("overload")
    rss = open(f"{out}/overload-rss.txt").read().split()
    print(f"\nOverload with a 64 MiB budget: offered {o['items_per_second_offered']:,.0f} frames/s, acknowledged "
          f"{o['items_per_second_acknowledged']:,.0f}/s, refusals {o['refusals']}, gateway {' '.join(rss)}")
    series = [tuple(map(int, line.split())) for line in open(f"{out}/overload-rss-series.txt") if len(line.split()) == 2]
    if len(series) >= 4:
        half = series[-1][0] / 2
        first = max(kb for t, kb in series if t <= half)
        second = max(kb for t, kb in series if t > half)
        print(f"  RSS every 5 s ({len(series)} samples): highest in the first half {first / 1024:.0f} MiB, "
              f"in the second half {second / 1024:.0f} MiB, at the end {series[-1][1] / 1024:.0f} MiB")
