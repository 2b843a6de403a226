//! `loadgen report`: reads the JSON lines of many runs (several servers, several repetitions of
//! each case), prints a side-by-side table of medians with min–max, checks targets, writes the
//! raw runs and the summary to one JSON file and draws the ramp plot.

use std::collections::BTreeMap;
use std::fs;

use clap::Args;
use serde_json::{Value, json};

use crate::plot::{Series, ramp_svg};
use crate::stats::spread;

#[derive(Args)]
pub struct ReportArgs {
    /// File of loadgen JSON lines, one run per line.
    #[arg(long)]
    runs: String,
    /// JSON object describing the machine, the date and the versions (shown in the plot's caption
    /// and copied into the results).
    #[arg(long)]
    meta: Option<String>,
    /// Where to write every run and the summary as one JSON document.
    #[arg(long)]
    out: Option<String>,
    /// Where to draw the ramp plot (SVG).
    #[arg(long)]
    svg: Option<String>,
    /// The case whose ramps the plot shows.
    #[arg(long, default_value = "fanout-ramp")]
    plot_case: String,
    /// The server the ratio column compares with the best of the others (default: the first
    /// label in the runs file).
    #[arg(long)]
    reference: Option<String>,
    /// Another configuration of the reference server (repeatable): shown in the table, never
    /// counted among the others the reference is compared with.
    #[arg(long = "variant")]
    variants: Vec<String>,
    /// A target to check, `CASE:METRIC:ratio<=X` (reference median over the best other server's
    /// median) or `CASE:METRIC:value<=X` (reference median); `>=` works too. Repeatable.
    #[arg(long = "target")]
    targets: Vec<String>,
}

#[derive(Clone, Copy, PartialEq)]
enum Better {
    Lower,
    Higher,
}

struct Metric {
    key: &'static str,
    title: &'static str,
    pointer: &'static str,
    better: Better,
    /// Shown as a percentage of one core.
    percent: bool,
    digits: usize,
    /// Whether the ratio column and the targets apply (not to the load generator's own figures,
    /// the noise, or what every server is offered alike).
    compare: bool,
}

const fn metric(
    key: &'static str,
    title: &'static str,
    pointer: &'static str,
    better: Better,
    digits: usize,
) -> Metric {
    Metric { key, title, pointer, better, percent: false, digits, compare: true }
}

/// A figure shown for context only: no ratio.
const fn info(key: &'static str, title: &'static str, pointer: &'static str, digits: usize) -> Metric {
    Metric { key, title, pointer, better: Better::Lower, percent: false, digits, compare: false }
}

const fn share(key: &'static str, title: &'static str, pointer: &'static str) -> Metric {
    Metric { key, title, pointer, better: Better::Lower, percent: true, digits: 0, compare: false }
}

const FIXED: &[Metric] = &[
    metric(
        "server_cpu_us_per_delivery",
        "server CPU us per delivery",
        "/result/server_cpu_us_per_delivery",
        Better::Lower,
        3,
    ),
    info("deliveries_per_sec", "delivered messages/s", "/result/deliveries_per_sec", 0),
    metric("p50_ms", "latency p50, ms", "/result/latency_ms/p50", Better::Lower, 2),
    metric("p99_ms", "latency p99, ms", "/result/latency_ms/p99", Better::Lower, 2),
    metric("p999_ms", "latency p99.9, ms", "/result/latency_ms/p999", Better::Lower, 2),
    info("lost", "lost deliveries", "/result/lost", 0),
    Metric {
        compare: true,
        ..share("server_cpu_share", "server CPU (one core = 100%)", "/result/server_cpu_share")
    },
    share("loadgen_cpu_share", "loadgen CPU (one core = 100%)", "/result/loadgen_cpu_share"),
    info(
        "loadgen_deliveries_per_read",
        "loadgen deliveries per read",
        "/result/loadgen_deliveries_per_read",
        1,
    ),
    info(
        "loadgen_cpu_per_delivery_ns",
        "loadgen CPU ns per delivery",
        "/result/loadgen_cpu_per_delivery_ns",
        0,
    ),
    share("other_cpu_share", "other processes' CPU (noise)", "/result/other_cpu_share"),
    // A cluster's runs (receivers spread over two nodes sharing a Redis): the first node's cost
    // is the server CPU per delivery above (per delivery of its own members); these are the
    // second node's and Redis's.
    info(
        "node_b_cpu_us_per_delivery",
        "2nd node CPU us per delivery",
        "/result/nodes/1/cpu_us_per_delivery",
        3,
    ),
    share("node_b_cpu_share", "2nd node CPU", "/result/nodes/1/cpu_share"),
    info(
        "redis_cpu_us_per_message",
        "Redis CPU us per message",
        "/result/others/redis/cpu_us_per_message",
        1,
    ),
    share("redis_cpu_share", "Redis CPU", "/result/others/redis/cpu_share"),
];

const RAMP: &[Metric] = &[
    metric(
        "max_sustained_deliveries_per_sec",
        "highest passing deliveries/s",
        "/max_sustained_deliveries_per_sec",
        Better::Higher,
        0,
    ),
    metric("max_pass_rate", "highest passing rate, msg/s", "/max_pass_rate", Better::Higher, 0),
    metric("first_fail_rate", "lowest failing rate, msg/s", "/first_fail_rate", Better::Higher, 0),
    metric(
        "max_pass_server_cpu_us_per_delivery",
        "server CPU us/delivery there",
        "/max_pass_server_cpu_us_per_delivery",
        Better::Lower,
        3,
    ),
    share("max_pass_loadgen_cpu_share", "loadgen CPU there", "/max_pass_loadgen_cpu_share"),
    info(
        "max_pass_loadgen_cpu_per_delivery_ns",
        "loadgen CPU ns/delivery there",
        "/max_pass_loadgen_cpu_per_delivery_ns",
        0,
    ),
    share("loadgen_max_cpu_share", "loadgen CPU, busiest step", "/loadgen_max_cpu_share"),
    share("max_other_cpu_share", "other processes' CPU, noisiest step", "/max_other_cpu_share"),
    info(
        "max_pass_node_b_cpu_us_per_delivery",
        "2nd node CPU us/delivery there",
        "/max_pass_nodes/1/cpu_us_per_delivery",
        3,
    ),
    info(
        "max_pass_redis_cpu_us_per_message",
        "Redis CPU us/message there",
        "/max_pass_others/redis/cpu_us_per_message",
        1,
    ),
    share("max_pass_redis_cpu_share", "Redis CPU there", "/max_pass_others/redis/cpu_share"),
];

const IDLE: &[Metric] = &[
    metric("connections_per_sec", "connections/s", "/result/connections_per_sec", Better::Higher, 0),
    metric(
        "welcome_p50_ms",
        "connect-to-welcome p50, ms",
        "/result/welcome_latency_ms/p50",
        Better::Lower,
        2,
    ),
    metric(
        "welcome_p99_ms",
        "connect-to-welcome p99, ms",
        "/result/welcome_latency_ms/p99",
        Better::Lower,
        2,
    ),
    metric(
        "rss_per_connection_bytes",
        "server RSS per connection, bytes",
        "/result/server_rss_per_connection_bytes",
        Better::Lower,
        0,
    ),
    metric(
        "server_cpu_us_per_connection",
        "server CPU us per connection",
        "/result/server_cpu_us_per_connection",
        Better::Lower,
        1,
    ),
    info("failed", "failed connections", "/result/failed", 0),
    share("loadgen_cpu_share", "loadgen CPU (one core = 100%)", "/result/loadgen_cpu_share"),
    share("other_cpu_share", "other processes' CPU (noise)", "/result/other_cpu_share"),
];

fn metrics_for(run: &Value) -> &'static [Metric] {
    match (run["scenario"].as_str(), run["mode"].as_str()) {
        (Some("idle"), _) => IDLE,
        (_, Some("ramp")) => RAMP,
        _ => FIXED,
    }
}

/// Median, min, max of one metric for one server in one case.
type Cell = Option<(f64, f64, f64, usize)>;

pub fn run(args: &ReportArgs) -> Result<(), String> {
    let text =
        fs::read_to_string(&args.runs).map_err(|error| format!("cannot read {}: {error}", args.runs))?;
    let mut runs: Vec<Value> = text
        .lines()
        .filter(|line| line.trim_start().starts_with('{'))
        .map(|line| {
            serde_json::from_str(line).map_err(|error| format!("bad JSON line in {}: {error}", args.runs))
        })
        .collect::<Result<_, _>>()?;
    if runs.is_empty() {
        return Err(format!("{} holds no runs", args.runs));
    }
    for run in &mut runs {
        derive(run);
    }
    let meta: Value = match &args.meta {
        Some(path) => serde_json::from_str(
            &fs::read_to_string(path).map_err(|error| format!("cannot read {path}: {error}"))?,
        )
        .map_err(|error| format!("bad JSON in {path}: {error}"))?,
        None => json!({}),
    };
    let mut labels: Vec<String> = Vec::new();
    let mut cases: Vec<String> = Vec::new();
    for run in &runs {
        let label = run["label"].as_str().unwrap_or("?").to_owned();
        let case = run["case"].as_str().unwrap_or("?").to_owned();
        if !labels.contains(&label) {
            labels.push(label);
        }
        if !cases.contains(&case) {
            cases.push(case);
        }
    }
    let reference = args.reference.clone().unwrap_or_else(|| labels[0].clone());

    let mut summary = Vec::new();
    let mut ratios: BTreeMap<(String, String), (f64, f64, Better)> = BTreeMap::new();
    // Every median, for targets that compare two given servers.
    let mut medians: BTreeMap<(String, String, String), f64> = BTreeMap::new();
    let width = 24;
    println!();
    print!("{:<36}", "case / metric (median, min-max)");
    for label in &labels {
        print!(" {label:>width$}");
    }
    println!(" {:>12}", format!("{reference}/best"));
    for case in &cases {
        let case_runs: Vec<&Value> = runs.iter().filter(|run| run["case"].as_str() == Some(case)).collect();
        let describe = describe_case(case_runs[0]);
        println!("{case}: {describe}");
        for metric in metrics_for(case_runs[0]) {
            let cells: Vec<Cell> = labels
                .iter()
                .map(|label| {
                    let values: Vec<f64> = case_runs
                        .iter()
                        .filter(|run| run["label"].as_str() == Some(label))
                        .filter_map(|run| run.pointer(metric.pointer).and_then(Value::as_f64))
                        .collect();
                    spread(&values).map(|(median, min, max)| (median, min, max, values.len()))
                })
                .collect();
            if cells.iter().all(Option::is_none) {
                continue;
            }
            for (label, cell) in labels.iter().zip(&cells) {
                if let Some((median, ..)) = cell {
                    medians.insert((case.clone(), metric.key.to_owned(), label.clone()), *median);
                }
            }
            print!("  {:<34}", metric.title);
            for cell in &cells {
                print!(" {:>width$}", format_cell(cell, metric));
            }
            let ratio = ratio_of(&labels, &cells, &reference, &args.variants, metric.better)
                .filter(|_| metric.compare);
            if let Some((reference_median, best_other)) = ratio {
                if best_other != 0.0 {
                    print!(" {:>12}", format!("{:.2}x", reference_median / best_other));
                }
                ratios.insert(
                    (case.clone(), metric.key.to_owned()),
                    (reference_median, best_other, metric.better),
                );
            }
            println!();
            let servers: serde_json::Map<String, Value> = labels
                .iter()
                .zip(&cells)
                .filter_map(|(label, cell)| {
                    cell.map(|(median, min, max, n)| {
                        (label.clone(), json!({"median": median, "min": min, "max": max, "runs": n}))
                    })
                })
                .collect();
            summary.push(json!({
                "case": case,
                "metric": metric.key,
                "title": metric.title,
                "better": if metric.better == Better::Lower { "lower" } else { "higher" },
                "servers": servers,
                "reference_over_best_other": ratio.filter(|r| r.1 != 0.0).map(|(a, b)| a / b),
            }));
        }
    }

    let mut checks = Vec::new();
    if !args.targets.is_empty() {
        println!();
        println!("targets ({reference} against the best other server, medians):");
    }
    for target in &args.targets {
        let check = check_target(target, &ratios, &medians)?;
        println!("  {}", check["text"].as_str().unwrap_or_default());
        checks.push(check);
    }

    if let Some(svg) = &args.svg {
        let series: Vec<Series> = labels
            .iter()
            .map(|label| Series {
                label: label.clone(),
                runs: runs
                    .iter()
                    .filter(|run| {
                        run["case"].as_str() == Some(&args.plot_case) && run["label"].as_str() == Some(label)
                    })
                    .map(|run| {
                        run["steps"]
                            .as_array()
                            .map(|steps| {
                                steps
                                    .iter()
                                    .filter_map(|step| {
                                        let x = step["deliveries_per_sec"].as_f64()?;
                                        let y = step.pointer("/latency_ms/p99")?.as_f64()?;
                                        let pass = step["pass"].as_bool().unwrap_or(true);
                                        (x > 0.0 && y > 0.0).then_some((x, y, pass))
                                    })
                                    .collect()
                            })
                            .unwrap_or_default()
                    })
                    .filter(|run: &Vec<(f64, f64, bool)>| !run.is_empty())
                    .collect(),
            })
            .filter(|series| !series.runs.is_empty())
            .collect();
        let first = runs.iter().find(|run| run["case"].as_str() == Some(&args.plot_case));
        let bound =
            first.and_then(|run| run.pointer("/params/p99_bound_ms")).and_then(Value::as_f64).unwrap_or(50.0);
        let title = match first {
            Some(run) => format!(
                "Fanout ramp: p99 latency against deliveries/s ({}), server on one core",
                describe_case(run)
            ),
            None => "Fanout ramp".to_owned(),
        };
        ramp_svg(svg, &series, bound, &title, &caption(&meta))?;
        println!();
        println!("plot: {svg}");
    }

    if let Some(out) = &args.out {
        let document = json!({"meta": meta, "summary": summary, "targets": checks, "runs": runs});
        let text = serde_json::to_string_pretty(&document).expect("JSON values serialize");
        fs::write(out, text + "\n").map_err(|error| format!("cannot write {out}: {error}"))?;
        println!("results: {out}");
    }
    Ok(())
}

/// Fills in figures that older runs did not record but their steps hold.
fn derive(run: &mut Value) {
    if run["mode"] == "ramp" && run.get("max_pass_loadgen_cpu_share").is_none() {
        let best = run["max_pass_rate"].as_f64();
        let share = run["steps"].as_array().and_then(|steps| {
            steps
                .iter()
                .find(|step| step["pass"] == true && step["rate"].as_f64() == best)
                .and_then(|step| step["loadgen_cpu_share"].as_f64())
        });
        run["max_pass_loadgen_cpu_share"] = json!(share);
    }
}

fn describe_case(run: &Value) -> String {
    let p = &run["params"];
    match run["scenario"].as_str().unwrap_or("?") {
        "fanout" => {
            let receivers = p["receivers"].as_u64().unwrap_or(0);
            let publishers = p["publishers"].as_u64().unwrap_or(0);
            if run["mode"] == "ramp" {
                format!("{receivers} receivers, {publishers} publisher(s), rate stepped up")
            } else {
                format!(
                    "{receivers} receivers, {publishers} publisher(s), {} msg/s",
                    p["rate"].as_f64().unwrap_or(0.0)
                )
            }
        }
        "chat" => {
            let clients = p["clients"].as_u64().unwrap_or(0);
            if run["mode"] == "ramp" {
                format!("{clients} clients all-to-all, rate stepped up")
            } else {
                format!("{clients} clients all-to-all, {} msg/s", p["rate"].as_f64().unwrap_or(0.0))
            }
        }
        "idle" => format!(
            "{} connections in rooms of {}, {} handshakes at once",
            p["connections"].as_u64().unwrap_or(0),
            p["room_size"].as_u64().unwrap_or(0),
            p["concurrency"].as_u64().unwrap_or(0)
        ),
        other => other.to_owned(),
    }
}

fn format_cell(cell: &Cell, metric: &Metric) -> String {
    let Some((median, min, max, n)) = *cell else { return "-".to_owned() };
    let (scale, suffix) = if metric.percent { (100.0, "%") } else { (1.0, "") };
    let d = metric.digits;
    if n > 1 {
        format!("{:.d$}{suffix} ({:.d$}-{:.d$})", median * scale, min * scale, max * scale)
    } else {
        format!("{:.d$}{suffix}", median * scale)
    }
}

/// The reference server's median and the best median among the others (its variants aside).
fn ratio_of(
    labels: &[String],
    cells: &[Cell],
    reference: &str,
    variants: &[String],
    better: Better,
) -> Option<(f64, f64)> {
    let reference_median =
        labels.iter().zip(cells).find(|(label, _)| *label == reference).and_then(|(_, cell)| *cell)?.0;
    let others = labels
        .iter()
        .zip(cells)
        .filter(|(label, _)| *label != reference && !variants.contains(label))
        .filter_map(|(_, cell)| cell.map(|c| c.0));
    let best = match better {
        Better::Lower => others.fold(None, |best: Option<f64>, v| Some(best.map_or(v, |b| b.min(v)))),
        Better::Higher => others.fold(None, |best: Option<f64>, v| Some(best.map_or(v, |b| b.max(v)))),
    }?;
    Some((reference_median, best))
}

fn check_target(
    target: &str,
    ratios: &BTreeMap<(String, String), (f64, f64, Better)>,
    medians: &BTreeMap<(String, String, String), f64>,
) -> Result<Value, String> {
    let bad = || {
        format!(
            "target `{target}`: expected CASE:METRIC:ratio<=X, CASE:METRIC:value>=X or CASE:METRIC:A/B<=X"
        )
    };
    let mut parts = target.splitn(3, ':');
    let (case, metric, rule) =
        (parts.next().ok_or_else(bad)?, parts.next().ok_or_else(bad)?, parts.next().ok_or_else(bad)?);
    let (kind, op, bound) = if let Some((kind, bound)) = rule.split_once("<=") {
        (kind, "<=", bound)
    } else if let Some((kind, bound)) = rule.split_once(">=") {
        (kind, ">=", bound)
    } else {
        return Err(bad());
    };
    let bound: f64 = bound.parse().map_err(|_| bad())?;
    if let Some((first, second)) = kind.split_once('/') {
        // Two named servers' medians, e.g. a cluster's node against the standalone server.
        let median =
            |label: &str| medians.get(&(case.to_owned(), metric.to_owned(), label.to_owned())).copied();
        let (Some(a), Some(b)) = (median(first), median(second)) else {
            return Ok(json!({"target": target, "met": Value::Null, "text": format!("{target}: no data")}));
        };
        let value = a / b;
        let met = if op == "<=" { value <= bound } else { value >= bound };
        let text = format!(
            "{:<60} {:<32} {}",
            format!("{case} {metric} {kind} {op} {bound}"),
            format!("{a:.4} / {b:.4} = {value:.2}"),
            if met { "met" } else { "MISSED" }
        );
        return Ok(json!({"target": target, "value": value, "met": met, "text": text}));
    }
    let Some(&(reference, best_other, _)) = ratios.get(&(case.to_owned(), metric.to_owned())) else {
        return Ok(json!({"target": target, "met": Value::Null, "text": format!("{target}: no data")}));
    };
    let value = match kind {
        "ratio" if best_other != 0.0 => reference / best_other,
        "ratio" => {
            return Ok(
                json!({"target": target, "met": Value::Null, "text": format!("{target}: the others' median is 0")}),
            );
        }
        "value" => reference,
        _ => return Err(bad()),
    };
    let met = if op == "<=" { value <= bound } else { value >= bound };
    let detail = if kind == "ratio" {
        format!("{reference:.4} / {best_other:.4} = {value:.2}")
    } else {
        format!("{value:.1}")
    };
    let text = format!(
        "{:<60} {detail:<32} {}",
        format!("{case} {metric} {kind} {op} {bound}"),
        if met { "met" } else { "MISSED" }
    );
    Ok(json!({"target": target, "value": value, "met": met, "text": text}))
}

/// The plot's caption: machine, date and versions from the meta object.
fn caption(meta: &Value) -> Vec<String> {
    let get = |key: &str| meta[key].as_str().unwrap_or("?").to_owned();
    let mut lines = vec![format!(
        "{} cores ({}), {}; kernel {}; {}",
        meta["nproc"].as_u64().map_or("?".to_owned(), |n| n.to_string()),
        get("cpu_model"),
        get("date"),
        get("kernel"),
        get("rustc"),
    )];
    if let Some(versions) = meta["versions"].as_object() {
        let list: Vec<String> = versions
            .iter()
            .map(|(name, version)| format!("{name} {}", version.as_str().unwrap_or("?")))
            .collect();
        lines.push(list.join(", "));
    }
    if let Some(setup) = meta["setup"].as_str() {
        lines.push(setup.to_owned());
    }
    lines.iter().flat_map(|line| wrap(line, 170)).collect()
}

/// Splits a line at spaces into pieces of at most `width` characters (longer words stay whole).
fn wrap(line: &str, width: usize) -> Vec<String> {
    let mut lines = vec![String::new()];
    for word in line.split(' ') {
        let current = lines.last_mut().expect("never empty");
        if !current.is_empty() && current.chars().count() + 1 + word.chars().count() > width {
            lines.push(word.to_owned());
        } else {
            if !current.is_empty() {
                current.push(' ');
            }
            current.push_str(word);
        }
    }
    lines
}
