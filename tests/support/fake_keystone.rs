//! A Keystone stand-in for token validation (`GET /v3/auth/tokens`, the token as its own
//! subject, as Keystone 30 answers it): known tokens are 200 with their user, project and
//! roles (`issue` again changes them), an unknown subject 404, a revoked token 401; `fail`
//! makes every answer 503, `delay` slows (or, long, stalls) every answer, `stop` refuses
//! connections. Counts the validations per token.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

#[derive(Default)]
struct State {
    /// Token -> (user, project, roles).
    tokens: HashMap<String, (String, String, Vec<String>)>,
    revoked: Vec<String>,
    failing: bool,
    /// Wait this long before each answer.
    delay: std::time::Duration,
    /// Validations asked, per subject token.
    asked: HashMap<String, usize>,
}

pub struct FakeKeystone {
    pub url: String,
    state: Arc<Mutex<State>>,
    task: JoinHandle<()>,
    down: tokio::sync::watch::Sender<bool>,
}

impl FakeKeystone {
    pub async fn start() -> FakeKeystone {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake keystone");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let state = Arc::new(Mutex::new(State::default()));
        let task_state = Arc::clone(&state);
        let (down, down_rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let st = Arc::clone(&task_state);
                let mut down = down_rx.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let st = Arc::clone(&st);
                        async move {
                            let delay = st.lock().expect("lock").delay;
                            tokio::time::sleep(delay).await;
                            Ok::<_, std::convert::Infallible>(answer(&st, &req))
                        }
                    });
                    tokio::select! {
                        _ = http1::Builder::new().serve_connection(TokioIo::new(stream), svc) => {}
                        _ = down.wait_for(|d| *d) => {}
                    }
                });
            }
        });
        FakeKeystone {
            url,
            state,
            task,
            down,
        }
    }

    /// `token` is `user` in `project` with `roles` (again: the token's roles changed, as
    /// when an admin adds or removes a role: Keystone's validation says the new ones).
    pub fn issue(&self, token: &str, user: &str, project: &str, roles: &[&str]) {
        self.state.lock().expect("lock").tokens.insert(
            token.to_string(),
            (
                user.to_string(),
                project.to_string(),
                roles.iter().map(|r| r.to_string()).collect(),
            ),
        );
    }

    pub fn revoke(&self, token: &str) {
        self.state
            .lock()
            .expect("lock")
            .revoked
            .push(token.to_string());
    }

    /// Every answer a 503 (`true`), or back to normal.
    pub fn fail(&self, failing: bool) {
        self.state.lock().expect("lock").failing = failing;
    }

    /// Every answer after this long (a slow Keystone).
    pub fn delay(&self, delay: std::time::Duration) {
        self.state.lock().expect("lock").delay = delay;
    }

    /// How often `token` was validated.
    pub fn asked(&self, token: &str) -> usize {
        let state = self.state.lock().expect("lock");
        state.asked.get(token).copied().unwrap_or(0)
    }

    /// Refuse connections and close the open ones, as a stopped Keystone.
    pub fn stop(&self) {
        self.task.abort();
        let _ = self.down.send(true);
    }
}

impl Drop for FakeKeystone {
    fn drop(&mut self) {
        self.stop();
    }
}

fn answer(state: &Mutex<State>, req: &Request<Incoming>) -> Response<http_body_util::Full<Bytes>> {
    let mut state = state.lock().expect("lock");
    let header = |name| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let (auth, subject) = (header("x-auth-token"), header("x-subject-token"));
    *state.asked.entry(subject.clone()).or_default() += 1;
    let reply = |status: StatusCode, body: String| {
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(Bytes::from(body)))
            .expect("response")
    };
    if state.failing {
        return reply(StatusCode::SERVICE_UNAVAILABLE, "{}".into());
    }
    if req.method() != http::Method::GET || req.uri().path() != "/v3/auth/tokens" {
        return reply(StatusCode::NOT_FOUND, "{}".into());
    }
    if !state.tokens.contains_key(&auth) || state.revoked.contains(&auth) {
        return reply(StatusCode::UNAUTHORIZED, "{}".into());
    }
    let Some((user, project, roles)) = state.tokens.get(&subject).cloned() else {
        return reply(StatusCode::NOT_FOUND, "{}".into());
    };
    if state.revoked.contains(&subject) {
        return reply(StatusCode::NOT_FOUND, "{}".into());
    }
    let roles: Vec<serde_json::Value> = roles
        .iter()
        .map(|r| serde_json::json!({"id": format!("id-{r}"), "name": r}))
        .collect();
    let body = serde_json::json!({"token": {
        "user": {"id": user, "name": user, "domain": {"id": "default", "name": "Default"}},
        "project": {"id": project, "name": project, "domain": {"id": "default", "name": "Default"}},
        "roles": roles,
        "expires_at": "2099-01-01T00:00:00.000000Z",
    }});
    reply(StatusCode::OK, body.to_string())
}
