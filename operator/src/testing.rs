//! Fixtures for controller tests: filled caches ([`store`]) and a scripted apiserver (tower-test's shape, on axum, which the crate
//! already has): each test lists the requests it expects, in order, with the reply to each;
//! the client under test talks to it in-process, with no socket. [`ApiServer::done`] fails
//! the test if a request was missing, out of order or unexpected, and returns what was sent.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use kube::Resource;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use serde_json::{Value, json};

/// An IPPool of pod addresses as users write one (`natOutgoing`, nothing reserved, enabled);
/// tests change the fields they are about.
pub fn pool(name: &str, cidr: &str, block_size: u8) -> ferrite_crds::IPPool {
    ferrite_crds::IPPool::new(
        name,
        ferrite_crds::IPPoolSpec {
            cidr: ferrite_crds::Cidr(cidr.into()),
            block_size,
            node_selector: None,
            namespace_selector: None,
            allowed_uses: vec![ferrite_crds::AllowedUse::Pod],
            nat_outgoing: true,
            disabled: false,
            reserved_ranges: vec![],
        },
    )
}

/// A filled cache holding `objects`, as a reflector leaves it after its first list.
pub fn store<K>(objects: Vec<K>) -> Store<K>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    let (reader, mut writer) = reflector::store::<K>();
    writer.apply_watcher_event(&watcher::Event::Init);
    for object in objects {
        writer.apply_watcher_event(&watcher::Event::InitApply(object));
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);
    reader
}

/// The reply to one expected request.
#[derive(Clone, Debug)]
pub enum Reply {
    /// This status code and JSON body.
    Json(u16, Value),
    /// This status code and the request's own body (a create that stores what it was sent).
    Echo(u16),
    /// A Kubernetes `Status` failure with this code and message; its reason is the one the
    /// apiserver gives the code (`NotFound` for 404, `Conflict` for 409, ...).
    Status(u16, &'static str),
}

/// One request the client sent.
#[derive(Clone, Debug)]
pub struct Seen {
    /// The HTTP method.
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// The query string.
    pub query: Option<String>,
    /// The `Content-Type` header (tells a merge patch from a JSON patch or an apply).
    pub content_type: Option<String>,
    /// The body as JSON (`null` when empty).
    pub body: Value,
}

#[derive(Debug)]
struct Expected {
    method: &'static str,
    path: String,
    reply: Reply,
}

#[derive(Debug, Default)]
struct Script {
    expected: VecDeque<Expected>,
    seen: Vec<Seen>,
    wrong: Vec<String>,
}

/// The fake apiserver.
#[derive(Clone, Debug, Default)]
pub struct ApiServer {
    script: Arc<Mutex<Script>>,
}

impl ApiServer {
    /// Expects nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Expects `method path` next, answering it with `reply`.
    pub fn expect(self, method: &'static str, path: &str, reply: Reply) -> Self {
        self.lock().expected.push_back(Expected {
            method,
            path: path.to_owned(),
            reply,
        });
        self
    }

    /// A client whose every request goes to this server. Needs a Tokio runtime.
    pub fn client(&self) -> kube::Client {
        let router = Router::new()
            .fallback(handle)
            .with_state(self.script.clone());
        kube::Client::new(router, "default")
    }

    /// Asserts that every expected request came, in order, and no other; returns them all.
    pub fn done(&self) -> Vec<Seen> {
        let script = self.lock();
        assert!(
            script.wrong.is_empty(),
            "wrong requests: {:#?}",
            script.wrong
        );
        assert!(
            script.expected.is_empty(),
            "requests never sent: {:#?}",
            script.expected
        );
        script.seen.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Script> {
        self.script.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

async fn handle(
    State(script): State<Arc<Mutex<Script>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let seen = Seen {
        method: method.to_string(),
        path: uri.path().to_owned(),
        query: uri.query().map(str::to_owned),
        content_type: headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    };
    let mut script = script.lock().unwrap_or_else(PoisonError::into_inner);
    script.seen.push(seen.clone());
    let next = script.expected.pop_front();
    let reply = match next {
        Some(expected) if expected.method == seen.method && expected.path == seen.path => {
            expected.reply
        }
        Some(expected) => {
            let wrong = format!(
                "expected {} {}, got {} {}",
                expected.method, expected.path, seen.method, seen.path
            );
            script.expected.push_front(expected);
            script.wrong.push(wrong);
            Reply::Status(500, "unexpected request")
        }
        None => {
            script
                .wrong
                .push(format!("unexpected {} {}", seen.method, seen.path));
            Reply::Status(500, "unexpected request")
        }
    };
    let (code, body) = match reply {
        Reply::Json(code, body) => (code, body),
        Reply::Echo(code) => (code, seen.body),
        Reply::Status(code, message) => (
            code,
            json!({
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Failure",
                "message": message,
                "reason": reason_of(code),
                "code": code,
            }),
        ),
    };
    let code = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// The `reason` the apiserver gives a failure with `code`.
fn reason_of(code: u16) -> &'static str {
    match code {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        409 => "Conflict",
        422 => "Invalid",
        _ => "InternalError",
    }
}
