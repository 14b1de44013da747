//! The control plane as an attacker on the network meets it: every port
//! (Raft + operator API, proxy stream + CA, admin) refuses plaintext; Raft
//! RPCs without a member's certificate (none, a workload's, a replica
//! certificate of a non-member, a member's sent in another's name) change
//! no term and no leader; `trellisctl` without a token reads and writes
//! nothing, a read token cannot write; a proxy or `trellisctl` trusting
//! another root refuses the replicas; the data directory is private.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use anyhow::{Context, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use trellis_api::raft_client::RaftClient;
use trellis_api::tls::channel::{client_config, load_bundle, Connector, Identity};
use trellis_api::RaftPayload;
use trellis_control_plane::ca::{load_root, sign, CaRecord};
use trellis_e2e::harness::{wait_until, TempDir};
use trellis_e2e::mesh::{ctl_as, ConnectedProxy, ControlPlane};

/// What a plaintext client gets back: nothing, or a TLS alert record.
fn plaintext_reply(addr: SocketAddr, request: &[u8]) -> Result<Vec<u8>> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(request)?;
    let mut reply = Vec::new();
    let _ = stream.read_to_end(&mut reply);
    Ok(reply)
}

/// An identity signed by the mesh root: a replica's (`node`) or a workload's.
fn identity(root: &CaRecord, replica: Option<u64>) -> Result<Identity> {
    let (cert_pem, key_pem) = match replica {
        Some(node) => sign::replica_certificate(root, node, Duration::from_secs(3600))?,
        None => {
            let key = rcgen::KeyPair::generate()?;
            let csr = rcgen::CertificateParams::new(Vec::<String>::new())?
                .serialize_request(&key)?
                .pem()?;
            let signed = sign::sign(root, &csr, "default", "attacker", Duration::from_secs(3600))?;
            (signed.cert_pem, key.serialize_pem())
        }
    };
    Ok(Identity {
        chain: vec![CertificateDer::from_pem_slice(cert_pem.as_bytes())?],
        key: PrivateKeyDer::from_pem_slice(key_pem.as_bytes())?,
    })
}

/// Sends a Raft RPC (`vote` or `append`) with `json` to `addr` as
/// `identity`: the gRPC status code and message.
fn raft_call(
    addr: SocketAddr,
    bundle: &[CertificateDer<'static>],
    identity: Option<Identity>,
    rpc: &str,
    json: &str,
) -> Result<(tonic::Code, String)> {
    let tls = client_config(bundle, identity).map_err(anyhow::Error::msg)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .connect_with_connector(Connector::new(tls))
            .await?;
        let mut client = RaftClient::new(channel);
        let payload = RaftPayload {
            json: json.as_bytes().to_vec(),
        };
        let reply = match rpc {
            "vote" => client.vote(payload).await,
            _ => client.append_entries(payload).await,
        };
        Ok(match reply {
            Ok(_) => (tonic::Code::Ok, String::new()),
            Err(s) => (s.code(), s.message().to_string()),
        })
    })
}

/// (leader, term) of every replica.
fn terms(cp: &ControlPlane) -> Result<Vec<(u64, u64)>> {
    (1..=3)
        .map(|id| {
            let s = cp.status(id)?;
            Ok((
                s["leaderId"].as_u64().context("leader")?,
                s["term"].as_u64().context("term")?,
            ))
        })
        .collect()
}

#[test]
fn no_plaintext_and_no_forged_raft_rpcs() -> Result<()> {
    let cp = ControlPlane::start(3, &[])?;
    let leader = cp
        .wait_leader(Duration::from_secs(10))
        .context("a leader")?;
    let before = terms(&cp)?;

    for r in &cp.replicas {
        for (port, addr) in [("raft", r.raft), ("xds", r.xds), ("admin", r.admin)] {
            for request in [
                &b"GET /metrics HTTP/1.1\r\nHost: cp\r\n\r\n"[..],
                &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0"[..],
            ] {
                let reply = plaintext_reply(addr, request)?;
                assert!(
                    reply.is_empty() || reply[0] == 0x15,
                    "replica {} {port}: plaintext got an answer: {:?}",
                    r.id,
                    String::from_utf8_lossy(&reply)
                );
            }
        }
    }

    let root = load_root(
        &cp.trust_bundle,
        &cp.trust_bundle.with_file_name("ca-key.pem"),
        "cluster.local",
    )
    .map_err(anyhow::Error::msg)?;
    let bundle = load_bundle(&cp.trust_bundle).map_err(anyhow::Error::msg)?;
    let term = before[0].1;
    let vote = |node: u64| {
        format!(
            r#"{{"vote":{{"leader_id":{{"term":{},"node_id":{node}}},"committed":false}},"last_log_id":null}}"#,
            term + 100
        )
    };
    let append = |node: u64| {
        format!(
            r#"{{"vote":{{"leader_id":{{"term":{},"node_id":{node}}},"committed":true}},"prev_log_id":null,"entries":[],"leader_commit":null}}"#,
            term + 100
        )
    };
    let target = cp.replicas[0].raft;
    let forged: Vec<(&str, Option<Identity>, &str, String, &str)> = vec![
        (
            "no certificate",
            None,
            "vote",
            vote(9),
            "only control-plane replicas",
        ),
        (
            "a workload certificate",
            Some(identity(&root, None)?),
            "vote",
            vote(9),
            "only control-plane replicas",
        ),
        (
            "replica 9, not a member",
            Some(identity(&root, Some(9))?),
            "vote",
            vote(9),
            "not a member",
        ),
        (
            "replica 9 as leader",
            Some(identity(&root, Some(9))?),
            "append",
            append(9),
            "not a member",
        ),
        (
            "replica 9 in member 2's name",
            Some(identity(&root, Some(9))?),
            "append",
            append(2),
            "in the name of",
        ),
    ];
    for (who, id, rpc, json, expected) in forged {
        let (code, message) = raft_call(target, &bundle, id, rpc, &json)?;
        assert_eq!(code, tonic::Code::PermissionDenied, "{who}: {message}");
        assert!(message.contains(expected), "{who}: {message}");
    }
    let after = terms(&cp)?;
    assert_eq!(
        after, before,
        "no term or leader moved (leader was {leader})"
    );

    // The data directory holds the CA key: only its owner reads it.
    let data = &cp.replicas[0].data;
    let mode = |p: &std::path::Path| -> Result<u32> {
        Ok(std::fs::metadata(p)?.permissions().mode() & 0o777)
    };
    assert_eq!(mode(data)?, 0o700);
    assert_eq!(mode(&data.join("raft.redb"))?, 0o600);
    Ok(())
}

#[test]
fn operators_need_a_token_and_readers_cannot_write() -> Result<()> {
    let cp = ControlPlane::start(1, &[])?;
    let dir = TempDir::new("operator")?;
    let rules = dir.path().join("se.yaml");
    std::fs::write(
        &rules,
        "apiVersion: networking.trellis.io/v1\nkind: ServiceEntry\nmetadata: {name: db}\nspec:\n  hosts: [db.example]\n  ports: [{number: 5432, name: tcp, protocol: TCP}]\n  endpoints: [{address: 127.0.0.1}]\n",
    )?;
    let rules = rules.display().to_string();
    let servers = cp.servers();
    let ctl = |token: Option<&std::path::Path>, args: &[&str]| {
        ctl_as(&cp.trust_bundle, token, &servers, args)
    };
    let apply = ["apply", "-f", rules.as_str()];
    for args in [&apply[..], &["get"], &["trust-bundle"], &["proxy-status"]] {
        let (ok, out, err) = ctl(None, args)?;
        assert!(!ok && err.contains("needs a token"), "{args:?}: {out}{err}");
    }
    let wrong = dir.path().join("wrong.token");
    std::fs::write(&wrong, "0123456789abcdef0123456789abcdef")?;
    let (ok, _, err) = ctl(Some(&wrong), &["get"])?;
    assert!(!ok && err.contains("unknown operator token"), "{err}");

    let reader = Some(cp.reader_token.as_path());
    let (ok, _, err) = ctl(reader, &apply)?;
    assert!(!ok && err.contains("may read, not write"), "{err}");
    let (ok, _, err) = ctl(reader, &["delete", "se", "db"])?;
    assert!(!ok && err.contains("may read, not write"), "{err}");
    let (ok, out, err) = ctl(reader, &["trust-bundle"])?;
    assert!(ok && out.contains("BEGIN CERTIFICATE"), "{err}");

    let writer = Some(cp.admin_token.as_path());
    let (ok, out, err) = ctl(writer, &apply)?;
    assert!(ok, "{out}{err}");
    let (ok, out, err) = ctl(reader, &["get", "se"])?;
    assert!(ok && out.contains("db"), "{out}{err}");
    Ok(())
}

#[test]
fn clients_trusting_another_root_refuse_the_replicas() -> Result<()> {
    let cp = ControlPlane::start(1, &[])?;
    let other = TempDir::new("other-pki")?;
    trellis_e2e::mesh::pki_init(other.path())?;
    let wrong_bundle = other.path().join("ca.pem");

    let (ok, _, err) = ctl_as(
        &wrong_bundle,
        Some(&cp.admin_token),
        &cp.servers(),
        &["--timeout", "2s", "get"],
    )?;
    assert!(!ok && err.contains("check --trust-bundle"), "{err}");

    let mut proxy = ConnectedProxy::spawn_at("misled", &cp.xds_urls(), &wrong_bundle, &[])?;
    let mut good = ConnectedProxy::spawn("trusting", &cp)?;
    good.wait_ready(Duration::from_secs(15))?;
    assert!(
        !wait_until(Duration::from_secs(2), || proxy.is_ready()),
        "a proxy trusting another root took config from the replica"
    );
    let log = proxy.process.log_text();
    assert!(log.contains("certificate"), "{log}");
    proxy.process.check_running()?;
    Ok(())
}
