//! A stand-in for the Kubernetes API server (there is none on these machines): the pod calls
//! kube-rs makes (create, get, list, watch, delete) with resourceVersions and label selectors,
//! and a kubelet that, for every pod created, starts a real `ember executor` process with the
//! pod's arguments and environment (`$(VAR)` references and the downward API resolved as a
//! kubelet does) and reports the pod's phase from the process state. Deleting a pod sends its
//! process SIGTERM, then SIGKILL after the pod's grace period; the pod goes once it has exited.
//! Every request is recorded, so tests can see that the coordinator touches only pods.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use tokio::sync::broadcast;

/// One change of a pod, as a watch reports it.
#[derive(Debug, Clone)]
struct Change {
    revision: u64,
    kind: &'static str,
    namespace: String,
    pod: Value,
}

#[derive(Default)]
struct Inner {
    pods: BTreeMap<(String, String), Value>,
    pids: HashMap<(String, String), u32>,
    revision: u64,
    history: Vec<Change>,
    uids: u64,
    requests: Vec<String>,
}

struct Shared {
    inner: Mutex<Inner>,
    changes: broadcast::Sender<Change>,
    log_dir: PathBuf,
}

/// The API server, serving on a loopback port until dropped.
pub(crate) struct FakeKube {
    pub(crate) addr: SocketAddr,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for FakeKube {
    fn drop(&mut self) {
        self.server.abort();
        // The kubelet's processes go with it.
        for pid in lock(&self.shared.inner).pids.values() {
            signal(*pid, libc::SIGKILL);
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn signal(pid: u32, signal: i32) {
    // SAFETY: a signal to a process this kubelet started and has not reaped yet.
    unsafe { libc::kill(pid as libc::pid_t, signal) };
}

/// A failure, answered as the API server's `Status` object.
#[derive(Debug)]
struct ApiError(StatusCode, &'static str, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let ApiError(code, reason, message) = self;
        let body = json!({
            "apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code.as_u16(),
        });
        (code, axum::Json(body)).into_response()
    }
}

fn status(code: StatusCode, reason: &'static str, message: String) -> ApiError {
    ApiError(code, reason, message)
}

impl FakeKube {
    /// Starts the API server; pod processes log into `log_dir`.
    pub(crate) async fn start(log_dir: PathBuf) -> Self {
        let (changes, _) = broadcast::channel(4096);
        let shared = Arc::new(Shared {
            inner: Mutex::default(),
            changes,
            log_dir,
        });
        let app = Router::new()
            .route(
                "/api/v1/namespaces/{ns}/pods",
                get(list_or_watch).post(create),
            )
            .route(
                "/api/v1/namespaces/{ns}/pods/{name}",
                get(get_pod).delete(delete_pod),
            )
            .fallback(
                |State(shared): State<Arc<Shared>>, request: Request| async move {
                    record(&shared, request.method().as_str(), request.uri().path());
                    status(
                        StatusCode::NOT_FOUND,
                        "NotFound",
                        format!("{} is not served here", request.uri().path()),
                    )
                },
            )
            .layer(axum::middleware::from_fn_with_state(
                Arc::clone(&shared),
                |State(shared): State<Arc<Shared>>,
                 request: Request,
                 next: axum::middleware::Next| async move {
                    record(&shared, request.method().as_str(), request.uri().path());
                    next.run(request).await
                },
            ))
            .with_state(Arc::clone(&shared));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            addr,
            shared,
            server,
        }
    }

    /// A kubeconfig that points kube-rs here, with `namespace` as the context's.
    pub(crate) fn kubeconfig(&self, path: &std::path::Path, namespace: &str) {
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: \
             http://{}\nusers:\n- name: fake\n  user:\n    token: fake\ncontexts:\n- name: fake\n  \
             context:\n    cluster: fake\n    user: fake\n    namespace: {namespace}\n\
             current-context: fake\n",
            self.addr
        );
        std::fs::write(path, text).expect("write the kubeconfig");
    }

    /// Adds a pod without a process (the coordinator's own, say); returns its uid.
    pub(crate) fn add_pod(&self, namespace: &str, name: &str) -> String {
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
                         "spec": {"containers": [{"name": "coordinator"}]}});
        let pod = admit(&self.shared, namespace, pod).expect("a new pod");
        pod["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// The pods of `namespace` now.
    pub(crate) fn pods(&self, namespace: &str) -> Vec<Value> {
        lock(&self.shared.inner)
            .pods
            .iter()
            .filter(|((ns, _), _)| ns == namespace)
            .map(|(_, pod)| pod.clone())
            .collect()
    }

    /// What was asked of this server: `METHOD path` each.
    pub(crate) fn requests(&self) -> Vec<String> {
        lock(&self.shared.inner).requests.clone()
    }

    /// Deletes a pod as `kubectl delete pod` would.
    pub(crate) fn delete_pod(&self, namespace: &str, name: &str) -> bool {
        remove(&self.shared, namespace, name).is_ok()
    }
}

fn record(shared: &Shared, method: &str, path: &str) {
    lock(&shared.inner)
        .requests
        .push(format!("{method} {path}"));
}

/// Records a change of a pod: a new resourceVersion, the history, the watchers.
fn change(
    shared: &Shared,
    inner: &mut Inner,
    kind: &'static str,
    namespace: &str,
    pod: &mut Value,
) {
    inner.revision += 1;
    pod["metadata"]["resourceVersion"] = json!(inner.revision.to_string());
    let change = Change {
        revision: inner.revision,
        kind,
        namespace: namespace.to_string(),
        pod: pod.clone(),
    };
    inner.history.push(change.clone());
    let _ = shared.changes.send(change);
}

/// Stores a new pod (409 if the name is taken).
fn admit(shared: &Shared, namespace: &str, mut pod: Value) -> Result<Value, ApiError> {
    let Some(name) = pod["metadata"]["name"].as_str().map(str::to_string) else {
        return Err(status(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            "a pod needs a name".into(),
        ));
    };
    let mut inner = lock(&shared.inner);
    let key = (namespace.to_string(), name.clone());
    if inner.pods.contains_key(&key) {
        return Err(status(
            StatusCode::CONFLICT,
            "AlreadyExists",
            format!("pods \"{name}\" already exists"),
        ));
    }
    inner.uids += 1;
    pod["apiVersion"] = json!("v1");
    pod["kind"] = json!("Pod");
    pod["metadata"]["namespace"] = json!(namespace);
    pod["metadata"]["uid"] = json!(format!("00000000-0000-0000-0000-{:012}", inner.uids));
    pod["metadata"]["creationTimestamp"] = json!(now());
    pod["status"] = json!({"phase": "Pending"});
    change(shared, &mut inner, "ADDED", namespace, &mut pod);
    inner.pods.insert(key, pod.clone());
    Ok(pod)
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Updates a stored pod's status; false if it is gone.
fn set_status(shared: &Shared, namespace: &str, name: &str, status: Value) -> bool {
    let mut inner = lock(&shared.inner);
    let key = (namespace.to_string(), name.to_string());
    let Some(mut pod) = inner.pods.get(&key).cloned() else {
        return false;
    };
    pod["status"] = status;
    change(shared, &mut inner, "MODIFIED", namespace, &mut pod);
    inner.pods.insert(key, pod);
    true
}

/// Deletes a pod: a running one is asked to stop (SIGTERM, SIGKILL after its grace period) and
/// goes once its process has exited; one without a process goes at once.
fn remove(shared: &Arc<Shared>, namespace: &str, name: &str) -> Result<Value, ApiError> {
    let mut inner = lock(&shared.inner);
    let key = (namespace.to_string(), name.to_string());
    let Some(mut pod) = inner.pods.get(&key).cloned() else {
        return Err(status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("pods \"{name}\" not found"),
        ));
    };
    match inner.pids.get(&key).copied() {
        Some(pid) => {
            if pod["metadata"]["deletionTimestamp"].is_null() {
                let grace = pod["spec"]["terminationGracePeriodSeconds"]
                    .as_u64()
                    .unwrap_or(30);
                pod["metadata"]["deletionTimestamp"] = json!(now());
                pod["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
                change(shared, &mut inner, "MODIFIED", namespace, &mut pod);
                inner.pods.insert(key.clone(), pod.clone());
                signal(pid, libc::SIGTERM);
                let shared = Arc::clone(shared);
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(grace)).await;
                    if lock(&shared.inner).pids.get(&key) == Some(&pid) {
                        signal(pid, libc::SIGKILL);
                    }
                });
            }
        }
        None => {
            inner.pods.remove(&key);
            change(shared, &mut inner, "DELETED", namespace, &mut pod);
        }
    }
    Ok(pod)
}

async fn create(
    State(shared): State<Arc<Shared>>,
    Path(namespace): Path<String>,
    axum::Json(pod): axum::Json<Value>,
) -> Response {
    match admit(&shared, &namespace, pod) {
        Ok(pod) => {
            tokio::spawn(kubelet(Arc::clone(&shared), namespace, pod.clone()));
            (StatusCode::CREATED, axum::Json(pod)).into_response()
        }
        Err(error) => error.into_response(),
    }
}

async fn get_pod(
    State(shared): State<Arc<Shared>>,
    Path((namespace, name)): Path<(String, String)>,
) -> Response {
    match lock(&shared.inner).pods.get(&(namespace, name.clone())) {
        Some(pod) => axum::Json(pod.clone()).into_response(),
        None => status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("pods \"{name}\" not found"),
        )
        .into_response(),
    }
}

async fn delete_pod(
    State(shared): State<Arc<Shared>>,
    Path((namespace, name)): Path<(String, String)>,
) -> Response {
    match remove(&shared, &namespace, &name) {
        Ok(pod) => axum::Json(pod).into_response(),
        Err(error) => error.into_response(),
    }
}

/// `a=b`, `a==b`, `a!=b`, `a` and `!a`, comma-separated, all to hold.
fn selected(selector: &str, pod: &Value) -> bool {
    let labels = &pod["metadata"]["labels"];
    selector
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .all(|term| {
            if let Some((key, value)) = term.split_once("!=") {
                labels[key.trim()].as_str() != Some(value.trim())
            } else if let Some((key, value)) =
                term.split_once("==").or_else(|| term.split_once('='))
            {
                labels[key.trim()].as_str() == Some(value.trim())
            } else if let Some(key) = term.strip_prefix('!') {
                labels[key.trim()].is_null()
            } else {
                !labels[term].is_null()
            }
        })
}

async fn list_or_watch(
    State(shared): State<Arc<Shared>>,
    Path(namespace): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let selector = params.get("labelSelector").cloned().unwrap_or_default();
    let watch = matches!(params.get("watch").map(String::as_str), Some("true" | "1"));
    if !watch {
        let inner = lock(&shared.inner);
        let items: Vec<Value> = inner
            .pods
            .iter()
            .filter(|((ns, _), pod)| *ns == namespace && selected(&selector, pod))
            .map(|(_, pod)| pod.clone())
            .collect();
        let list = json!({"apiVersion": "v1", "kind": "PodList",
                          "metadata": {"resourceVersion": inner.revision.to_string()},
                          "items": items});
        return axum::Json(list).into_response();
    }
    // Subscribed before the backlog is read: no change falls between the two.
    let rx = shared.changes.subscribe();
    let since: Option<u64> = params
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .filter(|v| *v > 0);
    let timeout = params
        .get("timeoutSeconds")
        .and_then(|v| v.parse().ok())
        .unwrap_or(60u64)
        .min(60);
    let (backlog, last) = {
        let inner = lock(&shared.inner);
        let backlog: Vec<Change> = match since {
            Some(since) => inner
                .history
                .iter()
                .filter(|c| c.revision > since)
                .cloned()
                .collect(),
            // From now, starting with every pod as added.
            None => inner
                .pods
                .iter()
                .map(|((ns, _), pod)| Change {
                    revision: inner.revision,
                    kind: "ADDED",
                    namespace: ns.clone(),
                    pod: pod.clone(),
                })
                .collect(),
        };
        (backlog, inner.revision)
    };
    let matching = {
        let namespace = namespace.clone();
        let selector = selector.clone();
        move |c: &Change| c.namespace == namespace && selected(&selector, &c.pod)
    };
    let backlog: Vec<Change> = backlog.into_iter().filter(&matching).collect();
    let live = futures::stream::unfold(rx, move |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(change) if change.revision > last => return Some((change, rx)),
                Ok(_) => continue,
                // As the real server ends a watch that fell behind: the client lists again.
                Err(_) => return None,
            }
        }
    });
    use futures::StreamExt;
    let stream = futures::stream::iter(backlog)
        .chain(live.filter(move |c| std::future::ready(matching(c))))
        .map(|c| {
            let line = json!({"type": c.kind, "object": c.pod}).to_string() + "\n";
            Ok::<_, std::convert::Infallible>(line)
        })
        .take_until(tokio::time::sleep(Duration::from_secs(timeout)));
    Response::builder()
        .header("content-type", "application/json")
        .body(Body::from_stream(stream))
        .expect("a response")
}

/// Runs a pod as a kubelet would: its executor container's command and arguments with `$(VAR)`
/// expanded, its environment (values and the downward API) and nothing else; phase Running
/// while the process lives, Succeeded or Failed after, and the pod gone when it was being
/// deleted.
async fn kubelet(shared: Arc<Shared>, namespace: String, pod: Value) {
    let name = pod["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let containers = pod["spec"]["containers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let container = containers
        .iter()
        .find(|c| c["name"] == "executor")
        .or_else(|| containers.first())
        .cloned()
        .unwrap_or(Value::Null);
    let container_name = container["name"].as_str().unwrap_or("executor").to_string();
    let waiting = |reason: &str, message: String| {
        json!({"phase": "Pending", "containerStatuses": [{"name": container_name, "ready": false,
               "restartCount": 0, "image": "", "imageID": "",
               "state": {"waiting": {"reason": reason, "message": message}}}]})
    };
    let mut env: Vec<(String, String)> = vec![];
    for var in container["env"].as_array().into_iter().flatten() {
        let key = var["name"].as_str().unwrap_or_default().to_string();
        let value = if let Some(value) = var["value"].as_str() {
            value.to_string()
        } else if let Some(path) = var["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
            match path {
                "status.podIP" => "127.0.0.1".to_string(),
                "metadata.name" => name.clone(),
                "metadata.namespace" => namespace.clone(),
                other => {
                    set_status(
                        &shared,
                        &namespace,
                        &name,
                        waiting(
                            "CreateContainerConfigError",
                            format!("fieldRef {other} is not served here"),
                        ),
                    );
                    return;
                }
            }
        } else {
            set_status(
                &shared,
                &namespace,
                &name,
                waiting(
                    "CreateContainerConfigError",
                    format!("env {key}: only values and fieldRefs are served here"),
                ),
            );
            return;
        };
        env.push((key, value));
    }
    let expand = |arg: &str| {
        let mut out = arg.to_string();
        for (key, value) in &env {
            out = out.replace(&format!("$({key})"), value);
        }
        out
    };
    // The image's `ember` is this build's.
    let mut argv: Vec<String> = container["command"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str().map(expand))
        .skip(1)
        .collect();
    argv.extend(
        container["args"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a.as_str().map(expand)),
    );
    let log = std::fs::File::create(shared.log_dir.join(format!("pod-{name}.log"))).expect("a log");
    let spawned = tokio::process::Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(&argv)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(error) => {
            set_status(
                &shared,
                &namespace,
                &name,
                waiting("CreateContainerError", error.to_string()),
            );
            return;
        }
    };
    let pid = child.id().unwrap_or(0);
    let key = (namespace.clone(), name.clone());
    {
        let mut inner = lock(&shared.inner);
        match inner.pods.get(&key) {
            // Deleted while its process started: it does not outlive the pod.
            None => {
                let _ = child.start_kill();
                return;
            }
            Some(pod) => {
                if !pod["metadata"]["deletionTimestamp"].is_null() {
                    signal(pid, libc::SIGTERM);
                }
            }
        }
        inner.pids.insert(key.clone(), pid);
    }
    let started = now();
    set_status(
        &shared,
        &namespace,
        &name,
        json!({"phase": "Running", "podIP": "127.0.0.1", "startTime": started,
               "containerStatuses": [{"name": container_name, "ready": true, "restartCount": 0,
                                      "image": "", "imageID": "",
                                      "state": {"running": {"startedAt": started}}}]}),
    );
    let code = match child.wait().await {
        Ok(status) => status.code().unwrap_or_else(|| {
            128 + std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0)
        }),
        Err(_) => 255,
    };
    let mut inner = lock(&shared.inner);
    inner.pids.remove(&key);
    let Some(mut pod) = inner.pods.get(&key).cloned() else {
        return;
    };
    pod["status"] = json!({
        "phase": if code == 0 { "Succeeded" } else { "Failed" },
        "podIP": "127.0.0.1", "startTime": started,
        "containerStatuses": [{"name": container_name, "ready": false, "restartCount": 0,
                               "image": "", "imageID": "",
                               "state": {"terminated": {"exitCode": code,
                                   "reason": if code == 0 { "Completed" } else { "Error" },
                                   "startedAt": started, "finishedAt": now()}}}]});
    change(&shared, &mut inner, "MODIFIED", &namespace, &mut pod);
    if pod["metadata"]["deletionTimestamp"].is_null() {
        inner.pods.insert(key, pod);
    } else {
        inner.pods.remove(&key);
        change(&shared, &mut inner, "DELETED", &namespace, &mut pod);
    }
}
