//! Sockets: serving accepted connections (HTTP/1 and HTTP/2 detected per
//! connection) and pooled client connections to endpoints.

pub mod client;
pub mod listen;
