# walpoints in a container: `docker compose up` (docker-compose.yml) builds this image.

# Build: the release binary with exactly the dependency versions in Cargo.lock. 1.89 is the
# crate's rust-version (Cargo.toml).
FROM rust:1.89-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin walpoints

# Run: a slim Debian with the CA certificates that sslmode=verify-ca/verify-full need, and an
# unprivileged user; walpoints needs no file system of its own (its state is in the store).
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin walpoints
COPY --from=build /src/target/release/walpoints /usr/local/bin/walpoints
# walpoints reads ./walpoints.toml when present: mount one here, or use WALPOINTS_* variables.
WORKDIR /etc/walpoints
USER walpoints
CMD ["walpoints", "run"]
