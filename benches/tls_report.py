#!/usr/bin/env python3
"""The table of `TLS=1 benches/compare.sh`: wschat with TLS in its loop, plain wschat behind nginx
terminating TLS, and plain wschat, from the load generator's JSON lines; checks the targets of
issue 15 and writes every run and the summary to one JSON file.

    benches/tls_report.py RUNS.jsonl RUSTLS.json OUT.json "machine description"

For nginx-tls every cost is the sum of both processes (wschat's CPU and memory as --server-pid,
nginx's as --cpu-pid nginx=PID). Medians over the repetitions, min-max beside them.
"""
import json
import statistics
import sys

SERVERS = [
    ("wschat", "plain wschat (ws://)"),
    ("wschat-tls", "wschat, TLS in the loop (wss://)"),
    ("nginx-tls", "nginx terminating TLS + wschat (wss://)"),
]


def load(path):
    with open(path) as lines:
        return [json.loads(line) for line in lines if line.strip()]


def nginx(result, key):
    return (result.get("others") or {}).get("nginx", {}).get(key)


def figures(run):
    """What one run says, by figure name; a proxy's share added to wschat's."""
    result, case = run["result"], run["case"]
    if case == "tls-handshakes":
        cpu = result.get("server_cpu_us_per_connection")
        extra = nginx(result, "cpu_us_per_connection") or 0.0
        total = None if cpu is None else cpu + extra
        return {
            "handshakes_per_sec": result["connections_per_sec"],
            "cpu_us_per_handshake": total,
            "handshakes_per_core_sec": None if not total else 1e6 / total,
            "handshake_p99_ms": result["welcome_latency_ms"]["p99"],
            "handshake_failures": result["failed"],
        }
    if case == "tls-idle-5k":
        rss = result.get("server_rss_per_connection_bytes")
        extra = nginx(result, "rss_per_connection_bytes") or 0.0
        return {"idle_bytes_per_connection": None if rss is None else rss + extra}
    if case in ("fanout-60", "fanout-1000"):
        cpu = result.get("server_cpu_us_per_delivery")
        per_message = nginx(result, "cpu_us_per_message")
        extra = 0.0 if per_message is None else per_message / max(result["recipients"], 1)
        rate = case.split("-")[1]
        return {
            f"cpu_us_per_delivery_{rate}": None if cpu is None else cpu + extra,
            f"nginx_share_us_per_delivery_{rate}": extra if per_message is not None else None,
            f"p99_ms_{rate}": result["latency_ms"]["p99"],
            f"lost_{rate}": result["lost"] + result.get("duplicates", 0) + result.get("gaps", 0),
        }
    return {}


def main():
    runs_path, rustls_path, out_path, machine = sys.argv[1:5]
    runs = load(runs_path)
    rustls = load(rustls_path)[0]
    values = {}
    for run in runs:
        for name, value in figures(run).items():
            if value is not None:
                values.setdefault(run["label"], {}).setdefault(name, []).append(value)
    summary = {
        label: {name: {"median": statistics.median(v), "min": min(v), "max": max(v)} for name, v in named.items()}
        for label, named in values.items()
    }

    def cell(label, name, digits):
        figure = summary.get(label, {}).get(name)
        if figure is None:
            return "-"
        spread = f" ({figure['min']:,.{digits}f}-{figure['max']:,.{digits}f})" if figure["min"] != figure["max"] else ""
        return f"{figure['median']:,.{digits}f}{spread}"

    columns = [
        ("handshakes/s (one client core)", "handshakes_per_sec", 0),
        ("server CPU per handshake, us", "cpu_us_per_handshake", 1),
        ("handshakes/s per server core", "handshakes_per_core_sec", 0),
        ("idle bytes per connection", "idle_bytes_per_connection", 0),
        ("CPU us per delivery, 60 msg/s", "cpu_us_per_delivery_60", 3),
        ("CPU us per delivery, 1,000 msg/s", "cpu_us_per_delivery_1000", 3),
        ("p99 ms, 60 / 1,000 msg/s", None, 1),
    ]
    print(f"\nTLS comparison on {machine}")
    print("| server | " + " | ".join(title for title, _, _ in columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for label, title in SERVERS:
        if label not in summary:
            continue
        cells = []
        for _, name, digits in columns:
            if name is None:
                cells.append(f"{cell(label, 'p99_ms_60', 1)} / {cell(label, 'p99_ms_1000', 1)}")
            else:
                cells.append(cell(label, name, digits))
        print(f"| {title} | " + " | ".join(cells) + " |")
    for rate in ("60", "1000"):
        share = summary.get("nginx-tls", {}).get(f"nginx_share_us_per_delivery_{rate}")
        if share:
            print(f"(nginx's own share at {rate} msg/s: {share['median']:.3f} us per delivery)")
    lost = {label: sum(v for name, vs in named.items() if name.startswith(("lost_", "handshake_failures")) for v in vs)
            for label, named in values.items()}
    print(f"lost, duplicated or out-of-order deliveries and failed handshakes, all runs: {lost}")
    alone = rustls["server_handshakes_per_sec"]
    print(f"rustls alone on this machine (in memory, server side, {rustls['suite']}): {alone:,.0f} handshakes/s per core")

    def median(label, name):
        return summary.get(label, {}).get(name, {}).get("median")

    targets = []
    memory = median("wschat-tls", "idle_bytes_per_connection")
    targets.append(("memory per idle TLS connection <= 8 KiB", memory is not None and memory <= 8192, f"{memory:,.0f} bytes" if memory else "-"))
    for rate in ("60", "1000"):
        ours, theirs = median("wschat-tls", f"cpu_us_per_delivery_{rate}"), median("nginx-tls", f"cpu_us_per_delivery_{rate}")
        met = ours is not None and theirs is not None and ours < theirs
        targets.append((f"CPU per delivery at {rate} msg/s below nginx + wschat", met, f"{ours} vs {theirs} us"))
    per_core = median("wschat-tls", "handshakes_per_core_sec")
    met = per_core is not None and per_core >= alone / 2
    targets.append(("handshakes per core within 2x of rustls alone on this machine", met,
                    f"{per_core:,.0f} vs {alone:,.0f}/s ({per_core / alone:.2f}x)" if per_core else "-"))
    print("targets:")
    for text, met, detail in targets:
        print(f"  [{'met' if met else 'MISSED'}] {text}: {detail}")
    with open(out_path, "w") as out:
        json.dump({"machine": machine, "rustls_alone": rustls, "summary": summary,
                   "targets": [{"target": t, "met": m, "detail": d} for t, m, d in targets], "runs": runs}, out, indent=1)
        out.write("\n")


if __name__ == "__main__":
    main()
