//! Opaque TCP: bytes copied both ways between a client and an upstream,
//! each direction's end (half-close) passed on to the other side.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// Why a relay did not start.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("connect to {0} timed out")]
    ConnectTimeout(SocketAddr),
    #[error("connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Connects to `target` within `connect_timeout`.
pub async fn connect(
    target: SocketAddr,
    connect_timeout: Duration,
) -> Result<TcpStream, RelayError> {
    match tokio::time::timeout(connect_timeout, TcpStream::connect(target)).await {
        Err(_) => Err(RelayError::ConnectTimeout(target)),
        Ok(Err(source)) => Err(RelayError::Connect {
            addr: target,
            source,
        }),
        Ok(Ok(stream)) => {
            let _ = stream.set_nodelay(true);
            Ok(stream)
        }
    }
}

/// Bytes read at once in each direction (tokio's default is 8 KiB: four
/// times the system calls for a bulk transfer).
const BUFFER: usize = 64 << 10;

/// Copies until both directions end; `(client -> upstream, upstream -> client)` bytes.
pub async fn relay<A, B>(mut client: A, mut upstream: B) -> (u64, u64)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    match tokio::io::copy_bidirectional_with_sizes(&mut client, &mut upstream, BUFFER, BUFFER).await
    {
        Ok(counts) => counts,
        Err(e) => {
            tracing::debug!(error = %e, "opaque connection ended with an error");
            (0, 0)
        }
    }
}
