//! `SO_ORIGINAL_DST`: where a connection that iptables redirected to a
//! listener was going (IPv4 and IPv6).

use std::net::SocketAddr;

use socket2::SockRef;
use tokio::net::TcpStream;

/// The destination the client dialled before a `REDIRECT`, or `None` when
/// the connection was not redirected (it was made to the listener itself).
pub fn original_dst(stream: &TcpStream) -> Option<SocketAddr> {
    let local = stream.local_addr().ok()?;
    let sock = SockRef::from(stream);
    let original = if local.is_ipv4() {
        sock.original_dst_v4()
    } else {
        // An IPv4 client of a dual-stack listener still has a v4 entry.
        sock.original_dst_v6().or_else(|_| sock.original_dst_v4())
    }
    .ok()?
    .as_socket()?;
    (original != local).then_some(original)
}
