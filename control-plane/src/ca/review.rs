//! Workload credentials in Kubernetes: a proxy presents its projected
//! service-account token; a TokenReview (bound to the mesh's audience)
//! says whose it is, and only that namespace and service account are
//! signed for.

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::PostParams;
use kube::{Api, Client};

/// Checks service-account tokens with the apiserver.
#[derive(Clone)]
pub struct TokenReviewer {
    pub client: Client,
    /// The audience tokens must be issued for (`trellis` by default).
    pub audience: String,
}

impl std::fmt::Debug for TokenReviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenReviewer")
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

/// Why a token was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("the token review failed: {0}")]
    Api(#[source] kube::Error),
    #[error("the token is not valid: {0}")]
    Unauthenticated(String),
    #[error("the token is not for audience {0:?}")]
    Audience(String),
    #[error("the token belongs to {0:?}, not a service account")]
    NotServiceAccount(String),
}

impl TokenReviewer {
    /// `(namespace, service account)` of a valid token for the audience.
    pub async fn review(&self, token: &str) -> Result<(String, String), ReviewError> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences: Some(vec![self.audience.clone()]),
            },
            ..TokenReview::default()
        };
        let reply = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(ReviewError::Api)?;
        let status = reply.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            return Err(ReviewError::Unauthenticated(
                status.error.unwrap_or_else(|| "not authenticated".into()),
            ));
        }
        if !status
            .audiences
            .unwrap_or_default()
            .contains(&self.audience)
        {
            return Err(ReviewError::Audience(self.audience.clone()));
        }
        let username = status.user.and_then(|u| u.username).unwrap_or_default();
        service_account(&username).ok_or(ReviewError::NotServiceAccount(username))
    }
}

/// `system:serviceaccount:NS:SA` -> `(NS, SA)`.
fn service_account(username: &str) -> Option<(String, String)> {
    let rest = username.strip_prefix("system:serviceaccount:")?;
    let (ns, sa) = rest.split_once(':')?;
    (!ns.is_empty() && !sa.is_empty() && !sa.contains(':'))
        .then(|| (ns.to_string(), sa.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_service_account_user_names() {
        assert_eq!(
            service_account("system:serviceaccount:shop:reviews"),
            Some(("shop".into(), "reviews".into()))
        );
        assert_eq!(service_account("admin"), None);
        assert_eq!(service_account("system:serviceaccount:shop"), None);
    }
}
