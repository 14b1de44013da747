//! The metrics exposition both admin endpoints serve: OpenMetrics, as
//! `prometheus-client` writes it, when the scraper asks for it (Prometheus
//! does), else the classic Prometheus text format (version 0.0.4) that
//! `curl` users and `promtool check metrics` read.

/// Content type of the OpenMetrics text format.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Content type of the Prometheus text format.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The body and content type for a scraper that sent `accept`, from the
/// OpenMetrics text `openmetrics`.
pub fn negotiate(accept: Option<&str>, openmetrics: String) -> (&'static str, String) {
    if accept.is_some_and(|a| a.contains("application/openmetrics-text")) {
        (OPENMETRICS, openmetrics)
    } else {
        (PROMETHEUS_TEXT, to_prometheus_text(&openmetrics))
    }
}

/// OpenMetrics text as Prometheus text: no `# EOF` or `# UNIT`, and a
/// counter family named as its samples are (`x_total`), as is an info
/// family (`x_info`, a gauge).
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let renamed: Vec<(&str, &str)> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .filter(|(_, kind)| matches!(*kind, "counter" | "info"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let family = |prefix: &str| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            let (_, kind) = renamed.iter().find(|(n, _)| *n == name)?;
            let (suffix, tail) = match (*kind, prefix) {
                ("info", "# TYPE ") => ("_info", "gauge"),
                ("info", _) => ("_info", tail),
                _ => ("_total", tail),
            };
            Some(format!("{prefix}{name}{suffix} {tail}"))
        };
        match family("# HELP ").or_else(|| family("# TYPE ")) {
            Some(line) => out.push_str(&line),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_named_by_their_samples_and_the_end_marker_goes() {
        let om = "# HELP trellis_requests Requests.\n# TYPE trellis_requests counter\ntrellis_requests_total{code=\"200\"} 3\n# HELP trellis_duration_seconds Time.\n# TYPE trellis_duration_seconds histogram\n# UNIT trellis_duration_seconds seconds\ntrellis_duration_seconds_count 1\n# EOF\n";
        assert_eq!(
            to_prometheus_text(om),
            "# HELP trellis_requests_total Requests.\n# TYPE trellis_requests_total counter\ntrellis_requests_total{code=\"200\"} 3\n# HELP trellis_duration_seconds Time.\n# TYPE trellis_duration_seconds histogram\ntrellis_duration_seconds_count 1\n"
        );
        let (kind, body) = negotiate(
            Some("application/openmetrics-text;version=1.0.0"),
            om.into(),
        );
        assert_eq!((kind, body.as_str()), (OPENMETRICS, om));
        assert_eq!(negotiate(Some("*/*"), om.into()).0, PROMETHEUS_TEXT);
    }
}
