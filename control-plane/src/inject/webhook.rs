//! The injection webhook (`--webhook-addr`, default `:15017`, with
//! `--kubernetes`): HTTPS with a certificate from the mesh root for the
//! webhook Service's DNS names, `POST /inject` takes an AdmissionReview v1
//! of a Pod and answers with [`super::patch`]'s JSON Patch (or a refusal
//! naming the annotation at fault). The sidecar's form follows the
//! apiserver's version. [`keep_ca_bundle`] writes the mesh root into the
//! MutatingWebhookConfiguration's `caBundle`, as Istio and Linkerd do, so
//! installing needs no certificate tooling.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use kube::api::PostParams;
use kube::{Api, Client};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::watch;
use trellis_api::tls::channel::{self, Identity};

use super::{patch, InjectSettings, Injection, SidecarForm};
use crate::ca::sign::serving_certificate;
use crate::ca::CaRecord;

/// How long the webhook's serving certificate is valid (issued at start).
const SERVING_TTL: Duration = Duration::from_secs(365 * 24 * 3600);
/// The largest AdmissionReview accepted.
const MAX_BODY: usize = 4 << 20;

/// What the webhook needs.
#[derive(Clone, Debug)]
pub struct Webhook {
    pub settings: InjectSettings,
    pub form: SidecarForm,
}

/// The form the apiserver's version supports.
pub async fn form_of(client: &Client) -> Result<SidecarForm, kube::Error> {
    let info = client.apiserver_version().await?;
    let number = |s: &str| {
        s.trim_end_matches(|c: char| !c.is_ascii_digit())
            .parse::<u32>()
            .unwrap_or(0)
    };
    Ok(SidecarForm::for_version(
        number(&info.major),
        number(&info.minor),
    ))
}

/// The server config for `names`, certified by `root`.
pub fn tls(root: &CaRecord, names: &[String]) -> Result<Arc<rustls::ServerConfig>, String> {
    let (cert, key) = serving_certificate(root, names, SERVING_TTL)
        .map_err(|e| format!("webhook certificate: {e}"))?;
    let roots = channel::read_bundle(&root.cert_pem)?;
    let leaf = CertificateDer::from_pem_slice(cert.as_bytes()).map_err(|e| e.to_string())?;
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).map_err(|e| e.to_string())?;
    let mut chain = vec![leaf];
    chain.extend(roots.iter().cloned());
    channel::server_config(
        &roots,
        &root.trust_domain,
        Identity { chain, key },
        &[b"http/1.1"],
    )
}

/// Serves `listener` until `shutdown` flips.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    webhook: Arc<Webhook>,
    shutdown: watch::Receiver<bool>,
) {
    let handler = move |req| {
        let webhook = webhook.clone();
        async move { handle(&webhook, req).await }
    };
    crate::https::serve("webhook", listener, tls, handler, shutdown).await;
}

async fn handle(webhook: &Webhook, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    if req.uri().path() != "/inject" || req.method() != http::Method::POST {
        return reply(StatusCode::NOT_FOUND, json!({"error": "POST /inject"}));
    }
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(body) => body.to_bytes(),
        Err(e) => return reply(StatusCode::BAD_REQUEST, json!({"error": e.to_string()})),
    };
    let review: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return reply(
                StatusCode::BAD_REQUEST,
                json!({"error": format!("not an AdmissionReview: {e}")}),
            )
        }
    };
    reply(StatusCode::OK, review_reply(webhook, &review))
}

/// The AdmissionReview answering `review`.
pub fn review_reply(webhook: &Webhook, review: &Value) -> Value {
    let request = &review["request"];
    let uid = request["uid"].clone();
    let pod = &request["object"];
    let name = pod
        .pointer("/metadata/name")
        .or_else(|| pod.pointer("/metadata/generateName"))
        .and_then(Value::as_str)
        .unwrap_or("?");
    let namespace = request["namespace"].as_str().unwrap_or("?");
    let response = if request["kind"]["kind"] != "Pod" {
        json!({"uid": uid, "allowed": true})
    } else {
        match patch(pod, &webhook.settings, webhook.form) {
            Ok(Injection::Patch(ops)) => {
                tracing::info!(namespace, pod = name, form = ?webhook.form, "sidecar injected");
                let encoded = base64::engine::general_purpose::STANDARD
                    .encode(serde_json::to_vec(&ops).unwrap_or_default());
                json!({"uid": uid, "allowed": true, "patchType": "JSONPatch", "patch": encoded})
            }
            Ok(Injection::Skipped(why)) => {
                tracing::debug!(namespace, pod = name, ?why, "no sidecar");
                json!({"uid": uid, "allowed": true})
            }
            Err(e) => {
                tracing::info!(namespace, pod = name, error = %e, "pod refused");
                json!({"uid": uid, "allowed": false, "status": {
                    "code": 400, "reason": "BadRequest",
                    "message": format!("trellis sidecar injection: {e}"),
                }})
            }
        }
    };
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": response,
    })
}

fn reply(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

/// Makes every webhook of the MutatingWebhookConfiguration `name` trust
/// `root_pem` (its `clientConfig.caBundle`; replaced with the version read,
/// so a concurrent change is not overwritten). True when it does
/// (already, or now); false when there is no such configuration.
pub async fn keep_ca_bundle(
    client: &Client,
    name: &str,
    root_pem: &str,
) -> Result<bool, kube::Error> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let Some(mut config) = api.get_opt(name).await? else {
        return Ok(false);
    };
    let bundle = k8s_openapi::ByteString(root_pem.as_bytes().to_vec());
    let mut changed = false;
    for webhook in config.webhooks.iter_mut().flatten() {
        if webhook.client_config.ca_bundle.as_ref() != Some(&bundle) {
            webhook.client_config.ca_bundle = Some(bundle.clone());
            changed = true;
        }
    }
    if changed {
        api.replace(name, &PostParams::default(), &config).await?;
        tracing::info!(name, "webhook caBundle set to the mesh root");
    }
    Ok(true)
}
