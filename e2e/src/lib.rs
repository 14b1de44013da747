//! End-to-end support: the `trellis-echo` test backend, a harness that runs
//! real Trellis processes on free loopback ports, a real Kubernetes control
//! plane (`kube`), and HTTP client helpers.

pub mod cgroup;
pub mod client;
pub mod echo;
pub mod harness;
pub mod kube;
pub mod kube_mesh;
pub mod kubelet;
pub mod linearizability;
pub mod mesh;
pub mod netns;
pub mod payload;
pub mod rules;
pub mod sidecars;
pub mod tls;
