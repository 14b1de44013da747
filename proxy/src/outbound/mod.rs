//! The outbound side: requests from the local application to services of
//! the mesh. `logical` routes, `forward` applies the route's policies,
//! `head` checks the request head (limits, one Host), `request`
//! shapes the upstream request, `mirror` sends copies to
//! mirrors, `endpoint` makes one attempt at one endpoint, `local_reply`
//! answers what the proxy itself fails; `capture` splits connections that
//! iptables redirected into HTTP and opaque TCP.

pub mod capture;
pub mod endpoint;
pub mod forward;
pub mod head;
pub mod headers;
pub mod local_reply;
pub mod logical;
pub mod mirror;
pub mod request;
pub mod sample;

pub use logical::Outbound;
