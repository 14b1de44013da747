//! Sockets: serving accepted connections (HTTP/1 and HTTP/2 detected per
//! connection) and the connection pool of each endpoint.

pub mod io;
pub mod listen;
pub mod pool;
