//! Recognising the node's hot requests — `POST /v1/counters/{key}/incr` and
//! `GET /v1/counters/{key}` — straight from the request line, so they can be answered without
//! axum's router and extractors (about a third of the server's CPU per increment).
//!
//! Only plain, valid requests are recognised: a key or query that needs percent-decoding, an
//! empty or oversized key, a `by` that does not parse, a repeated `by`, any other method or
//! path. Everything else goes to the router, so every error answer (status, message) is the
//! router's by construction, and a recognised request gets the same answer the router's handler
//! would give.

use hyper::{Method, Uri};

use super::MAX_KEY_LEN;

const COUNTERS_PREFIX: &str = "/v1/counters/";
const INCR_SUFFIX: &str = "/incr";

/// A request the hot path answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum HotRequest<'a> {
    /// `POST /v1/counters/{key}/incr?by=N` (`by` defaults to 1).
    Incr { key: &'a str, by: i64 },
    /// `GET /v1/counters/{key}`.
    Read { key: &'a str },
}

/// The hot request `method` and `uri` make, or `None` when the router must answer.
pub(super) fn recognise<'a>(method: &Method, uri: &'a Uri) -> Option<HotRequest<'a>> {
    let rest = uri.path().strip_prefix(COUNTERS_PREFIX)?;
    if *method == Method::POST {
        let key = plain_key(rest.strip_suffix(INCR_SUFFIX)?)?;
        let by = match uri.query() {
            Some(query) => by_param(query)?,
            None => 1,
        };
        Some(HotRequest::Incr { key, by })
    } else if *method == Method::GET {
        Some(HotRequest::Read {
            key: plain_key(rest)?,
        })
    } else {
        None
    }
}

/// One path segment that decodes to itself and is a valid key.
fn plain_key(segment: &str) -> Option<&str> {
    let plain = !segment.is_empty()
        && segment.len() <= MAX_KEY_LEN
        && !segment.bytes().any(|byte| byte == b'/' || byte == b'%');
    plain.then_some(segment)
}

/// `by` from a query string the way axum's `Query` reads it (pairs split on `&`, name and value
/// on the first `=`, other names ignored), for queries with nothing to decode and at most one
/// valid `by`. `None` leaves the query to the router.
fn by_param(query: &str) -> Option<i64> {
    if query.bytes().any(|byte| byte == b'%' || byte == b'+') {
        return None;
    }
    let mut by = None;
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if name == "by" {
            if by.is_some() {
                return None;
            }
            by = Some(value.parse().ok()?);
        }
    }
    Some(by.unwrap_or(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recognised(method: Method, uri: &str) -> Option<(bool, String, i64)> {
        let uri: Uri = uri.parse().ok()?;
        recognise(&method, &uri).map(|hot| match hot {
            HotRequest::Incr { key, by } => (true, key.to_owned(), by),
            HotRequest::Read { key } => (false, key.to_owned(), 0),
        })
    }

    #[test]
    fn plain_increments_and_reads_are_recognised() {
        let incr = |uri| recognised(Method::POST, uri);
        assert_eq!(incr("/v1/counters/k/incr"), Some((true, "k".into(), 1)));
        assert_eq!(
            incr("/v1/counters/k/incr?by=-7"),
            Some((true, "k".into(), -7))
        );
        assert_eq!(
            incr("/v1/counters/k/incr?x=1&&by=3&y"),
            Some((true, "k".into(), 3))
        );
        assert_eq!(
            incr("/v1/counters/incr/incr?"),
            Some((true, "incr".into(), 1))
        );
        let read = |uri| recognised(Method::GET, uri);
        assert_eq!(read("/v1/counters/a.b-c"), Some((false, "a.b-c".into(), 0)));
        assert_eq!(
            read("/v1/counters/incr?by=x"),
            Some((false, "incr".into(), 0))
        );
        let longest = format!("/v1/counters/{}", "k".repeat(MAX_KEY_LEN));
        assert!(read(&longest).is_some());
    }

    #[test]
    fn anything_the_router_must_judge_is_left_to_it() {
        let long = "k".repeat(MAX_KEY_LEN + 1);
        for uri in [
            "/v1/counters//incr",
            "/v1/counters/a/b/incr",
            "/v1/counters/a%20b/incr",
            &format!("/v1/counters/{long}/incr"),
            "/v1/counters/k/incr?by=x",
            "/v1/counters/k/incr?by=",
            "/v1/counters/k/incr?by",
            "/v1/counters/k/incr?by=1&by=2",
            "/v1/counters/k/incr?by=%2D1",
            "/v1/counters/k/incr?by=+1",
            "/v1/counters/k/incr?by=99999999999999999999",
            "/v1/counters/k/incr/",
            "/v1/counters/k",
            "/v1/ratelimit/k/incr",
        ] {
            assert_eq!(recognised(Method::POST, uri), None, "POST {uri}");
        }
        for uri in [
            "/v1/counters/",
            "/v1/counters/a/",
            "/v1/counters/k/incr",
            "/v1/counters/a%2Fb",
            &format!("/v1/counters/{long}"),
            "/v1/status",
        ] {
            assert_eq!(recognised(Method::GET, uri), None, "GET {uri}");
        }
        assert_eq!(recognised(Method::HEAD, "/v1/counters/k"), None);
        assert_eq!(recognised(Method::PUT, "/v1/counters/k/incr"), None);
    }
}
