# Container images of Trellis, one target each:
#   docker build --target proxy         -t REGISTRY/trellis-proxy:0.1.0 .
#   docker build --target control-plane -t REGISTRY/trellis-control-plane:0.1.0 .
#   docker build --target echo          -t REGISTRY/trellis-echo:0.1.0 .
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --bin trellis-proxy --bin trellis-control-plane --bin trellisctl --bin trellis-echo

# The sidecar and its init step (init-iptables needs iptables, nft backend).
FROM debian:bookworm-slim AS proxy
RUN apt-get update && apt-get install -y --no-install-recommends iptables && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/trellis-proxy /usr/local/bin/trellis-proxy
USER 1337:1337
ENTRYPOINT ["trellis-proxy"]

FROM debian:bookworm-slim AS control-plane
COPY --from=build /src/target/release/trellis-control-plane /src/target/release/trellisctl /usr/local/bin/
USER 65532:65532
ENTRYPOINT ["trellis-control-plane"]

FROM debian:bookworm-slim AS echo
COPY --from=build /src/target/release/trellis-echo /usr/local/bin/trellis-echo
USER 65532:65532
ENTRYPOINT ["trellis-echo"]
