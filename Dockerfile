# One image for every role: `ember coordinator`, `ember executor`, `ember worker`, `ember local`,
# `ember sql`. Multi-stage: the build stage compiles the release binary; the runtime stage is a
# slim Debian with that binary, run as an unprivileged user.
#   docker build -t ember:0.1.0 .
#   docker run --rm -p 5433:5433 ember:0.1.0            # ember local with TPC-H sample data
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# protoc is vendored by the build; nothing else is needed to compile.
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p ember-server --bin ember \
    && cp target/release/ember /usr/local/bin/ember

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates tini \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 ember \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/ember --create-home ember
COPY --from=build /usr/local/bin/ember /usr/local/bin/ember
USER 10001:10001
WORKDIR /var/lib/ember
ENV EMBER_COORDINATOR_DATA_DIR=/var/lib/ember
# pgwire, coordinator gRPC (cluster), Flight SQL
EXPOSE 5433 50050 50051
# tini reaps the executor processes an `ember worker` starts and forwards signals: SIGTERM
# decommissions an executor and stops the other roles gracefully.
ENTRYPOINT ["/usr/bin/tini", "--", "ember"]
CMD ["local", "--bind", "0.0.0.0"]
