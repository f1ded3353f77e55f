# syntax=docker/dockerfile:1
#
# One image for llmedge's own binaries, used by compose.yaml for the controlplane,
# extauthz and (profile demo) fakellm services:
#
#   /usr/local/bin/llmedge   controlplane | extauthz | validate | bootstrap | token | status | probe
#   /usr/local/bin/fakellm   the fake OpenAI/Anthropic/Gemini upstream (demo and tests only)
#
# One image rather than two targets: both binaries are static and small, the services share
# one build, and `llmedge probe` is the health check of every service of this image
# (fakellm's included) because the runtime image has no shell, curl or wget.
#
#   docker build -t llmedge:dev .            # or: docker compose build
#   docker run --rm llmedge:dev token new --caller alice
#
# Base images are pinned by tag here. Pin them by digest in your CI as well
# (GO_IMAGE=golang:1.26.8-bookworm@sha256:..., RUNTIME_IMAGE=...@sha256:...), e.g. with
# `docker buildx imagetools inspect <image>` or Renovate/Dependabot, so a rebuild of the
# same commit gets the same bytes.
ARG GO_IMAGE=golang:1.26.8-bookworm
# distroless/static: no shell, no package manager; has /etc/ssl/certs/ca-certificates.crt
# (CA roots for upstream TLS), /etc/passwd with nonroot (65532), tzdata.
ARG RUNTIME_IMAGE=gcr.io/distroless/static-debian12:nonroot

# --- build: static binaries, cross-compiled on the build platform ----------------------
FROM --platform=$BUILDPLATFORM ${GO_IMAGE} AS build
WORKDIR /src
ENV CGO_ENABLED=0 GOFLAGS=-buildvcs=false
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod \
    go mod download
COPY . .
ARG TARGETOS
ARG TARGETARCH
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    GOOS=$TARGETOS GOARCH=$TARGETARCH \
    go build -trimpath -ldflags "-s -w" -o /out/ ./cmd/llmedge ./cmd/fakellm
# An empty directory for the runtime stage's state dir (distroless has no shell to mkdir).
RUN mkdir -p /out/state

# --- runtime: distroless static, non-root -----------------------------------------------
FROM ${RUNTIME_IMAGE}
LABEL org.opencontainers.image.title="llmedge" \
      org.opencontainers.image.description="Self-hosted edge for LLM APIs: control plane, extauthz, fakellm" \
      org.opencontainers.image.source="https://github.com/llmedge/llmedge"
COPY --from=build /out/llmedge /out/fakellm /usr/local/bin/
# The control plane's --state-dir (last good routes YAML, usage ledger, access log files),
# owned by the uid the image runs as. compose mounts a named volume here; Docker fills a new
# named volume from the image's directory, owner and mode included, so the volume is
# 65532's too (without this directory it would be root's, and the control plane could not
# write to it).
COPY --from=build --chown=65532:65532 --chmod=0700 /out/state/ /var/lib/llmedge/
# Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd. It is
# also the owner of compose's socket volume (/run/llmedge, a tmpfs created with this
# uid/gid and mode 0700), so the image needs no socket directory of its own.
USER 65532:65532
# Status (controlplane), health (extauthz), fake upstream (fakellm). xDS and ext_authz are
# unix sockets on the shared volume: no port for them.
EXPOSE 18080 10200 8090
ENTRYPOINT ["/usr/local/bin/llmedge"]
CMD ["help"]
