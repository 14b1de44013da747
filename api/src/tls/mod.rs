//! TLS shared by the proxy and the control plane: SPIFFE ids in
//! certificates ([`spiffe`]), verification against the mesh's roots
//! ([`verify`]), and the control plane's TLS ports and their clients
//! ([`channel`]).

pub mod channel;
pub mod spiffe;
pub mod verify;
