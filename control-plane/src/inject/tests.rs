//! The injection function on its own: both sidecar forms, idempotence,
//! opt-out, and annotations read or refused.

use serde_json::{json, Value};

use super::*;

fn pod(annotations: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "reviews-v1-abc",
            "namespace": "shop",
            "labels": {"app": "reviews", "version": "v1"},
            "annotations": annotations,
        },
        "spec": {
            "serviceAccountName": "reviews",
            "initContainers": [{"name": "migrate", "image": "trellis-echo"}],
            "containers": [{"name": "reviews", "image": "trellis-echo", "ports": [{"containerPort": 9080}]}],
            "volumes": [{"name": "data", "emptyDir": {}}],
        }
    })
}

fn injected(pod: &Value, form: SidecarForm) -> Value {
    let Ok(Injection::Patch(ops)) = patch(pod, &InjectSettings::default(), form) else {
        panic!("a patch expected");
    };
    let mut out = pod.clone();
    apply(&mut out, &ops).expect("applies");
    out
}

fn names(list: &Value) -> Vec<&str> {
    list.as_array()
        .expect("a list")
        .iter()
        .map(|c| c["name"].as_str().expect("a name"))
        .collect()
}

#[test]
fn classic_form_puts_the_proxy_first_and_holds_the_app() {
    let out = injected(&pod(json!({})), SidecarForm::Classic);
    let spec = &out["spec"];
    assert_eq!(names(&spec["initContainers"]), ["trellis-init", "migrate"]);
    assert_eq!(names(&spec["containers"]), ["trellis-proxy", "reviews"]);
    let proxy = &spec["containers"][0];
    assert_eq!(proxy["securityContext"]["runAsUser"], 1337);
    assert_eq!(
        proxy["lifecycle"]["postStart"]["exec"]["command"][1],
        "wait-ready"
    );
    assert_eq!(proxy["readinessProbe"]["httpGet"]["port"], PROXY_ADMIN_PORT);
    assert!(proxy.get("restartPolicy").is_none());
    let init = &spec["initContainers"][0];
    assert_eq!(init["args"][0], "init-iptables");
    assert_eq!(init["securityContext"]["runAsUser"], 0);
    assert_eq!(
        init["securityContext"]["capabilities"]["add"],
        json!(["NET_ADMIN", "NET_RAW"])
    );
    assert_eq!(
        names(&spec["volumes"]),
        ["data", "trellis-token", "trellis-ca", "trellis-podinfo"]
    );
    assert_eq!(
        spec["volumes"][1]["projected"]["sources"][0]["serviceAccountToken"]["audience"],
        "trellis"
    );
    assert_eq!(
        out["metadata"]["annotations"][STATUS_ANNOTATION],
        "injected"
    );
    let args: Vec<&str> = names_of_args(proxy);
    let service = args
        .iter()
        .position(|a| *a == "--service")
        .expect("--service");
    assert_eq!(args[service + 1], "reviews", "from the app label");
}

fn names_of_args(container: &Value) -> Vec<&str> {
    container["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| a.as_str().expect("a string"))
        .collect()
}

#[test]
fn native_form_is_an_init_container_that_always_restarts() {
    let out = injected(&pod(json!({})), SidecarForm::Native);
    let spec = &out["spec"];
    assert_eq!(
        names(&spec["initContainers"]),
        ["trellis-init", "trellis-proxy", "migrate"]
    );
    assert_eq!(names(&spec["containers"]), ["reviews"]);
    let proxy = &spec["initContainers"][1];
    assert_eq!(proxy["restartPolicy"], "Always");
    assert_eq!(proxy["startupProbe"]["httpGet"]["path"], "/ready");
    assert!(proxy.get("lifecycle").is_none());
    assert_eq!(SidecarForm::for_version(1, 29), SidecarForm::Native);
    assert_eq!(SidecarForm::for_version(1, 20), SidecarForm::Classic);
    assert_eq!(SidecarForm::for_version(2, 0), SidecarForm::Native);
}

#[test]
fn an_injected_or_opted_out_pod_is_left_alone() {
    let once = injected(&pod(json!({})), SidecarForm::Classic);
    let settings = InjectSettings::default();
    assert_eq!(
        patch(&once, &settings, SidecarForm::Classic),
        Ok(Injection::Skipped(Skip::AlreadyInjected))
    );
    assert_eq!(
        patch(
            &pod(json!({INJECT_ANNOTATION: "false"})),
            &settings,
            SidecarForm::Classic
        ),
        Ok(Injection::Skipped(Skip::OptedOut))
    );
    let mut host = pod(json!({}));
    host["spec"]["hostNetwork"] = json!(true);
    assert_eq!(
        patch(&host, &settings, SidecarForm::Classic),
        Ok(Injection::Skipped(Skip::HostNetwork))
    );
}

#[test]
fn annotations_tune_the_sidecar() {
    let out = injected(
        &pod(json!({
            "traffic.sidecar.trellis.io/excludeOutboundPorts": "5432, 6379",
            "traffic.sidecar.istio.io/excludeOutboundIPRanges": "10.0.0.0/8",
            "traffic.sidecar.trellis.io/includeInboundPorts": "9080",
            "sidecar.trellis.io/proxyMemoryLimit": "512Mi",
            "sidecar.trellis.io/proxyCPU": "200m",
            "sidecar.trellis.io/logLevel": "debug",
        })),
        SidecarForm::Classic,
    );
    let init = names_of_args(&out["spec"]["initContainers"][0]);
    for pair in [
        ["--exclude-outbound-ports", "5432,6379"],
        ["--exclude-outbound-cidrs", "10.0.0.0/8"],
        ["--include-inbound-ports", "9080"],
    ] {
        assert!(init.windows(2).any(|w| w == pair), "{pair:?} in {init:?}");
    }
    let proxy = &out["spec"]["containers"][0];
    assert_eq!(proxy["resources"]["limits"]["memory"], "512Mi");
    assert_eq!(proxy["resources"]["requests"]["cpu"], "200m");
    assert_eq!(proxy["resources"]["requests"]["memory"], "64Mi");
    let env = proxy["env"].as_array().expect("env");
    assert!(env
        .iter()
        .any(|e| e["name"] == "TRELLIS_LOG" && e["value"] == "debug"));
}

#[test]
fn an_annotation_it_cannot_honour_is_refused_by_name() {
    let settings = InjectSettings::default();
    for (key, value, message) in [
        (
            "sidecar.trellis.io/proxyImage",
            "x",
            "not an annotation Trellis knows",
        ),
        (
            "sidecar.trellis.io/inject",
            "yes",
            "is not \"true\" or \"false\"",
        ),
        (
            "traffic.sidecar.trellis.io/excludeOutboundPorts",
            "5432,http",
            "\"http\" is not a port",
        ),
        (
            "traffic.sidecar.istio.io/includeOutboundIPRanges",
            "10.0.0.0/33",
            "is not a CIDR",
        ),
        (
            "sidecar.trellis.io/proxyMemory",
            "lots",
            "is not a quantity",
        ),
    ] {
        let err =
            patch(&pod(json!({key: value})), &settings, SidecarForm::Classic).expect_err("refused");
        assert_eq!(err.annotation, key);
        assert!(err.to_string().contains(message), "{err}");
        assert!(
            err.to_string().starts_with("metadata.annotations["),
            "{err}"
        );
    }
    // Istio's own (non-traffic) annotations are not ours to judge.
    assert!(matches!(
        patch(
            &pod(json!({"sidecar.istio.io/rewriteAppHTTPProbers": "true"})),
            &settings,
            SidecarForm::Classic
        ),
        Ok(Injection::Patch(_))
    ));
}

#[test]
fn a_template_without_annotations_or_metadata_gets_them() {
    let template = json!({"spec": {"containers": [{"name": "web", "image": "trellis-echo"}]}});
    let out = injected(&template, SidecarForm::Classic);
    assert_eq!(
        out["metadata"]["annotations"][STATUS_ANNOTATION],
        "injected"
    );
    assert_eq!(names(&out["spec"]["containers"]), ["trellis-proxy", "web"]);
}

#[test]
fn http_probes_move_to_the_sidecar_and_it_knows_where_they_went() {
    let mut p = pod(json!({}));
    p["spec"]["containers"][0]["ports"] = json!([{"name": "web", "containerPort": 9080}]);
    p["spec"]["containers"][0]["readinessProbe"] =
        json!({"httpGet": {"path": "/healthz", "port": "web"}, "periodSeconds": 3});
    p["spec"]["containers"][0]["livenessProbe"] =
        json!({"httpGet": {"path": "/tls", "port": 8443, "scheme": "HTTPS"}});
    let out = injected(&p, SidecarForm::Classic);
    let app = &out["spec"]["containers"][1];
    assert_eq!(
        app["readinessProbe"],
        json!({"httpGet": {"path": "/app-health/reviews/readyz", "port": PROXY_ADMIN_PORT, "scheme": "HTTP"}, "periodSeconds": 3})
    );
    assert_eq!(
        app["livenessProbe"]["httpGet"]["port"], 8443,
        "HTTPS left alone"
    );
    let env = out["spec"]["containers"][0]["env"].as_array().expect("env");
    let probes = env
        .iter()
        .find(|e| e["name"] == "TRELLIS_APP_PROBES")
        .expect("the sidecar learns the probes");
    let probes: Value =
        serde_json::from_str(probes["value"].as_str().expect("a string")).expect("JSON");
    assert_eq!(
        probes,
        json!({"/app-health/reviews/readyz": {"port": 9080, "path": "/healthz"}})
    );
    let kept = injected(
        &{
            let mut q = p.clone();
            q["metadata"]["annotations"] = json!({REWRITE_ANNOTATION: "false"});
            q
        },
        SidecarForm::Classic,
    );
    assert_eq!(
        kept["spec"]["containers"][1]["readinessProbe"]["httpGet"]["port"],
        "web"
    );
}
