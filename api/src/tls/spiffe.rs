//! SPIFFE ids in workload (and control-plane) certificates: `spiffe://<trust-domain>/<path>`,
//! read from a certificate that must carry exactly one URI SAN and must not
//! be a CA.

use std::fmt;

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

/// Why a certificate does not carry a usable workload identity.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("certificate does not parse")]
    Unparsable,
    #[error("certificate is a CA, not a workload")]
    CaAsLeaf,
    #[error("certificate has {0} URI SANs, expected exactly one")]
    UriSanCount(usize),
    #[error("{0:?} is not a SPIFFE id")]
    NotSpiffe(String),
    #[error("{0} is not a control-plane replica's identity")]
    NotControlPlane(String),
    #[error("{id} is not in trust domain {expected}")]
    ForeignTrustDomain { id: String, expected: String },
}

/// A parsed SPIFFE id.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SpiffeId {
    uri: String,
    /// Length of `spiffe://<trust-domain>`.
    authority_end: usize,
}

impl SpiffeId {
    pub fn parse(uri: &str) -> Result<Self, IdentityError> {
        let bad = || IdentityError::NotSpiffe(uri.to_string());
        let rest = uri.strip_prefix("spiffe://").ok_or_else(bad)?;
        let (domain, path) = rest.split_once('/').ok_or_else(bad)?;
        let domain_ok = !domain.is_empty()
            && domain
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b));
        let path_ok = !path.is_empty()
            && path
                .split('/')
                .all(|seg| !seg.is_empty() && seg != "." && seg != "..")
            && path
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._/".contains(&b));
        if !domain_ok || !path_ok {
            return Err(bad());
        }
        Ok(Self {
            uri: uri.to_string(),
            authority_end: "spiffe://".len() + domain.len(),
        })
    }

    pub fn trust_domain(&self) -> &str {
        &self.uri["spiffe://".len()..self.authority_end]
    }

    /// Istio's principal form: the id without `spiffe://`
    /// (`cluster.local/ns/default/sa/web`).
    pub fn principal(&self) -> &str {
        &self.uri["spiffe://".len()..]
    }

    /// The `ns/<namespace>` segment, when the id has one.
    pub fn namespace(&self) -> Option<&str> {
        let mut segments = self.path().split('/');
        while let Some(seg) = segments.next() {
            if seg == "ns" {
                return segments.next();
            }
        }
        None
    }

    /// The path after the trust domain (`ns/default/sa/web`).
    pub fn path(&self) -> &str {
        &self.uri[self.authority_end + 1..]
    }

    pub fn as_str(&self) -> &str {
        &self.uri
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri)
    }
}

/// The path of replicas' ids under the trust domain.
const CONTROL_PLANE_PATH: &str = "trellis/control-plane/";

/// The SPIFFE id of replica `node`.
pub fn control_plane_id(trust_domain: &str, node: u64) -> String {
    format!("spiffe://{trust_domain}/{CONTROL_PLANE_PATH}{node}")
}

/// The replica a control-plane id names, or `None` for any other id.
pub fn control_plane_node(id: &SpiffeId) -> Option<u64> {
    id.path()
        .strip_prefix(CONTROL_PLANE_PATH)?
        .parse()
        .ok()
        .filter(|n| *n > 0)
}

/// The workload identity of a DER certificate in `trust_domain`.
pub fn identity_of(der: &[u8], trust_domain: &str) -> Result<SpiffeId, IdentityError> {
    let id = spiffe_id_of(der)?;
    if id.trust_domain() != trust_domain {
        return Err(IdentityError::ForeignTrustDomain {
            id: id.to_string(),
            expected: trust_domain.to_string(),
        });
    }
    Ok(id)
}

/// The one SPIFFE id of a DER leaf certificate, in whatever trust domain.
pub fn spiffe_id_of(der: &[u8]) -> Result<SpiffeId, IdentityError> {
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der)
        .map_err(|_| IdentityError::Unparsable)?;
    if cert.is_ca() {
        return Err(IdentityError::CaAsLeaf);
    }
    let uris: Vec<&str> = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::URI(uri) => Some(*uri),
                _ => None,
            })
            .collect(),
        Ok(None) => Vec::new(),
        Err(_) => return Err(IdentityError::Unparsable),
    };
    let [uri] = uris.as_slice() else {
        return Err(IdentityError::UriSanCount(uris.len()));
    };
    SpiffeId::parse(uri)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_spiffe_ids() {
        let id = SpiffeId::parse("spiffe://cluster.local/ns/shop/sa/web").expect("valid");
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(id.principal(), "cluster.local/ns/shop/sa/web");
        assert_eq!(id.namespace(), Some("shop"));
        for bad in [
            "https://cluster.local/ns/a/sa/b",
            "spiffe://cluster.local",
            "spiffe://cluster.local/",
            "spiffe:///ns/a",
            "spiffe://Cluster.local/ns/a",
            "spiffe://cluster.local/ns/../sa/b",
            "spiffe://cluster.local/ns//sa",
            "spiffe://cluster.local/ns/a?x",
        ] {
            assert!(SpiffeId::parse(bad).is_err(), "{bad} must be refused");
        }
    }

    fn cert(sans: &[&str], ca: bool) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = sans
            .iter()
            .map(|s| rcgen::SanType::URI((*s).try_into().expect("ia5")))
            .collect();
        if ca {
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        }
        let key = rcgen::KeyPair::generate().expect("key");
        params.self_signed(&key).expect("cert").der().to_vec()
    }

    #[test]
    fn reads_exactly_one_id_from_a_leaf() {
        let td = "cluster.local";
        let ok = cert(&["spiffe://cluster.local/ns/a/sa/b"], false);
        assert_eq!(
            identity_of(&ok, td).map(|id| id.to_string()),
            Ok("spiffe://cluster.local/ns/a/sa/b".to_string())
        );
        let two = cert(
            &[
                "spiffe://cluster.local/ns/a/sa/b",
                "spiffe://cluster.local/ns/a/sa/c",
            ],
            false,
        );
        assert_eq!(identity_of(&two, td), Err(IdentityError::UriSanCount(2)));
        assert_eq!(
            identity_of(&cert(&[], false), td),
            Err(IdentityError::UriSanCount(0))
        );
        let ca = cert(&["spiffe://cluster.local/ns/a/sa/b"], true);
        assert_eq!(identity_of(&ca, td), Err(IdentityError::CaAsLeaf));
        let foreign = cert(&["spiffe://evil.org/ns/a/sa/b"], false);
        assert!(matches!(
            identity_of(&foreign, td),
            Err(IdentityError::ForeignTrustDomain { .. })
        ));
    }

    #[test]
    fn replica_ids_name_their_node() {
        let id = SpiffeId::parse(&control_plane_id("cluster.local", 3)).expect("valid");
        assert_eq!(
            id.as_str(),
            "spiffe://cluster.local/trellis/control-plane/3"
        );
        assert_eq!(control_plane_node(&id), Some(3));
        for other in [
            "spiffe://cluster.local/ns/trellis/sa/control-plane",
            "spiffe://cluster.local/trellis/control-plane/0",
            "spiffe://cluster.local/trellis/control-plane/x",
            "spiffe://cluster.local/trellis/control-plane/3/extra",
        ] {
            let id = SpiffeId::parse(other).expect("valid");
            assert_eq!(control_plane_node(&id), None, "{other}");
        }
    }
}
