//! The HTTP/1.1 side of the monitoring endpoint, served by `hyper`:
//! routing, query parsing and responses. Every path is GET-only.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;

use super::health::{self, Check, LIVEZ_CHECKS, READYZ_CHECKS};
use super::node::NodeHandles;

type Reply = Response<Full<Bytes>>;

/// Answers one request.
pub async fn route(
    node: Arc<NodeHandles>,
    request: Request<hyper::body::Incoming>,
) -> Result<Reply, Infallible> {
    if request.method() != Method::GET {
        let mut reply = text(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed\n");
        reply
            .headers_mut()
            .insert(header::ALLOW, http::HeaderValue::from_static("GET"));
        return Ok(reply);
    }
    let query = Query::parse(request.uri().query().unwrap_or_default());
    let path = request.uri().path();
    let reply = match path {
        "/metrics" => match node.scrape().await {
            Ok(body) => {
                let mut reply = text(StatusCode::OK, body);
                reply.headers_mut().insert(
                    header::CONTENT_TYPE,
                    http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                reply
            }
            Err(error) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot encode metrics: {error}\n"),
            ),
        },
        "/health" => health_reply(&node, &query).await,
        "/livez" => probe_reply(&node, LIVEZ_CHECKS, None, &query).await,
        "/readyz" => probe_reply(&node, READYZ_CHECKS, None, &query).await,
        other => {
            let single = [("/livez/", LIVEZ_CHECKS), ("/readyz/", READYZ_CHECKS)]
                .into_iter()
                .find_map(|(prefix, group)| {
                    other
                        .strip_prefix(prefix)
                        .and_then(|name| health::named_check(group, name))
                        .map(|check| (group, check))
                });
            match single {
                Some((group, check)) => probe_reply(&node, group, Some(check), &query).await,
                None => text(StatusCode::NOT_FOUND, "404 page not found\n"),
            }
        }
    };
    Ok(reply)
}

async fn probe_reply(
    node: &NodeHandles,
    group: &[Check],
    only: Option<Check>,
    query: &Query,
) -> Reply {
    let checks = match only {
        Some(check) => vec![check],
        None => health::selected_checks(group, &query.exclude),
    };
    let outcomes = node.run_checks(&checks).await;
    for outcome in &outcomes {
        if let Err(reason) = &outcome.result {
            tracing::warn!(check = outcome.check.name(), %reason, "health check failed");
        }
    }
    let (status, body) = health::render_probe(&outcomes, query.verbose);
    text(status, body)
}

/// etcd 3.4's `/health`: any raised alarm not `?exclude=`d fails it
/// ("ALARM NOSPACE"), then a cluster member that knows no lead member
/// ("RAFT NO LEADER", unless `?serializable=true`), then a read must
/// succeed: linearizable unless `?serializable=true` (on a cluster member
/// confirmed with the groups' leaders, so a member cut off from a quorum
/// is unhealthy).
async fn health_reply(node: &NodeHandles, query: &Query) -> Reply {
    let failure = match node.raised_alarms(&query.exclude).first() {
        Some(alarm) => {
            node.count_health(false);
            Some(format!("ALARM {}", alarm.as_str_name()))
        }
        None if !query.serializable && node.knows_no_leader() => {
            node.count_health(false);
            Some("RAFT NO LEADER".to_owned())
        }
        None => {
            let read = if query.serializable {
                Check::SerializableRead
            } else {
                Check::LinearizableRead
            };
            let outcomes = node.run_checks(&[read]).await;
            outcomes.into_iter().find_map(|outcome| {
                outcome
                    .result
                    .err()
                    .map(|reason| format!("RANGE ERROR:{reason}"))
            })
        }
    };
    let (status, body) = health::render_health(failure);
    let mut reply = text(status, body);
    reply.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    reply
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Reply {
    let mut reply = Response::new(Full::new(body.into()));
    *reply.status_mut() = status;
    reply.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    reply
}

/// The query parameters the health endpoints read.
#[derive(Debug, Default, PartialEq, Eq)]
struct Query {
    /// `?verbose` (any value, or none).
    verbose: bool,
    /// `?exclude=name`, repeatable.
    exclude: Vec<String>,
    /// `?serializable=true` (`/health` only).
    serializable: bool,
}

impl Query {
    fn parse(query: &str) -> Self {
        let mut parsed = Query::default();
        for pair in query.split('&').filter(|pair| !pair.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            match name {
                "verbose" => parsed.verbose = true,
                "exclude" if !value.is_empty() => parsed.exclude.push(value.to_owned()),
                "serializable" => parsed.serializable = value == "true",
                _ => {}
            }
        }
        parsed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries() {
        assert_eq!(
            Query::parse("verbose&exclude=disk_space&exclude=&exclude=linearizable_read"),
            Query {
                verbose: true,
                exclude: vec!["disk_space".to_owned(), "linearizable_read".to_owned()],
                serializable: false,
            }
        );
        assert!(Query::parse("serializable=true").serializable);
        assert!(!Query::parse("serializable=1").serializable);
        assert_eq!(Query::parse(""), Query::default());
    }
}
