# Build stage: compile the release binary.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --bin braid

# Runtime stage: the binary alone, run as an unprivileged user, the database in a volume.
FROM debian:bookworm-slim
# CA certificates: Braid fetches the keys of clients registered by an https JWKS URL.
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /data braid \
    && mkdir -p /data && chown braid /data
COPY --from=build /src/target/release/braid /usr/local/bin/braid
USER braid
# Set BRAID_BASE_URL to the public URL (https://fhir.example.org/fhir): links, the patient
# portal's sign-in (trusted only there, over HTTPS or on loopback) and reminder emails use it.
# The database is encrypted at rest with the key mounted as a secret (see the README's Docker
# section: `braid keygen`, then mount the file read-only at this path; keep it off /data).
ENV BRAID_LISTEN=0.0.0.0:8080 \
    BRAID_DATA=/data/braid.redb \
    BRAID_ENCRYPTION_KEY_FILE=/run/secrets/braid.key
VOLUME ["/data"]
EXPOSE 8080
ENTRYPOINT ["braid"]
CMD ["serve"]
