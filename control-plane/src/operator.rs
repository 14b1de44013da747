//! Who may use the operator API (`MeshControl`, what `trellisctl` calls):
//! callers present `authorization: Bearer TOKEN` over TLS, a token from
//! `--operator-tokens FILE` with its role, one per line:
//!
//! ```text
//! # token                            role
//! 3c1f0a9e8d7b6c5a4f3e2d1c0b9a8f7e   write   # apply, delete, cluster changes; and read
//! 0f1e2d3c4b5a69788796a5b4c3d2e1f0   read    # get, status, proxy-status, trust-bundle
//! ```
//!
//! Replicas themselves (their certificates) may do everything: a follower
//! forwards an operator's authorized request to the leader that way.
//! Anyone else is refused. The client side is [`OperatorClient`].

use std::path::Path;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::Channel;
use tonic::{Request, Status};
use trellis_api::mesh_control_client::MeshControlClient;
use trellis_api::tls::channel::Peer;

use crate::ca::tokens::{hash, token_lines};

/// What a call does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Access {
    Read,
    Write,
}

/// The accepted operator tokens (kept as SHA-256 digests) and their roles.
#[derive(Clone, Debug, Default)]
pub struct OperatorTokens {
    entries: Vec<(Vec<u8>, Access)>,
}

impl OperatorTokens {
    /// Reads a token file; an error names the line.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("--operator-tokens {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("--operator-tokens {}:{e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let mut entries = Vec::new();
        for entry in token_lines(text, "read|write") {
            let (n, token, role) = entry?;
            let access = match role {
                "read" => Access::Read,
                "write" => Access::Write,
                other => return Err(format!("{n}: role {other:?} is not `read` or `write`")),
            };
            entries.push((hash(token), access));
        }
        Ok(Self { entries })
    }

    /// The role of `token`, if it is one of ours.
    fn role(&self, token: &str) -> Option<Access> {
        let presented = hash(token);
        self.entries
            .iter()
            .find(|(h, _)| *h == presented)
            .map(|(_, access)| *access)
    }

    /// Whether the caller of `request` may make a call that needs `need`.
    pub fn authorize<T>(&self, request: &Request<T>, need: Access) -> Result<(), Status> {
        if request
            .extensions()
            .get::<Peer>()
            .and_then(Peer::replica)
            .is_some()
        {
            return Ok(());
        }
        let token = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let Some(token) = token else {
            return Err(Status::unauthenticated(
                "the operator API needs a token (trellisctl --token-file, or TRELLIS_TOKEN)",
            ));
        };
        match self.role(token.trim()) {
            Some(role) if role >= need => Ok(()),
            Some(_) => Err(Status::permission_denied("this token may read, not write")),
            None => Err(Status::unauthenticated("unknown operator token")),
        }
    }
}

/// Adds `authorization: Bearer TOKEN` to every call (nothing without a token).
#[derive(Clone, Debug)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Bearer {
    /// No token: for callers that authenticate by certificate.
    pub fn none() -> Self {
        Self(None)
    }

    pub fn new(token: Option<&str>) -> Result<Self, String> {
        token
            .map(|t| {
                format!("Bearer {}", t.trim())
                    .parse()
                    .map_err(|_| "the token is not a valid header value".to_string())
            })
            .transpose()
            .map(Self)
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// A client of the operator API.
pub type OperatorClient = MeshControlClient<InterceptedService<Channel, Bearer>>;

/// An operator-API client on `channel`, presenting `bearer`.
pub fn client(channel: Channel, bearer: Bearer) -> OperatorClient {
    MeshControlClient::with_interceptor(channel, bearer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(token: Option<&str>) -> Request<()> {
        let mut r = Request::new(());
        if let Some(t) = token {
            r.metadata_mut().insert(
                "authorization",
                format!("Bearer {t}").parse().expect("ascii"),
            );
        }
        r
    }

    #[test]
    fn read_and_write_are_separate() {
        let tokens =
            OperatorTokens::parse("wwwwwwwwwwwwwwww write\nrrrrrrrrrrrrrrrr read # reader\n")
                .expect("parses");
        let w = Some("wwwwwwwwwwwwwwww");
        let r = Some("rrrrrrrrrrrrrrrr");
        assert!(tokens.authorize(&request(w), Access::Write).is_ok());
        assert!(tokens.authorize(&request(w), Access::Read).is_ok());
        assert!(tokens.authorize(&request(r), Access::Read).is_ok());
        assert_eq!(
            tokens
                .authorize(&request(r), Access::Write)
                .map_err(|s| s.code()),
            Err(tonic::Code::PermissionDenied)
        );
        for anonymous in [None, Some("xxxxxxxxxxxxxxxx")] {
            assert_eq!(
                tokens
                    .authorize(&request(anonymous), Access::Read)
                    .map_err(|s| s.code()),
                Err(tonic::Code::Unauthenticated)
            );
        }
    }

    #[test]
    fn a_bad_role_is_named() {
        assert_eq!(
            OperatorTokens::parse("\nwwwwwwwwwwwwwwww admin\n").unwrap_err(),
            "2: role \"admin\" is not `read` or `write`"
        );
    }
}
