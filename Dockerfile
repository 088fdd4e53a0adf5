# syntax=docker/dockerfile:1
# entra-operator: a static binary on a minimal, non-root base.
#   docker build -t entra-operator:dev .
# Build stage: musl for a fully static binary (rustls with aws-lc-rs, so no OpenSSL).
FROM rust:1.95-alpine3.22 AS build
# aws-lc-rs builds its C part with cmake; perl runs its code generation. Build-stage tools only, not shipped:
# taken at the versions of the pinned Alpine release rather than pinned one by one.
# hadolint ignore=DL3018
RUN apk add --no-cache musl-dev cmake make perl clang
WORKDIR /src
# Dependencies first, so that a source change does not rebuild them.
COPY Cargo.toml Cargo.lock ./
COPY emulator/Cargo.toml emulator/Cargo.toml
COPY bench/emulator-load/Cargo.toml bench/emulator-load/Cargo.toml
COPY bench/operator-scale/Cargo.toml bench/operator-scale/Cargo.toml
RUN mkdir -p src emulator/src bench/emulator-load/src bench/operator-scale/src \
    && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && echo 'fn main() {}' > emulator/src/main.rs && touch emulator/src/lib.rs \
    && echo 'fn main() {}' > bench/emulator-load/src/main.rs \
    && echo 'fn main() {}' > bench/operator-scale/src/main.rs \
    && cargo build --release --locked --package entra-operator --bin entra-operator \
    && rm -rf src emulator/src bench/emulator-load/src bench/operator-scale/src
COPY src src
COPY emulator emulator
COPY bench bench
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked --package entra-operator --bin entra-operator \
    && cp target/release/entra-operator /entra-operator

# Runtime: distroless static, non-root (uid 65532), no shell.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /entra-operator /usr/local/bin/entra-operator
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/entra-operator"]
CMD ["run"]
