//! The Kubernetes example (`examples/kubernetes/`): every manifest parses, the pod is
//! wired the way its README says, and the rules ConfigMap loads exactly as
//! `sluicegate validate` loads rule files.

use std::path::Path;

use serde::Deserialize;
use serde_norway::Value;
use sluicegate::rules::LimitRegistry;
use sluicegate::settings::{SPECS, parse_duration};

fn manifests() -> Vec<(String, Value)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/kubernetes");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let mut docs = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for doc in serde_norway::Deserializer::from_str(&text) {
            let value = Value::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            docs.push((file.file_name().unwrap().to_string_lossy().into_owned(), value));
        }
    }
    docs
}

fn find<'a>(docs: &'a [(String, Value)], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .map(|(_, v)| v)
        .find(|v| v["kind"].as_str() == Some(kind) && v["metadata"]["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

/// The Deployment's container `name`.
fn container<'a>(docs: &'a [(String, Value)], name: &str) -> &'a Value {
    let deployment = find(docs, "Deployment", "webapp");
    let containers = deployment["spec"]["template"]["spec"]["containers"].as_sequence().unwrap();
    containers.iter().find(|c| c["name"].as_str() == Some(name)).unwrap_or_else(|| panic!("container {name}"))
}

/// The setting `name` as sluicegate in the pod sees it: its container's `env`, or the
/// setting's default.
fn setting(docs: &[(String, Value)], name: &str) -> String {
    let env = container(docs, "sluicegate")["env"].as_sequence().unwrap();
    let given = env.iter().find(|e| e["name"].as_str() == Some(name)).map(|e| str_of(&e["value"]).to_string());
    given.unwrap_or_else(|| SPECS.iter().find(|s| s.env == name).expect("a setting").default.to_string())
}

fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v:?}"))
}

#[test]
fn every_manifest_is_a_named_kubernetes_object() {
    let docs = manifests();
    assert!(docs.len() >= 4, "ConfigMaps, Deployment and Service: {}", docs.len());
    for (file, doc) in &docs {
        assert!(doc["apiVersion"].as_str().is_some(), "{file}: apiVersion");
        assert!(doc["kind"].as_str().is_some(), "{file}: kind");
        assert!(doc["metadata"]["name"].as_str().is_some(), "{file}: metadata.name");
    }
}

#[test]
fn the_rules_configmap_loads_like_sluicegate_validate() {
    let docs = manifests();
    let rules = find(&docs, "ConfigMap", "webapp-ratelimit-rules");
    let data = rules["data"].as_mapping().expect("data");
    assert!(!data.is_empty());
    let files: Vec<(String, String)> =
        data.iter().map(|(k, v)| (str_of(k).to_string(), str_of(v).to_string())).collect();
    let texts: Vec<(&str, &str)> = files.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let snapshot =
        sluicegate::snapshot::load_texts(&texts, false, &LimitRegistry::new()).unwrap_or_else(|e| panic!("{e}"));
    assert!(snapshot.warnings.0.is_empty(), "{}", snapshot.warnings);
    assert!(snapshot.rules.domain("webapp").is_some());
}

#[test]
fn the_pod_is_wired_as_the_readme_says() {
    let docs = manifests();
    let deployment = find(&docs, "Deployment", "webapp");
    let pod = &deployment["spec"]["template"];
    let containers = pod["spec"]["containers"].as_sequence().unwrap();
    let sluicegate = container(&docs, "sluicegate");
    container(&docs, "envoy");
    container(&docs, "app");

    // Probes on /healthcheck at the HTTP port.
    let http_port: u64 = setting(&docs, "PORT").parse().unwrap();
    for probe in ["readinessProbe", "livenessProbe"] {
        let get = &sluicegate[probe]["httpGet"];
        assert_eq!(get["path"].as_str(), Some("/healthcheck"), "{probe}");
        assert_eq!(get["port"].as_u64(), Some(http_port), "{probe}");
    }
    // Resources requested by every container.
    for c in containers {
        assert!(c["resources"]["requests"]["cpu"].as_str().is_some(), "{:?} requests cpu", c["name"]);
        assert!(c["resources"]["requests"]["memory"].as_str().is_some(), "{:?} requests memory", c["name"]);
    }
    // The grace period covers SHUTDOWN_GRACE_PERIOD and the drain (at most 10 s).
    let grace = parse_duration(&setting(&docs, "SHUTDOWN_GRACE_PERIOD")).unwrap();
    let termination = pod["spec"]["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(termination >= grace.as_secs() + 10, "{termination}s < {grace:?} + 10s");
    // The scrape annotation points at the metrics.
    let annotations = &pod["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"].as_str(), Some("true"));
    assert_eq!(annotations["prometheus.io/port"].as_str(), Some(http_port.to_string().as_str()));
    assert_eq!(annotations["prometheus.io/path"].as_str(), Some("/metrics"));

    // The rules ConfigMap is mounted where RUNTIME_* point.
    let mount = sluicegate["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| m["name"].as_str() == Some("rules"))
        .expect("the rules are mounted");
    let expected = format!("{}/{}/config", setting(&docs, "RUNTIME_ROOT"), setting(&docs, "RUNTIME_SUBDIRECTORY"));
    assert_eq!(mount["mountPath"].as_str(), Some(expected.as_str()));
    let volumes = pod["spec"]["volumes"].as_sequence().unwrap();
    let rules_volume = volumes.iter().find(|v| v["name"].as_str() == Some("rules")).unwrap();
    find(&docs, "ConfigMap", str_of(&rules_volume["configMap"]["name"]));

    // The Service selects the pod and targets Envoy's port.
    let service = find(&docs, "Service", "webapp");
    for (k, v) in service["spec"]["selector"].as_mapping().unwrap() {
        assert_eq!(&pod["metadata"]["labels"][str_of(k)], v, "the Service selects the pod");
    }
    let target = str_of(&service["spec"]["ports"][0]["targetPort"]);
    let envoy_ports = container(&docs, "envoy")["ports"].as_sequence().unwrap();
    assert!(envoy_ports.iter().any(|p| p["name"].as_str() == Some(target)), "targets Envoy's {target}");
}

#[test]
fn envoy_in_the_pod_asks_sluicegate_for_the_rules_domain() {
    let docs = manifests();
    let envoy = find(&docs, "ConfigMap", "webapp-envoy");
    let text = str_of(&envoy["data"]["envoy.yaml"]);
    let config: Value = serde_norway::from_str(text).unwrap();
    let listener = &config["static_resources"]["listeners"][0];
    let manager = &listener["filter_chains"][0]["filters"][0]["typed_config"];
    let filter = manager["http_filters"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|f| f["name"].as_str() == Some("envoy.filters.http.ratelimit"))
        .expect("the rate limit filter");
    let rate_limit = &filter["typed_config"];
    assert_eq!(rate_limit["domain"].as_str(), Some("webapp"), "the rules' domain");
    assert_eq!(rate_limit["rate_limit_service"]["transport_api_version"].as_str(), Some("V3"));
    let cluster_name = str_of(&rate_limit["rate_limit_service"]["grpc_service"]["envoy_grpc"]["cluster_name"]);
    let cluster = config["static_resources"]["clusters"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|c| c["name"].as_str() == Some(cluster_name))
        .expect("the sluicegate cluster");
    let address =
        &cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"];
    let grpc_port: u64 = setting(&docs, "GRPC_PORT").parse().unwrap();
    assert_eq!(address["port_value"].as_u64(), Some(grpc_port), "the port sluicegate's gRPC listener uses in the pod");
    assert_eq!(address["address"].as_str(), Some(setting(&docs, "GRPC_HOST").as_str()), "sluicegate's GRPC_HOST");
    assert!(
        cluster["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
            ["explicit_http_config"]["http2_protocol_options"]
            .is_mapping(),
        "gRPC needs HTTP/2"
    );
    // The listener is the port the Deployment names for Envoy.
    let port = listener["address"]["socket_address"]["port_value"].as_u64();
    let envoy_ports = container(&docs, "envoy")["ports"].as_sequence().unwrap();
    assert!(envoy_ports.iter().any(|p| p["containerPort"].as_u64() == port), "{port:?} not in {envoy_ports:?}");
}
