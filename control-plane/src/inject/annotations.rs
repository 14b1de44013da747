//! The pod annotations injection reads (`sidecar.trellis.io/...`,
//! `traffic.sidecar.trellis.io/...` and Istio's `traffic.sidecar.istio.io/...`):
//! parsed and checked, an unknown one of ours or a bad value refused by name.

use std::collections::BTreeMap;

use super::{AnnotationError, INJECT_ANNOTATION, REWRITE_ANNOTATION, STATUS_ANNOTATION};

/// The annotations we read: ours, and Istio's traffic ones.
const PORT_LISTS: &[&str] = &[
    "excludeInboundPorts",
    "includeInboundPorts",
    "excludeOutboundPorts",
];
const CIDR_LISTS: &[&str] = &["excludeOutboundIPRanges", "includeOutboundIPRanges"];
const PROXY_SETTINGS: &[&str] = &[
    "proxyCPU",
    "proxyMemory",
    "proxyCPULimit",
    "proxyMemoryLimit",
    "logLevel",
];

/// What the annotations ask for, over the settings.
#[derive(Debug)]
pub(super) struct Options {
    pub(super) inject: Option<bool>,
    pub(super) rewrite_probes: bool,
    pub(super) lists: BTreeMap<&'static str, String>,
    pub(super) proxy: BTreeMap<&'static str, String>,
}

impl Options {
    pub(super) fn read(annotations: &BTreeMap<String, String>) -> Result<Self, AnnotationError> {
        let mut options = Options {
            inject: None,
            rewrite_probes: true,
            lists: BTreeMap::new(),
            proxy: BTreeMap::new(),
        };
        let err = |annotation: &str, message: String| AnnotationError {
            annotation: annotation.to_string(),
            message,
        };
        for (key, value) in annotations {
            let (prefix, name) = match key.split_once('/') {
                Some(pair) => pair,
                None => continue,
            };
            let ours = prefix == "sidecar.trellis.io" || prefix == "traffic.sidecar.trellis.io";
            let istio_traffic = prefix == "traffic.sidecar.istio.io";
            if !ours && !istio_traffic {
                continue;
            }
            if key == STATUS_ANNOTATION {
                continue;
            }
            if key == INJECT_ANNOTATION {
                options.inject = Some(match value.as_str() {
                    "true" => true,
                    "false" => false,
                    other => {
                        return Err(err(key, format!("{other:?} is not \"true\" or \"false\"")))
                    }
                });
                continue;
            }
            if key == REWRITE_ANNOTATION {
                options.rewrite_probes = match value.as_str() {
                    "true" => true,
                    "false" => false,
                    other => {
                        return Err(err(key, format!("{other:?} is not \"true\" or \"false\"")))
                    }
                };
                continue;
            }
            let traffic = prefix != "sidecar.trellis.io";
            if let Some(list) = PORT_LISTS.iter().find(|n| **n == name).filter(|_| traffic) {
                check_list(value, |p| p == "*" || p.parse::<u16>().is_ok_and(|p| p > 0))
                    .map_err(|bad| err(key, format!("{bad:?} is not a port (1-65535) or *")))?;
                options.lists.insert(list, value.clone());
            } else if let Some(list) = CIDR_LISTS.iter().find(|n| **n == name).filter(|_| traffic) {
                check_list(value, |c| c == "*" || is_cidr(c))
                    .map_err(|bad| err(key, format!("{bad:?} is not a CIDR (10.0.0.0/8) or *")))?;
                options.lists.insert(list, value.clone());
            } else if let Some(setting) = PROXY_SETTINGS
                .iter()
                .find(|n| **n == name)
                .filter(|_| !traffic)
            {
                if *setting == "logLevel" {
                    if value.is_empty() || value.contains(char::is_whitespace) {
                        return Err(err(key, format!("{value:?} is not a log level")));
                    }
                } else if !is_quantity(value) {
                    return Err(err(
                        key,
                        format!("{value:?} is not a quantity (100m, 128Mi)"),
                    ));
                }
                options.proxy.insert(setting, value.clone());
            } else if ours {
                return Err(err(key, "not an annotation Trellis knows".into()));
            }
            // Istio's other traffic annotations are Istio's business.
        }
        Ok(options)
    }

    pub(super) fn proxy_or<'a>(&'a self, name: &str, default: &'a str) -> &'a str {
        self.proxy.get(name).map_or(default, String::as_str)
    }
}

/// The first element of a comma-separated list `ok` refuses.
fn check_list(value: &str, ok: impl Fn(&str) -> bool) -> Result<(), String> {
    match value
        .split(',')
        .map(str::trim)
        .find(|v| !v.is_empty() && !ok(v))
    {
        Some(bad) => Err(bad.to_string()),
        None => Ok(()),
    }
}

fn is_cidr(s: &str) -> bool {
    let Some((ip, len)) = s.split_once('/') else {
        return s.parse::<std::net::IpAddr>().is_ok();
    };
    match (ip.parse::<std::net::IpAddr>(), len.parse::<u8>()) {
        (Ok(std::net::IpAddr::V4(_)), Ok(l)) => l <= 32,
        (Ok(std::net::IpAddr::V6(_)), Ok(l)) => l <= 128,
        _ => false,
    }
}

/// A Kubernetes quantity, loosely: digits with an optional fraction and
/// one of the usual suffixes.
fn is_quantity(s: &str) -> bool {
    let digits = s.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let suffix = &s[digits.len()..];
    !digits.is_empty()
        && digits.parse::<f64>().is_ok_and(|v| v >= 0.0)
        && ["", "m", "k", "M", "G", "T", "Ki", "Mi", "Gi", "Ti"].contains(&suffix)
}
