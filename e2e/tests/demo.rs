//! `trellisctl demo --once`: the README's main command runs its whole
//! walkthrough (weight change, leader kill, cut-over) with no failed
//! request, and leaves nothing running.

use std::net::TcpListener;
use std::process::Command;

use anyhow::Result;
use trellis_e2e::harness::bin;

/// The `time v1 v2 success ...` rows: (v1 %, v2 %, success %).
fn rows(out: &str) -> Vec<(f64, f64, f64)> {
    out.lines()
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            if cols.len() < 4 || !cols[0].ends_with('s') || !cols[1].ends_with('%') {
                return None;
            }
            let pct = |s: &str| s.trim_end_matches('%').parse::<f64>().ok();
            Some((pct(cols[1])?, pct(cols[2])?, pct(cols[3])?))
        })
        .collect()
}

#[test]
fn the_demo_walks_through_and_stops_everything() -> Result<()> {
    // The other binaries the demo starts sit beside trellisctl once built.
    bin("trellis-proxy")?;
    let out = Command::new(bin("trellisctl")?)
        .args(["demo", "--once", "--step-seconds", "3"])
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for step in [
        "50% v1 / 50% v2",
        "SIGKILL the leader",
        "restarts",
        "100% v2",
        "stopped",
    ] {
        assert!(stdout.contains(step), "no {step:?} in:\n{stdout}");
    }
    let rows = rows(&stdout);
    assert!(rows.len() >= 12, "{stdout}");
    assert!(
        rows.iter().all(|r| r.2 == 100.0),
        "a request failed:\n{stdout}"
    );
    let first = rows[0];
    assert!(first.0 > 75.0 && first.1 > 0.0, "90/10 at first:\n{stdout}");
    let last = rows[rows.len() - 1];
    assert_eq!(last.1, 100.0, "all to v2 at the end:\n{stdout}");
    for port in [19181, 19182, 19191, 19192] {
        assert!(
            TcpListener::bind(("127.0.0.1", port)).is_ok(),
            "a backend still holds port {port}"
        );
    }
    Ok(())
}
