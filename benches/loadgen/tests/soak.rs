//! The soak in small: a minute of `loadgen soak` against wschat (`../../target/release/wschat`, or
//! `WSCHAT_BIN`) with 2,000 connections, the same churn, chatter, heartbeat and bad actors as the
//! long run, and the same verdict: nothing lost, every bad actor cut off by its rule, RSS flat over
//! the last half, the slab and the timer wheel back to what is alive. The load generator starts
//! the server on port 0 itself, and exits non-zero if any check fails; the JSON it prints is read
//! here too, so a failure names the figure.

use std::process::Command;

use serde_json::Value;

#[test]
fn a_minute_of_soak_loses_nothing_cuts_every_bad_actor_and_leaks_nothing() {
    let server = std::env::var("WSCHAT_BIN")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../../target/release/wschat").to_owned());
    if !std::path::Path::new(&server).exists() {
        eprintln!("skipped: no wschat binary at {server}");
        return;
    }
    let out_dir = std::env::temp_dir().join(format!("wschat-soak-test-{}", std::process::id()));
    let output = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["soak", "--server", &server, "--duration", "50", "--connections", "2000", "--big-room", "200"])
        .args(["--churn-rate", "100", "--slowloris", "50", "--small-rate", "300", "--sample-every", "5"])
        .arg("--out-dir")
        .arg(&out_dir)
        .arg("--quiet")
        .output()
        .expect("run loadgen soak");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let line = String::from_utf8_lossy(&output.stdout);
    let report: Value = serde_json::from_str(line.trim())
        .unwrap_or_else(|error| panic!("no JSON report ({error}); stderr:\n{stderr}"));
    let _ = std::fs::remove_dir_all(&out_dir);

    assert_eq!(report["healthy_lost"], serde_json::json!({}), "{stderr}");
    let deliveries = &report["deliveries"];
    assert!(deliveries["delivered"].as_u64().unwrap() > 10_000, "{stderr}");
    for field in ["lost", "duplicated", "reordered", "mismatched", "wrong_room"] {
        assert_eq!(deliveries[field], 0, "{field}: {stderr}");
    }
    assert_eq!(report["drained"], true, "{stderr}");
    for (kind, tally) in report["bad_actors"].as_object().unwrap() {
        assert!(tally["launched"].as_u64().unwrap() > 0, "{kind}: {stderr}");
        assert_eq!(tally["cut_as_expected"], tally["launched"], "{kind}: {stderr}");
    }
    assert_eq!(report["bad_actors"].as_object().unwrap().len(), 9, "every kind ran: {stderr}");
    assert_eq!(report["rss_kib"]["flatness"]["flat"], true, "{stderr}");
    for end in ["end_live", "end_closed"] {
        assert_eq!(report[end]["settled"], true, "{end}: {stderr}");
    }
    assert_eq!(report["server"]["exit"], 0, "{stderr}");
    assert_eq!(report["passed"], true, "{stderr}");
    assert!(output.status.success(), "{stderr}");
}
