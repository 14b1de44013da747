//! Sockets: serving accepted connections (HTTP/1 and HTTP/2 detected per
//! connection), the connection pool of each endpoint, and the typed
//! errors of an exchange with an endpoint.

pub mod error;
pub mod io;
pub mod listen;
pub mod pool;
