//! Executor pods: the template (built in, or a file as Spark's `podTemplateFile`) and what Ember
//! sets on it for each executor it asks for.

use std::collections::BTreeMap;

use ember_coordinator::ExecutorRequest;
use k8s_openapi::api::core::v1::{
    Container, EnvVar, EnvVarSource, ObjectFieldSelector, Pod, PodSpec, ResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

/// Labels every executor pod carries.
pub const NAME_LABEL: &str = "app.kubernetes.io/name";
/// `executor`.
pub const COMPONENT_LABEL: &str = "app.kubernetes.io/component";
/// `kubernetes.cluster_name`.
pub const INSTANCE_LABEL: &str = "app.kubernetes.io/instance";
/// The coordinator run that created the pod: a restarted coordinator removes the others.
pub const RUN_LABEL: &str = "ember.sql/run";
/// The allocation the executor registers with.
pub const ALLOCATION_LABEL: &str = "ember.sql/allocation";

/// The container that runs the executor: the template's container of this name, else its first.
pub const CONTAINER: &str = "executor";

/// Slots of an executor whose request leaves them to the cluster manager.
const DEFAULT_SLOTS: usize = 1;
/// Memory of an executor whose request leaves it to the cluster manager (Spark's 1g).
const DEFAULT_MEMORY: u64 = 1 << 30;
/// Memory beyond the task pool a container gets (Spark's overhead: 10%, at least 384 MiB).
const MIN_OVERHEAD: u64 = 384 << 20;

/// What the coordinator sets on every executor pod.
#[derive(Debug, Clone)]
pub struct PodSettings {
    pub(crate) cluster_name: String,
    pub(crate) run: String,
    pub(crate) image: String,
    pub(crate) image_pull_policy: String,
    pub(crate) coordinator_address: String,
    pub(crate) owner: Option<OwnerReference>,
    pub(crate) service_account: String,
    /// Seconds Kubernetes waits after SIGTERM before SIGKILL: the executor's decommission grace
    /// period and some.
    pub(crate) termination_grace_seconds: i64,
}

impl PodSettings {
    /// The label selector of every executor pod of this Ember cluster.
    pub fn cluster_selector(&self) -> String {
        format!(
            "{NAME_LABEL}=ember,{COMPONENT_LABEL}=executor,{INSTANCE_LABEL}={}",
            self.cluster_name
        )
    }

    /// The label selector of this run's executor pods.
    pub fn run_selector(&self) -> String {
        format!("{},{RUN_LABEL}={}", self.cluster_selector(), self.run)
    }
}

/// The built-in template: one container, nothing else; Ember fills in the rest.
pub fn default_template() -> Pod {
    Pod {
        spec: Some(PodSpec {
            containers: vec![Container {
                name: CONTAINER.into(),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Reads a pod template file (YAML or JSON, a Pod).
pub fn read_template(path: &std::path::Path) -> Result<Pod, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the pod template {}: {e}", path.display()))?;
    let pod: Pod = serde_yaml::from_str(&text)
        .map_err(|e| format!("the pod template {} is not a Pod: {e}", path.display()))?;
    Ok(pod)
}

/// The pod's name for an allocation (allocation ids are lowercase letters, digits and `-`).
pub fn pod_name(settings: &PodSettings, allocation_id: &str) -> String {
    let suffix = allocation_id
        .strip_prefix("kubernetes-")
        .unwrap_or(allocation_id);
    format!("{}-exec-{suffix}", settings.cluster_name)
}

/// The executor pod for `request`, from `template`.
pub fn executor_pod(template: &Pod, settings: &PodSettings, request: &ExecutorRequest) -> Pod {
    let mut pod = template.clone();
    let metadata = &mut pod.metadata;
    metadata.name = Some(pod_name(settings, &request.allocation_id));
    metadata.generate_name = None;
    metadata.namespace = None;
    metadata.resource_version = None;
    metadata.uid = None;
    let labels = metadata.labels.get_or_insert_with(BTreeMap::new);
    labels.insert(NAME_LABEL.into(), "ember".into());
    labels.insert(COMPONENT_LABEL.into(), "executor".into());
    labels.insert(INSTANCE_LABEL.into(), settings.cluster_name.clone());
    labels.insert(RUN_LABEL.into(), settings.run.clone());
    labels.insert(ALLOCATION_LABEL.into(), request.allocation_id.clone());
    if let Some(owner) = &settings.owner {
        metadata.owner_references = Some(vec![owner.clone()]);
    }
    pod.status = None;

    let spec = pod.spec.get_or_insert_with(PodSpec::default);
    // An executor that ends is replaced by the coordinator, never restarted in place.
    spec.restart_policy = Some("Never".into());
    if spec.termination_grace_period_seconds.is_none() {
        spec.termination_grace_period_seconds = Some(settings.termination_grace_seconds);
    }
    if !settings.service_account.is_empty() {
        spec.service_account_name = Some(settings.service_account.clone());
    }
    if spec.containers.is_empty() {
        spec.containers.push(Container::default());
    }
    let index = spec
        .containers
        .iter()
        .position(|c| c.name == CONTAINER)
        .unwrap_or(0);
    let container = &mut spec.containers[index];
    if container.name.is_empty() {
        container.name = CONTAINER.into();
    }
    if container.image.as_deref().unwrap_or("").is_empty() {
        container.image = Some(settings.image.clone());
    }
    if container.image_pull_policy.is_none() {
        container.image_pull_policy = Some(settings.image_pull_policy.clone());
    }
    let slots = match request.slots {
        0 => DEFAULT_SLOTS,
        slots => slots,
    };
    let memory = match request.memory {
        0 => DEFAULT_MEMORY,
        memory => memory,
    };
    container.args = Some(vec![
        "executor".into(),
        "--coordinator".into(),
        settings.coordinator_address.clone(),
        "--slots".into(),
        slots.to_string(),
        "--memory".into(),
        memory.to_string(),
        // Each pod has its own address: any free port, registered with the coordinator.
        "--flight-port".into(),
        "0".into(),
        "--bind".into(),
        "$(POD_IP)".into(),
    ]);
    let env = container.env.get_or_insert_with(Vec::new);
    env.retain(|v| {
        !["POD_IP", "POD_NAME", "EMBER_EXECUTOR_ALLOCATION_ID"].contains(&v.name.as_str())
    });
    env.insert(0, field_env("POD_NAME", "metadata.name"));
    env.insert(0, field_env("POD_IP", "status.podIP"));
    env.push(EnvVar {
        name: "EMBER_EXECUTOR_ALLOCATION_ID".into(),
        value: Some(request.allocation_id.clone()),
        value_from: None,
    });
    let overhead = (memory / 10).max(MIN_OVERHEAD);
    let resources = container
        .resources
        .get_or_insert_with(ResourceRequirements::default);
    let requests = resources.requests.get_or_insert_with(BTreeMap::new);
    requests.insert("cpu".into(), Quantity(slots.to_string()));
    requests.insert("memory".into(), Quantity((memory + overhead).to_string()));
    let limits = resources.limits.get_or_insert_with(BTreeMap::new);
    limits.insert("memory".into(), Quantity((memory + overhead).to_string()));
    pod
}

fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                api_version: None,
                field_path: path.into(),
            }),
            ..Default::default()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> PodSettings {
        PodSettings {
            cluster_name: "ember".into(),
            run: "0a1b2c3d".into(),
            image: "ember:1".into(),
            image_pull_policy: "IfNotPresent".into(),
            coordinator_address: "10.0.0.5:50050".into(),
            owner: Some(OwnerReference {
                api_version: "v1".into(),
                kind: "Pod".into(),
                name: "ember-coordinator-0".into(),
                uid: "1234".into(),
                controller: Some(true),
                block_owner_deletion: None,
            }),
            service_account: String::new(),
            termination_grace_seconds: 30,
        }
    }

    fn request() -> ExecutorRequest {
        ExecutorRequest {
            allocation_id: "kubernetes-5e6f7a8b-3".into(),
            slots: 2,
            memory: 2 << 30,
        }
    }

    #[test]
    fn the_built_in_template_gives_a_complete_executor_pod() {
        let pod = executor_pod(&default_template(), &settings(), &request());
        assert_eq!(pod.metadata.name.as_deref(), Some("ember-exec-5e6f7a8b-3"));
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        assert_eq!(labels[COMPONENT_LABEL], "executor");
        assert_eq!(labels[INSTANCE_LABEL], "ember");
        assert_eq!(labels[RUN_LABEL], "0a1b2c3d");
        assert_eq!(labels[ALLOCATION_LABEL], "kubernetes-5e6f7a8b-3");
        assert_eq!(
            pod.metadata.owner_references.as_ref().map(Vec::len),
            Some(1)
        );
        let spec = pod.spec.expect("a spec");
        assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
        assert_eq!(spec.termination_grace_period_seconds, Some(30));
        let container = &spec.containers[0];
        assert_eq!(container.image.as_deref(), Some("ember:1"));
        let args = container.args.clone().unwrap_or_default();
        assert_eq!(args[..3], ["executor", "--coordinator", "10.0.0.5:50050"]);
        assert!(args.windows(2).any(|w| w == ["--slots", "2"]));
        assert!(args.windows(2).any(|w| w == ["--bind", "$(POD_IP)"]));
        let env = container.env.clone().unwrap_or_default();
        assert!(env.iter().any(|v| v.name == "EMBER_EXECUTOR_ALLOCATION_ID"
            && v.value.as_deref() == Some("kubernetes-5e6f7a8b-3")));
        let resources = container.resources.clone().expect("resources");
        assert_eq!(
            resources.requests.expect("requests")["cpu"],
            Quantity("2".into())
        );
        // The task pool and an overhead of 10%, at least 384 MiB (more than 10% of 2 GiB).
        let limit = &resources.limits.expect("limits")["memory"];
        assert_eq!(limit.0, ((2u64 << 30) + (384u64 << 20)).to_string());
        // It is valid as the API would take it.
        let json = serde_json::to_value(&pod.metadata).expect("json");
        assert_eq!(json["ownerReferences"][0]["uid"], "1234");
    }

    /// The manifests in config/k8s: the ConfigMap's ember.toml is a valid configuration for the
    /// kubernetes cluster manager, and its pod template makes an executor pod that keeps the
    /// secrets and volumes it declares.
    #[test]
    fn the_shipped_configmap_holds_a_valid_configuration_and_pod_template() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../config/k8s/configmap.yaml"
        );
        let text = std::fs::read_to_string(path).expect("config/k8s/configmap.yaml");
        let map: k8s_openapi::api::core::v1::ConfigMap =
            serde_yaml::from_str(&text).expect("a ConfigMap");
        let data = map.data.expect("data");
        let config = ember_config::ConfigBuilder::new()
            .toml(&data["ember.toml"], "configmap.yaml")
            .and_then(|b| b.build())
            .expect("a valid configuration");
        assert_eq!(config.cluster_manager.kind, "kubernetes");
        assert_eq!(
            config.kubernetes.pod_template_file,
            std::path::Path::new("/etc/ember/executor-pod.yaml")
        );
        let template: Pod = serde_yaml::from_str(&data["executor-pod.yaml"]).expect("a Pod");
        let pod = executor_pod(&template, &settings(), &request());
        let spec = pod.spec.expect("a spec");
        assert_eq!(spec.automount_service_account_token, Some(false));
        let container = &spec.containers[0];
        assert_eq!(container.image.as_deref(), Some("ember:1"));
        let env = container.env.clone().unwrap_or_default();
        for name in ["EMBER_CONFIG", "EMBER_AUTH_CLUSTER_SECRET", "POD_IP"] {
            assert!(env.iter().any(|v| v.name == name), "{name} missing");
        }
        assert_eq!(container.volume_mounts.as_ref().map(Vec::len), Some(3));
    }

    #[test]
    fn a_template_file_keeps_what_it_sets_and_gets_what_ember_needs() {
        let dir = std::env::temp_dir().join(format!("ember-pod-template-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a dir");
        let path = dir.join("executor.yaml");
        std::fs::write(
            &path,
            "apiVersion: v1\nkind: Pod\nmetadata:\n  labels:\n    team: data\nspec:\n  \
             nodeSelector:\n    pool: spot\n  terminationGracePeriodSeconds: 90\n  containers:\n  \
             - name: sidecar\n    image: busybox\n  - name: executor\n    image: registry/ember:2\n    \
             env:\n    - name: EMBER_AUTH_CLUSTER_SECRET\n      valueFrom:\n        secretKeyRef:\n          \
             name: ember-cluster\n          key: secret\n",
        )
        .expect("write");
        let template = read_template(&path).expect("a pod");
        let pod = executor_pod(&template, &settings(), &request());
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        assert_eq!(labels["team"], "data");
        assert_eq!(labels[COMPONENT_LABEL], "executor");
        let spec = pod.spec.expect("a spec");
        assert_eq!(spec.termination_grace_period_seconds, Some(90));
        assert_eq!(spec.node_selector.expect("kept")["pool"], "spot");
        assert_eq!(spec.containers[0].args, None, "the sidecar is left alone");
        let executor = &spec.containers[1];
        assert_eq!(executor.image.as_deref(), Some("registry/ember:2"));
        let env = executor.env.clone().unwrap_or_default();
        assert!(env.iter().any(|v| v.name == "EMBER_AUTH_CLUSTER_SECRET"));
        assert!(env.iter().any(|v| v.name == "POD_IP"));
        assert!(read_template(&dir.join("missing.yaml")).is_err());
        std::fs::write(&path, "spec: [1, 2]").expect("write");
        assert!(read_template(&path).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
