# syntax=docker/dockerfile:1
# Parley: a static binary on a distroless base, running as a non-root user.
# Probes belong to the orchestrator (/healthz, /readyz), so no HEALTHCHECK.

FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
# Only what the binary is built from: a local .parley-dev, .git or
# node_modules never reaches the image or invalidates the build cache.
COPY cmd/ cmd/
COPY internal/ internal/
COPY migrations/ migrations/
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=linux go build -trimpath -ldflags="-s -w" -o /out/parley ./cmd/parley

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/parley /usr/local/bin/parley
# distroless's nonroot user, numeric so Kubernetes' runAsNonRoot can verify it.
USER 65532:65532
EXPOSE 8080
ENV PARLEY_HTTP_ADDR=:8080
ENTRYPOINT ["/usr/local/bin/parley"]
CMD ["serve"]
