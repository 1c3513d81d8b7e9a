//! The `[kubernetes]` section: how the `kubernetes` cluster manager makes executor pods.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The `[kubernetes]` section (used when `cluster_manager.kind = "kubernetes"`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesConfig {
    /// Namespace of the executor pods; empty: the coordinator's own (its service account's),
    /// else `default`.
    pub namespace: String,
    /// Image of the executor container.
    pub image: String,
    /// `imagePullPolicy` of the executor container.
    pub image_pull_policy: String,
    /// A pod template (YAML) the executor pods start from; empty: the built-in one.
    pub pod_template_file: PathBuf,
    /// `host:port` executors dial to register; empty: `$POD_IP` (else
    /// `coordinator.cluster_bind_host`) and `coordinator.port`.
    pub coordinator_address: String,
    /// The coordinator's pod, owner of the executor pods (so they go when it goes); empty:
    /// `$POD_NAME`, else none.
    pub coordinator_pod: String,
    /// Names this Ember cluster in the pods' labels: a restarted coordinator removes the
    /// executor pods of its earlier runs found by it.
    pub cluster_name: String,
    /// Service account of the executor pods; empty: the namespace's default.
    pub service_account: String,
}
