//! The `kubernetes` cluster manager, as Spark's: the coordinator creates a pod per executor it
//! asks for (from a pod template), watches the pods' phases, deletes a pod when it gives its
//! executor back, and at start removes the executor pods its earlier runs left behind (found by
//! label). Pods carry an ownerReference to the coordinator's pod, so Kubernetes removes them
//! when the coordinator's pod goes. It needs only pods in its namespace: create, get, list,
//! watch, delete.
//!
//! ```text
//!  Allocator ── request ──► create pod ─► kubelet starts `ember executor` ─► it registers
//!            ◄─ Started / Exited ── watch (phase Running / Succeeded, Failed / deleted)
//!            ── release ──► delete pod ─► SIGTERM: the executor decommissions, then exits
//! ```

pub mod pod;

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use ember_config::EmberConfig;
use ember_coordinator::{AllocationEvent, AllocationEvents, ClusterManager, ExecutorRequest};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher;
use kube::{Api, Client};
use tracing::{info, warn};

use pod::{PodSettings, default_template, executor_pod, read_template};

/// Where a pod's service account names its namespace.
const NAMESPACE_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

/// Executors as pods.
#[derive(Debug)]
pub struct KubernetesExecutors {
    pods: Api<Pod>,
    namespace: String,
    template: Pod,
    settings: PodSettings,
    /// Where pod events go (set by the first request: every request's sink is the allocator's).
    events: Arc<Mutex<Option<AllocationEvents>>>,
    watch: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

fn unavailable(message: impl std::fmt::Display) -> ember_coordinator::Error {
    ember_coordinator::Error::Unavailable(format!("kubernetes: {message}"))
}

impl KubernetesExecutors {
    /// Connects to the API server (in the cluster: the pod's service account; outside:
    /// `$KUBECONFIG` or `~/.kube/config`), removes the executor pods of earlier runs and
    /// starts watching this run's. `grpc_port` is where executors register unless
    /// `kubernetes.coordinator_address` says otherwise.
    pub async fn connect(
        config: &EmberConfig,
        grpc_port: u16,
    ) -> ember_coordinator::Result<Arc<Self>> {
        let k = &config.kubernetes;
        let client = Client::try_default()
            .await
            .map_err(|e| unavailable(format!("cannot reach the API server: {e}")))?;
        let namespace = if !k.namespace.is_empty() {
            k.namespace.clone()
        } else {
            std::fs::read_to_string(NAMESPACE_FILE)
                .map(|n| n.trim().to_string())
                .ok()
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| client.default_namespace().to_string())
        };
        let pods: Api<Pod> = Api::namespaced(client, &namespace);
        let template = if k.pod_template_file.as_os_str().is_empty() {
            default_template()
        } else {
            read_template(&k.pod_template_file).map_err(unavailable)?
        };
        let coordinator_address = coordinator_address(config, grpc_port)?;
        let coordinator_pod = if k.coordinator_pod.is_empty() {
            std::env::var("POD_NAME").unwrap_or_default()
        } else {
            k.coordinator_pod.clone()
        };
        let owner = if coordinator_pod.is_empty() {
            None
        } else {
            match pods.get(&coordinator_pod).await {
                Ok(pod) => pod.metadata.uid.map(|uid| OwnerReference {
                    api_version: "v1".into(),
                    kind: "Pod".into(),
                    name: coordinator_pod.clone(),
                    uid,
                    controller: Some(true),
                    block_owner_deletion: None,
                }),
                Err(error) => {
                    warn!(pod = %coordinator_pod, %error, "cannot read the coordinator's pod: executor pods get no owner");
                    None
                }
            }
        };
        let run: String = ember_protocol::credentials::random_id(4)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let settings = PodSettings {
            cluster_name: k.cluster_name.clone(),
            run,
            image: k.image.clone(),
            image_pull_policy: k.image_pull_policy.clone(),
            coordinator_address,
            owner,
            service_account: k.service_account.clone(),
            termination_grace_seconds: (config.executor.decommission_grace_ms / 1000 + 5) as i64,
        };
        let manager = Arc::new(Self {
            pods,
            namespace,
            template,
            settings,
            events: Arc::default(),
            watch: Mutex::new(None),
        });
        manager.remove_orphans().await?;
        let watch = tokio::spawn(watch_pods(
            manager.pods.clone(),
            manager.settings.run_selector(),
            Arc::clone(&manager.events),
        ));
        *lock(&manager.watch) = Some(watch);
        info!(
            namespace = %manager.namespace,
            run = %manager.settings.run,
            coordinator = %manager.settings.coordinator_address,
            owner = ?manager.settings.owner.as_ref().map(|o| &o.name),
            "kubernetes cluster manager ready"
        );
        Ok(manager)
    }

    /// Deletes the executor pods of this cluster that earlier runs of the coordinator left.
    async fn remove_orphans(&self) -> ember_coordinator::Result<()> {
        let selector = format!(
            "{},{}!={}",
            self.settings.cluster_selector(),
            pod::RUN_LABEL,
            self.settings.run
        );
        let orphans = self
            .pods
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|e| unavailable(format!("cannot list executor pods: {e}")))?;
        for orphan in orphans {
            let Some(name) = orphan.metadata.name else {
                continue;
            };
            info!(pod = %name, "removing an executor pod an earlier coordinator left");
            if let Err(error) = self.delete(&name).await {
                warn!(pod = %name, %error, "cannot remove an orphaned executor pod");
            }
        }
        Ok(())
    }

    async fn delete(&self, name: &str) -> ember_coordinator::Result<()> {
        match self.pods.delete(name, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
            Err(error) => Err(unavailable(format!("cannot delete pod {name}: {error}"))),
        }
    }
}

#[async_trait]
impl ClusterManager for KubernetesExecutors {
    fn name(&self) -> &'static str {
        "kubernetes"
    }

    async fn request(
        &self,
        request: ExecutorRequest,
        events: AllocationEvents,
    ) -> ember_coordinator::Result<()> {
        lock(&self.events).get_or_insert(events);
        let pod = executor_pod(&self.template, &self.settings, &request);
        let name = pod.metadata.name.clone().unwrap_or_default();
        self.pods
            .create(&PostParams::default(), &pod)
            .await
            .map_err(|e| unavailable(format!("cannot create pod {name}: {e}")))?;
        info!(pod = %name, allocation_id = %request.allocation_id, "executor pod created");
        Ok(())
    }

    async fn release(&self, allocation_id: &str) -> ember_coordinator::Result<()> {
        self.delete(&pod::pod_name(&self.settings, allocation_id))
            .await
    }

    async fn shutdown(&self) {
        if let Some(watch) = lock(&self.watch).take() {
            watch.abort();
        }
        let listed = self
            .pods
            .list(&ListParams::default().labels(&self.settings.run_selector()))
            .await;
        match listed {
            Ok(pods) => {
                for pod in pods {
                    if let Some(name) = pod.metadata.name
                        && let Err(error) = self.delete(&name).await
                    {
                        warn!(%error, "cannot delete an executor pod");
                    }
                }
            }
            Err(error) => warn!(%error, "cannot list executor pods to delete them"),
        }
    }
}

/// Follows this run's pods and reports their processes' starts and ends, as a kubelet sees them.
async fn watch_pods(
    pods: Api<Pod>,
    selector: String,
    events: Arc<Mutex<Option<AllocationEvents>>>,
) {
    let stream =
        watcher(pods.clone(), watcher::Config::default().labels(&selector)).default_backoff();
    futures::pin_mut!(stream);
    while let Some(event) = stream.next().await {
        let (pod, deleted) = match event {
            Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) => (pod, false),
            Ok(watcher::Event::Delete(pod)) => (pod, true),
            Ok(watcher::Event::Init | watcher::Event::InitDone) => continue,
            Err(error) => {
                warn!(%error, "watching executor pods");
                continue;
            }
        };
        let Some(allocation_id) = pod
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(pod::ALLOCATION_LABEL))
            .cloned()
        else {
            continue;
        };
        let name = pod.metadata.name.clone().unwrap_or_default();
        let event = match pod_state(&pod, deleted) {
            PodState::Waiting => continue,
            PodState::Started => AllocationEvent::Started { allocation_id },
            PodState::Ended { reason, clean } => {
                // A finished pod stays until deleted: it has told what it had to.
                if !deleted && let Err(error) = pods.delete(&name, &DeleteParams::default()).await {
                    warn!(pod = %name, %error, "cannot delete a finished executor pod");
                }
                AllocationEvent::Exited {
                    allocation_id,
                    reason: format!("pod {name}: {reason}"),
                    clean,
                }
            }
        };
        if let Some(events) = lock(&events).as_ref() {
            events.send(event);
        }
    }
}

enum PodState {
    Waiting,
    Started,
    Ended { reason: String, clean: bool },
}

/// Reasons a container waits that waiting will not cure.
const STUCK: &[&str] = &[
    "ErrImagePull",
    "ImagePullBackOff",
    "ErrImageNeverPull",
    "InvalidImageName",
    "ImageInspectError",
    "CreateContainerConfigError",
    "CreateContainerError",
];

/// What a pod says of its executor's process: the executor container's state (a sidecar may
/// keep the pod running after it), else the pod's phase.
fn pod_state(pod: &Pod, deleted: bool) -> PodState {
    let status = pod.status.clone().unwrap_or_default();
    let statuses = status.container_statuses.unwrap_or_default();
    let executor = statuses
        .iter()
        .find(|c| c.name == pod::CONTAINER)
        .or_else(|| statuses.first());
    let state = executor.and_then(|c| c.state.clone()).unwrap_or_default();
    if let Some(t) = state.terminated {
        let reason = format!(
            "exit code {}{}",
            t.exit_code,
            t.reason.map(|r| format!(" ({r})")).unwrap_or_default()
        );
        return PodState::Ended {
            reason: if deleted {
                format!("deleted, {reason}")
            } else {
                reason
            },
            clean: t.exit_code == 0,
        };
    }
    if deleted {
        return PodState::Ended {
            reason: "deleted".into(),
            clean: false,
        };
    }
    if let Some(reason) = state
        .waiting
        .and_then(|w| w.reason)
        .filter(|r| STUCK.contains(&r.as_str()))
    {
        return PodState::Ended {
            reason: format!("cannot start: {reason}"),
            clean: false,
        };
    }
    match status.phase.as_deref() {
        Some("Running") => PodState::Started,
        Some(phase @ ("Succeeded" | "Failed")) => PodState::Ended {
            reason: phase.to_string(),
            clean: phase == "Succeeded",
        },
        _ => PodState::Waiting,
    }
}

/// Where executors dial the coordinator: `kubernetes.coordinator_address`, else this pod's IP
/// (`$POD_IP`, the downward API), else the cluster bind address if it names one host.
fn coordinator_address(config: &EmberConfig, grpc_port: u16) -> ember_coordinator::Result<String> {
    let k = &config.kubernetes;
    if !k.coordinator_address.is_empty() {
        return Ok(k.coordinator_address.clone());
    }
    let host = std::env::var("POD_IP")
        .ok()
        .filter(|ip| !ip.is_empty())
        .unwrap_or_else(|| config.coordinator.cluster_bind_host.clone());
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) if ip.is_unspecified() => Err(unavailable(format!(
            "executors cannot dial {host}: set kubernetes.coordinator_address, or POD_IP from \
             the downward API"
        ))),
        Ok(std::net::IpAddr::V6(ip)) => Ok(format!("[{ip}]:{grpc_port}")),
        _ => Ok(format!("{host}:{grpc_port}")),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(phase: &str, containers: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"},
            "status": {"phase": phase, "containerStatuses": containers},
        }))
        .expect("a pod")
    }

    fn status(name: &str, state: serde_json::Value) -> serde_json::Value {
        serde_json::json!({"name": name, "ready": false, "restartCount": 0, "image": "",
                           "imageID": "", "state": state})
    }

    #[test]
    fn the_executor_container_decides_how_its_pod_ended() {
        let running = serde_json::json!({"running": {}});
        let exited = |code: i32| serde_json::json!({"terminated": {"exitCode": code}});
        assert!(matches!(
            pod_state(
                &pod(
                    "Running",
                    serde_json::json!([status(pod::CONTAINER, running.clone())])
                ),
                false
            ),
            PodState::Started
        ));
        // A sidecar keeps the pod running; the executor has exited cleanly.
        let pod_with_sidecar = pod(
            "Running",
            serde_json::json!([
                status("sidecar", running),
                status(pod::CONTAINER, exited(0))
            ]),
        );
        assert!(matches!(
            pod_state(&pod_with_sidecar, false),
            PodState::Ended { clean: true, .. }
        ));
        let failed = pod(
            "Failed",
            serde_json::json!([status(pod::CONTAINER, exited(137))]),
        );
        match pod_state(&failed, false) {
            PodState::Ended { reason, clean } => {
                assert!(!clean);
                assert!(reason.contains("137"), "{reason}");
            }
            _ => panic!("a failed pod has ended"),
        }
        let stuck = pod(
            "Pending",
            serde_json::json!([status(
                pod::CONTAINER,
                serde_json::json!({"waiting": {"reason": "ErrImageNeverPull"}})
            )]),
        );
        assert!(matches!(
            pod_state(&stuck, false),
            PodState::Ended { clean: false, .. }
        ));
        let pending = pod("Pending", serde_json::json!([]));
        assert!(matches!(pod_state(&pending, false), PodState::Waiting));
        assert!(matches!(
            pod_state(&pending, true),
            PodState::Ended { clean: false, .. }
        ));
    }

    #[test]
    fn executors_are_told_an_address_they_can_dial() {
        let mut config = EmberConfig::defaults();
        config.kubernetes.coordinator_address = "ember.ember.svc:50050".into();
        assert_eq!(
            coordinator_address(&config, 50050).expect("set"),
            "ember.ember.svc:50050"
        );
        if std::env::var_os("POD_IP").is_some() {
            return;
        }
        config.kubernetes.coordinator_address.clear();
        config.coordinator.cluster_bind_host = "0.0.0.0".into();
        assert!(coordinator_address(&config, 50050).is_err());
        config.coordinator.cluster_bind_host = "fd00::5".into();
        assert_eq!(
            coordinator_address(&config, 50050).expect("v6"),
            "[fd00::5]:50050"
        );
        config.coordinator.cluster_bind_host = "10.1.2.3".into();
        assert_eq!(coordinator_address(&config, 7).expect("v4"), "10.1.2.3:7");
    }
}
