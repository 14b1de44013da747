//! One gRPC port for two services: Raft between replicas and `MeshControl`
//! for `trellisctl`, told apart by the path's service name.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tonic::body::Body;
use tonic::server::NamedService;
use tower::Service;
use trellis_api::mesh_control_server::MeshControlServer;
use trellis_api::raft_server::RaftServer;

use crate::control::Control;
use crate::raft::network::RaftRpc;

/// Sends each request to the service its path names.
#[derive(Clone)]
pub struct Dispatch {
    pub raft: RaftServer<RaftRpc>,
    pub control: MeshControlServer<Control>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl Service<http::Request<Body>> for Dispatch {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Both generated servers are always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let raft = format!("/{}/", <RaftServer<RaftRpc> as NamedService>::NAME);
        if request.uri().path().starts_with(&raft) {
            Box::pin(self.raft.call(request))
        } else {
            Box::pin(self.control.call(request))
        }
    }
}
