//! Route conditions compiled once per config: URI, method, authority,
//! headers, query parameters, port and source workload — Istio semantics
//! (all conditions of one match hold; regexes match the whole value).

use regex::Regex;
use trellis_api as api;

use crate::config::NodeConfig;

#[derive(Debug, thiserror::Error)]
pub enum MatchError {
    #[error("invalid regex {pattern:?}: {reason}")]
    Regex { pattern: String, reason: String },
    #[error("empty string match on {0}")]
    Empty(&'static str),
}

/// What a request offers to matching.
#[derive(Debug)]
pub struct RequestView<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub authority: &'a str,
    pub port: u16,
    pub headers: &'a http::HeaderMap,
}

#[derive(Debug)]
enum Text {
    Exact(String),
    Prefix(String),
    Regex(Regex),
}

impl Text {
    fn new(
        m: &api::StringMatch,
        ignore_case: bool,
        field: &'static str,
    ) -> Result<Self, MatchError> {
        use api::string_match::Kind;
        let fold = |s: &str| {
            if ignore_case {
                s.to_ascii_lowercase()
            } else {
                s.to_string()
            }
        };
        match &m.kind {
            Some(Kind::Exact(v)) => Ok(Self::Exact(fold(v))),
            Some(Kind::Prefix(v)) => Ok(Self::Prefix(fold(v))),
            Some(Kind::Regex(pattern)) => {
                let flags = if ignore_case { "(?i)" } else { "" };
                Regex::new(&format!("{flags}^(?:{pattern})$"))
                    .map(Self::Regex)
                    .map_err(|e| MatchError::Regex {
                        pattern: pattern.clone(),
                        reason: e.to_string().lines().last().unwrap_or_default().to_string(),
                    })
            }
            None => Err(MatchError::Empty(field)),
        }
    }

    fn matches(&self, value: &str, ignore_case: bool) -> bool {
        match self {
            Self::Exact(v) if ignore_case => value.eq_ignore_ascii_case(v),
            Self::Exact(v) => value == v,
            Self::Prefix(p) if ignore_case => value
                .get(..p.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(p)),
            Self::Prefix(p) => value.starts_with(p.as_str()),
            Self::Regex(re) => re.is_match(value),
        }
    }
}

/// A header or query parameter: present, and its value matches when given.
#[derive(Debug)]
struct Field {
    name: String,
    value: Option<Text>,
}

impl Field {
    fn new(m: &api::HeaderMatch, field: &'static str) -> Result<Self, MatchError> {
        Ok(Self {
            name: m.name.clone(),
            value: m
                .value
                .as_ref()
                .map(|v| Text::new(v, false, field))
                .transpose()?,
        })
    }

    fn matches(&self, value: Option<&str>) -> bool {
        match (value, &self.value) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(v), Some(text)) => text.matches(v, false),
        }
    }
}

/// One `match` entry of a route.
#[derive(Debug)]
pub struct CompiledMatch {
    uri: Option<Text>,
    ignore_uri_case: bool,
    method: Option<Text>,
    authority: Option<Text>,
    headers: Vec<Field>,
    without_headers: Vec<Field>,
    query: Vec<Field>,
    port: Option<u16>,
    /// False when `sourceLabels`/`sourceNamespace` exclude this sidecar.
    applies_to_node: bool,
}

impl CompiledMatch {
    pub fn new(m: &api::RouteMatch, node: &NodeConfig) -> Result<Self, MatchError> {
        let fields = |list: &[api::HeaderMatch], what| {
            list.iter()
                .map(|h| Field::new(h, what))
                .collect::<Result<Vec<_>, _>>()
        };
        let labels_ok = m
            .source_labels
            .iter()
            .all(|(k, v)| node.labels.get(k) == Some(v));
        let namespace_ok = m.source_namespace.is_empty() || m.source_namespace == node.namespace;
        Ok(Self {
            uri: m
                .uri
                .as_ref()
                .map(|u| Text::new(u, m.ignore_uri_case, "uri"))
                .transpose()?,
            ignore_uri_case: m.ignore_uri_case,
            method: m
                .method
                .as_ref()
                .map(|v| Text::new(v, false, "method"))
                .transpose()?,
            authority: m
                .authority
                .as_ref()
                .map(|v| Text::new(v, false, "authority"))
                .transpose()?,
            headers: fields(&m.headers, "headers")?,
            without_headers: fields(&m.without_headers, "withoutHeaders")?,
            query: fields(&m.query_params, "queryParams")?,
            port: u16::try_from(m.port).ok().filter(|p| *p != 0),
            applies_to_node: labels_ok && namespace_ok,
        })
    }

    /// The URI prefix this match requires, if it is a prefix match.
    pub fn uri_prefix(&self) -> Option<&str> {
        match &self.uri {
            Some(Text::Prefix(p)) => Some(p),
            _ => None,
        }
    }

    pub fn matches(&self, req: &RequestView<'_>) -> bool {
        let header = |name: &str| req.headers.get(name).and_then(|v| v.to_str().ok());
        self.applies_to_node
            && self.port.is_none_or(|p| p == req.port)
            && self
                .uri
                .as_ref()
                .is_none_or(|u| u.matches(req.path, self.ignore_uri_case))
            && self
                .method
                .as_ref()
                .is_none_or(|m| m.matches(req.method, false))
            && self
                .authority
                .as_ref()
                .is_none_or(|a| a.matches(req.authority, false))
            && self.headers.iter().all(|h| h.matches(header(&h.name)))
            && self
                .without_headers
                .iter()
                .all(|h| !h.matches(header(&h.name)))
            && self
                .query
                .iter()
                .all(|q| q.matches(query_param(req.query, &q.name)))
    }
}

/// The first value of a query parameter (not percent-decoded).
fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })
}
