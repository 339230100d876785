//! The Kubernetes manifests: the pod runs the image with the shipped config, every object
//! selects the gateway's pods, and each replica keeps its durable log on a claim of its own.

use std::collections::{BTreeMap, BTreeSet};

use otelgate::Config;
use serde_json::Value;

use super::image::{image_log_dir, Dockerfile};
use super::{
    host_port, load_config, parse_memory, read, repo, str_of, yaml, yaml_docs, ADMIN, OTLP_GRPC,
    OTLP_HTTP,
};

fn kubernetes() -> Vec<Value> {
    let dir = repo("deploy/kubernetes");
    let kustomization = yaml("deploy/kubernetes/kustomization.yaml");
    let listed: BTreeSet<String> = kustomization["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_owned())
        .collect();
    let present: BTreeSet<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    assert_eq!(
        listed, present,
        "kustomization.yaml resources and the files differ"
    );
    present
        .iter()
        .flat_map(|name| yaml_docs(&read(&format!("deploy/kubernetes/{name}")), name))
        .collect()
}

fn object<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind}/{name}"))
}

fn selects(selector: &Value, labels: &Value) -> bool {
    selector
        .as_object()
        .is_some_and(|s| !s.is_empty() && s.iter().all(|(k, v)| &labels[k] == v))
}

/// The gateway as the manifests run it.
pub(super) struct KubernetesGateway {
    objects: Vec<Value>,
    /// The StatefulSet `otelgate`.
    set: Value,
    /// Its pod template.
    pod: Value,
    /// The config the pod would load: the ConfigMap's otelgate.toml with the image's `ENV` and
    /// the pod's environment (dummy values for secrets).
    pub(super) config: Config,
}

pub(super) fn kubernetes_gateway() -> KubernetesGateway {
    let objects = kubernetes();
    assert!(
        objects.iter().all(|o| o["kind"] != "Secret"),
        "manifests must reference Secrets, not carry them"
    );
    // Each replica needs its own log volume back after a restart: not a Deployment.
    let workloads: Vec<String> = objects
        .iter()
        .filter(|o| {
            ["Deployment", "ReplicaSet", "DaemonSet", "StatefulSet"]
                .contains(&o["kind"].as_str().unwrap_or(""))
        })
        .map(|o| {
            let name = o["metadata"]["name"].as_str().unwrap_or("");
            format!("{}/{name}", o["kind"].as_str().unwrap())
        })
        .collect();
    assert_eq!(workloads, ["StatefulSet/otelgate"]);
    let set = object(&objects, "StatefulSet", "otelgate").clone();
    let pod = set["spec"]["template"].clone();
    assert!(selects(
        &set["spec"]["selector"]["matchLabels"],
        &pod["metadata"]["labels"]
    ));
    let container = &pod["spec"]["containers"][0];
    let mut env = BTreeMap::new();
    for var in container["env"].as_array().unwrap() {
        let name = str_of(&var["name"], "env name").to_owned();
        let value = match var["value"].as_str() {
            Some(v) => v.to_owned(),
            None => {
                let key = &var["valueFrom"]["secretKeyRef"];
                assert!(
                    key["name"].is_string() && key["key"].is_string(),
                    "{name}: neither value nor secretKeyRef"
                );
                format!("dummy-{}", key["key"].as_str().unwrap())
            }
        };
        let secret = ["PASSWORD", "DSN", "TOKEN", "SECRET"]
            .iter()
            .any(|s| name.contains(s));
        assert!(
            !secret || var["value"].is_null(),
            "{name} must come from a Secret"
        );
        env.insert(name, value);
    }
    let env = Dockerfile::load().container_env(&env);
    let config_map = object(&objects, "ConfigMap", "otelgate-config");
    let toml = str_of(&config_map["data"]["otelgate.toml"], "otelgate.toml");
    let config = load_config(toml, "deploy/kubernetes/configmap.yaml", &env);
    KubernetesGateway {
        objects,
        set,
        pod,
        config,
    }
}

#[test]
fn kubernetes_pod_runs_the_image_with_the_shipped_config() {
    let KubernetesGateway { pod, config, .. } = kubernetes_gateway();
    let container = &pod["spec"]["containers"][0];
    assert_eq!(config.telemetry.admin_endpoint, format!("0.0.0.0:{ADMIN}"));

    let ports: BTreeMap<&str, u64> = container["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap(),
                p["containerPort"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        ports,
        BTreeMap::from([
            ("admin", ADMIN as u64),
            ("otlp-grpc", OTLP_GRPC as u64),
            ("otlp-http", OTLP_HTTP as u64)
        ])
    );
    assert_eq!(host_port(&config.receiver.grpc_endpoint).1, OTLP_GRPC);
    assert_eq!(host_port(&config.receiver.http_endpoint).1, OTLP_HTTP);
    for (probe, path) in [
        ("startupProbe", "/healthz"),
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
    ] {
        assert_eq!(container[probe]["httpGet"]["path"], path, "{probe}");
        assert_eq!(container[probe]["httpGet"]["port"], "admin", "{probe}");
    }

    // The config file lands where the image's ENTRYPOINT reads it.
    let mount = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "config")
        .unwrap();
    let volume = pod["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "config")
        .unwrap();
    assert_eq!(volume["configMap"]["name"], "otelgate-config");
    let file = format!(
        "{}/{}",
        mount["mountPath"].as_str().unwrap(),
        volume["configMap"]["items"][0]["path"].as_str().unwrap()
    );
    assert!(Dockerfile::load().entrypoint().contains(&file), "{file}");
    let user = Dockerfile::load()
        .user()
        .split(':')
        .next()
        .unwrap()
        .parse::<u64>()
        .unwrap();
    assert_eq!(pod["spec"]["securityContext"]["runAsUser"], user);

    // Shutdown and memory.
    let grace = pod["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .unwrap();
    assert!(
        grace > config.pipeline.shutdown_timeout_seconds + 5,
        "grace period {grace}"
    );
    let limit = parse_memory(str_of(
        &container["resources"]["limits"]["memory"],
        "memory limit",
    ));
    assert!(limit >= config.pipeline.memory_budget_bytes + (256 << 20));
}

#[test]
fn kubernetes_objects_select_the_gateway_pods() {
    let KubernetesGateway {
        objects,
        pod,
        config,
        ..
    } = kubernetes_gateway();
    let labels = &pod["metadata"]["labels"];
    // Services, autoscaling, disruption budget, network policy and scraping select the pods.
    let service = object(&objects, "Service", "otelgate");
    assert!(selects(&service["spec"]["selector"], labels));
    let targets: BTreeMap<u64, &str> = service["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["port"].as_u64().unwrap(),
                p["targetPort"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        targets,
        BTreeMap::from([
            (OTLP_GRPC as u64, "otlp-grpc"),
            (OTLP_HTTP as u64, "otlp-http")
        ])
    );
    let admin = object(&objects, "Service", "otelgate-admin");
    assert!(selects(&admin["spec"]["selector"], labels));
    assert_eq!(admin["spec"]["ports"][0]["targetPort"], "admin");
    let monitor = object(&objects, "ServiceMonitor", "otelgate");
    assert!(selects(
        &monitor["spec"]["selector"]["matchLabels"],
        &admin["metadata"]["labels"]
    ));
    assert!(
        !selects(
            &monitor["spec"]["selector"]["matchLabels"],
            &service["metadata"]["labels"]
        ),
        "the ServiceMonitor must not scrape the OTLP Service"
    );
    assert_eq!(
        monitor["spec"]["endpoints"][0]["port"],
        admin["spec"]["ports"][0]["name"]
    );
    assert_eq!(monitor["spec"]["endpoints"][0]["path"], "/metrics");
    let hpa = object(&objects, "HorizontalPodAutoscaler", "otelgate");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["kind"], "StatefulSet");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["apiVersion"], "apps/v1");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], "otelgate");
    let pdb = object(&objects, "PodDisruptionBudget", "otelgate");
    assert!(selects(&pdb["spec"]["selector"]["matchLabels"], labels));
    assert!(
        pdb["spec"]["minAvailable"].as_u64().unwrap()
            < hpa["spec"]["minReplicas"].as_u64().unwrap()
    );
    let policy = object(&objects, "NetworkPolicy", "otelgate");
    assert!(selects(
        &policy["spec"]["podSelector"]["matchLabels"],
        labels
    ));
    let port_set = |rules: &Value| -> BTreeSet<u64> {
        rules
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| r["ports"].as_array().unwrap())
            .map(|p| p["port"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(
        port_set(&policy["spec"]["ingress"]),
        BTreeSet::from([OTLP_GRPC as u64, OTLP_HTTP as u64, ADMIN as u64])
    );
    let sink: tokio_postgres::Config = config.timescale.as_ref().unwrap().url.parse().unwrap();
    let egress = port_set(&policy["spec"]["egress"]);
    assert!(
        egress.contains(&(sink.get_ports()[0] as u64)),
        "egress does not allow the database port"
    );
    for exporter in config.exporters.values() {
        assert!(
            egress.contains(&(host_port(&exporter.endpoint).1 as u64)),
            "egress does not allow {}",
            exporter.endpoint
        );
    }
}

#[test]
fn kubernetes_replicas_keep_their_log_on_a_claim_of_their_own() {
    let KubernetesGateway {
        objects,
        set,
        pod,
        config,
    } = kubernetes_gateway();
    let image_dir = image_log_dir(&Dockerfile::load());
    assert!(config.log.enabled, "the pods run with the durable log");
    let dir = config.log.dir.to_str().expect("UTF-8 log.dir").to_owned();
    assert_eq!(
        dir, image_dir,
        "the pod moves the log off the image's volume"
    );
    let container = &pod["spec"]["containers"][0];
    assert_eq!(
        container["securityContext"]["readOnlyRootFilesystem"], true,
        "the root filesystem is read-only, so the log must be on a mount"
    );
    let mounts = container["volumeMounts"].as_array().unwrap();
    let mount = mounts
        .iter()
        .find(|m| m["mountPath"] == dir.as_str())
        .unwrap_or_else(|| panic!("nothing is mounted at log.dir {dir}"));
    assert_ne!(mount["readOnly"], true, "the log volume is read-only");
    let name = str_of(&mount["name"], "volumeMounts name");
    // From a claim template, so that the volume comes back with the pod: a pod volume
    // (emptyDir) would lose the log, a shared claim would put two gateways on one log.
    assert!(
        !pod["spec"]["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|v| v["name"] == name),
        "`{name}` at {dir} must come from volumeClaimTemplates, not the pod's volumes"
    );
    let claim = set["spec"]["volumeClaimTemplates"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no volumeClaimTemplate `{name}`"));
    let modes: Vec<&str> = claim["spec"]["accessModes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    assert!(
        !modes.is_empty()
            && modes
                .iter()
                .all(|m| ["ReadWriteOnce", "ReadWriteOncePod"].contains(m)),
        "claim `{name}`: access modes {modes:?}, want one writer"
    );
    let size = parse_memory(str_of(
        &claim["spec"]["resources"]["requests"]["storage"],
        "storage request",
    ));
    assert!(
        size >= config.log.max_bytes + config.log.min_free_bytes,
        "claim `{name}` ({size} bytes) is smaller than log.max_bytes + log.min_free_bytes"
    );
    // Scaling down or deleting must not delete a claim that still holds undelivered data.
    let retention = &set["spec"]["persistentVolumeClaimRetentionPolicy"];
    for when in ["whenScaled", "whenDeleted"] {
        assert!(
            retention[when].is_null() || retention[when] == "Retain",
            "persistentVolumeClaimRetentionPolicy.{when} deletes logs"
        );
    }
    assert_eq!(set["spec"]["podManagementPolicy"], "Parallel");
    let governing = object(
        &objects,
        "Service",
        str_of(&set["spec"]["serviceName"], "serviceName"),
    );
    assert_eq!(
        governing["spec"]["clusterIP"], "None",
        "serviceName must be headless"
    );
    assert!(selects(
        &governing["spec"]["selector"],
        &pod["metadata"]["labels"]
    ));
}
