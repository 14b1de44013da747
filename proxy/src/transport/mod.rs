//! Sockets: serving accepted connections (HTTP/1 and HTTP/2 detected per
//! connection), the connection pool of each endpoint, and the typed
//! errors of an exchange with an endpoint; and for captured connections,
//! the original destination, protocol detection and opaque TCP.

pub mod detect;
pub mod error;
pub mod framing;
pub mod io;
pub mod listen;
pub mod opaque;
pub mod orig_dst;
pub mod pool;
