//! The request head, checked before anything is routed on it, on both
//! listeners: size limits (method, target, header section: 400, 414, 431)
//! and one `Host`, the authority the request is routed by. An
//! absolute-form target wins over `Host` (RFC 9112 §3.2.2); an HTTP/2
//! `:authority` that disagrees with `host`, two `Host` headers, or a
//! `Host` that is not `host[:port]` (userinfo, a path, spaces, a list, a
//! bad port) is refused; `CONNECT` is not proxied (405) and an
//! authority-form target of another method is refused.

use http::header::HOST;
use http::{HeaderValue, Method, Request, Version};

use super::local_reply::Reason;
use crate::body::ClientBody;
use crate::config::{HeadLimits, RequestLimits};

/// The request with its head settled and its body held to the pace.
pub fn admit(
    mut req: Request<hyper::body::Incoming>,
    limits: &RequestLimits,
) -> Result<Request<ClientBody>, Reason> {
    settle(&mut req, &limits.head)?;
    let http1 = req.version() < Version::HTTP_2;
    Ok(req.map(|body| ClientBody::new(body, limits.body, http1)))
}

/// Checks `req` against `limits` and leaves exactly one `Host`: the
/// authority the request will be routed by.
pub fn settle<B>(req: &mut Request<B>, limits: &HeadLimits) -> Result<(), Reason> {
    if req.method().as_str().len() > limits.method {
        return Err(Reason::BadRequest);
    }
    let uri = req.uri();
    let target = uri.path_and_query().map_or(0, |p| p.as_str().len())
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.scheme_str().map_or(0, |s| s.len() + 3);
    if target > limits.uri {
        return Err(Reason::UriTooLong);
    }
    let header_bytes: usize = req
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if header_bytes > limits.headers {
        return Err(Reason::HeadersTooLarge);
    }
    if req.method() == Method::CONNECT {
        return Err(Reason::MethodNotAllowed);
    }
    let mut hosts = req.headers().get_all(HOST).iter();
    let host = hosts.next().cloned();
    if hosts.next().is_some() {
        return Err(Reason::BadRequest);
    }
    if let Some(host) = &host {
        if !is_host(host.as_bytes()) {
            return Err(Reason::BadRequest);
        }
    }
    let Some(authority) = req.uri().authority() else {
        return match host {
            Some(_) => Ok(()),
            None => Err(Reason::BadRequest),
        };
    };
    // An authority-form target ("host:port") is for CONNECT only.
    if req.uri().scheme().is_none() || !is_host(authority.as_str().as_bytes()) {
        return Err(Reason::BadRequest);
    }
    let routed = HeaderValue::from_str(authority.as_str()).map_err(|_| Reason::BadRequest)?;
    if req.version() == Version::HTTP_2 {
        if let Some(host) = &host {
            if !host.as_bytes().eq_ignore_ascii_case(routed.as_bytes()) {
                return Err(Reason::BadRequest);
            }
        }
    }
    req.headers_mut().insert(HOST, routed);
    Ok(())
}

/// `host[:port]`: a name of letters, digits, `-`, `.`, `_`, `~`, or a
/// bracketed IPv6 literal; a port of 1 to 5 digits up to 65535.
fn is_host(value: &[u8]) -> bool {
    let (host, port) = match value.iter().rposition(|b| *b == b':') {
        Some(i) if !value[..i].contains(&b':') || value[..i].ends_with(b"]") => {
            (&value[..i], Some(&value[i + 1..]))
        }
        _ => (value, None),
    };
    let port_ok = port.is_none_or(|p| {
        (1..=5).contains(&p.len())
            && p.iter().all(u8::is_ascii_digit)
            && std::str::from_utf8(p)
                .ok()
                .and_then(|p| p.parse::<u32>().ok())
                .is_some_and(|p| p <= 65535)
    });
    let host_ok = match host {
        [b'[', literal @ .., b']'] => {
            !literal.is_empty()
                && literal
                    .iter()
                    .all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.'))
        }
        name => {
            !name.is_empty()
                && name.len() <= 255
                && name
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
        }
    };
    port_ok && host_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(build: http::request::Builder) -> Request<()> {
        build.body(()).expect("request")
    }

    fn settled(mut req: Request<()>) -> Result<Vec<String>, Reason> {
        settle(&mut req, &HeadLimits::default())?;
        Ok(req
            .headers()
            .get_all(HOST)
            .iter()
            .map(|h| h.to_str().unwrap_or("?").to_string())
            .collect())
    }

    #[test]
    fn the_absolute_form_target_wins_over_host() {
        let req = request(Request::get("http://reviews:9080/x").header(HOST, "ratings:9080"));
        assert_eq!(settled(req), Ok(vec!["reviews:9080".to_string()]));
        let origin = request(Request::get("/x").header(HOST, "ratings"));
        assert_eq!(settled(origin), Ok(vec!["ratings".to_string()]));
    }

    #[test]
    fn http2_authority_and_host_must_agree() {
        let agree = request(
            Request::get("http://reviews:9080/")
                .version(Version::HTTP_2)
                .header(HOST, "Reviews:9080"),
        );
        assert!(settled(agree).is_ok());
        let disagree = request(
            Request::get("http://reviews:9080/")
                .version(Version::HTTP_2)
                .header(HOST, "ratings:9080"),
        );
        assert_eq!(settled(disagree), Err(Reason::BadRequest));
        let only_authority = request(Request::get("http://reviews:9080/").version(Version::HTTP_2));
        assert_eq!(
            settled(only_authority),
            Ok(vec!["reviews:9080".to_string()])
        );
    }

    #[test]
    fn bad_and_repeated_hosts_are_refused() {
        let two = request(Request::get("/").header(HOST, "a").header(HOST, "b"));
        assert_eq!(settled(two), Err(Reason::BadRequest));
        for bad in [
            "user@reviews",
            "reviews/x",
            "reviews x",
            "reviews:99999",
            "reviews:",
            "reviews:80a",
            "a,b",
            "",
            "[zz::1]",
            "reviews:9080:1",
        ] {
            let req = request(Request::get("/").header(HOST, bad));
            assert_eq!(settled(req), Err(Reason::BadRequest), "{bad:?}");
        }
        for good in [
            "reviews",
            "reviews.shop.svc:9080",
            "10.0.0.1:80",
            "[fd00::1]:8080",
            "[::1]",
        ] {
            let req = request(Request::get("/").header(HOST, good));
            assert!(settled(req).is_ok(), "{good:?}");
        }
        let userinfo = request(Request::get("http://u@reviews/"));
        assert_eq!(settled(userinfo), Err(Reason::BadRequest));
        let missing = request(Request::get("/"));
        assert_eq!(settled(missing), Err(Reason::BadRequest));
    }

    #[test]
    fn connect_and_authority_form() {
        let connect = request(Request::connect("reviews:9080").header(HOST, "reviews:9080"));
        assert_eq!(settled(connect), Err(Reason::MethodNotAllowed));
        let authority_form = request(Request::get("reviews:9080").header(HOST, "reviews:9080"));
        assert_eq!(settled(authority_form), Err(Reason::BadRequest));
    }

    #[test]
    fn limits() {
        let long_method = request(
            Request::builder()
                .method("A".repeat(33).as_str())
                .uri("/")
                .header(HOST, "a"),
        );
        assert_eq!(settled(long_method), Err(Reason::BadRequest));
        let long_uri =
            request(Request::get(format!("/{}", "a".repeat(16 << 10))).header(HOST, "a"));
        assert_eq!(settled(long_uri), Err(Reason::UriTooLong));
        let big = request(
            Request::get("/")
                .header(HOST, "a")
                .header("x-big", "b".repeat(61 << 10)),
        );
        assert_eq!(settled(big), Err(Reason::HeadersTooLarge));
        let fits = request(
            Request::get("/")
                .header(HOST, "a")
                .header("x-big", "b".repeat(50 << 10)),
        );
        assert!(settled(fits).is_ok());
    }
}
