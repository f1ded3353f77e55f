# syntax=docker/dockerfile:1
#
# Two images. The default target is llmedge's own binaries, used by compose.yaml for the
# controlplane and (profile demo) fakellm services:
#
#   /usr/local/bin/llmedge   controlplane | extauthz | validate | bootstrap | token | status | probe
#   /usr/local/bin/fakellm   the fake OpenAI/Anthropic/Gemini upstream (demo and tests only)
#
# One image rather than two targets for these: both binaries are static and small, the
# services share one build, and `llmedge probe` is the health check of every service of
# this image (fakellm's included) because the runtime image has no shell, curl or wget.
#
# Target envoy is Envoy 1.40 with llmedge's dynamic module (libllmedge.so,
# extauthz/module): compose's envoy service, which runs the region's extauthz inside
# Envoy (extauthz_in_envoy in the routes YAML).
#
#   docker build -t llmedge:dev .                             # or: docker compose build
#   docker build --target envoy -t llmedge-envoy:dev .
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
# Envoy's official image: Ubuntu based (Envoy's ci/Dockerfile-envoy builds it FROM
# ubuntu:noble, glibc 2.39), bash but no curl. The module needs glibc >= 2.34 (see the
# module stage); `docker run --rm --entrypoint ldd <ENVOY_IMAGE> --version` shows it.
ARG ENVOY_IMAGE=envoyproxy/envoy:v1.40.0

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

# --- module: extauthz as Envoy's dynamic module, for the TARGET platform ------------------
# cgo: a c-shared library is linked by the C toolchain against the target's libc, so it
# cannot be cross-compiled with GOOS/GOARCH as the static binaries above are. This stage
# has no --platform: it runs on the target platform (under emulation when buildx builds
# another one, e.g. --platform linux/arm64).
# glibc: built on bookworm (glibc 2.36), the module asks for no symbol version newer than
# GLIBC_2.34 (deploy/compose_test.go's TestModuleGlibc reads them from a bookworm build), so
# it loads in Envoy's Ubuntu image, whose glibc is 2.35 (22.04) or 2.39 (24.04). A newer
# GO_IMAGE (Debian 13, glibc 2.41) may raise that floor: check it against the Envoy image.
FROM ${GO_IMAGE} AS module
WORKDIR /src
ENV CGO_ENABLED=1 GOFLAGS=-buildvcs=false
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod \
    go mod download
COPY . .
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    go build -trimpath -buildmode=c-shared -o /out/libllmedge.so ./extauthz/module && \
    rm -f /out/libllmedge.h && mkdir -p /out/state

# --- envoy: Envoy 1.40 + the module (target envoy, compose's LLMEDGE_ENVOY_IMAGE) ---------
FROM ${ENVOY_IMAGE} AS envoy
LABEL org.opencontainers.image.title="llmedge-envoy" \
      org.opencontainers.image.description="Envoy 1.40 with llmedge's extauthz as a dynamic module" \
      org.opencontainers.image.source="https://github.com/llmedge/llmedge"
COPY --from=module /out/libllmedge.so /usr/local/lib/llmedge/libllmedge.so
# Where Envoy looks for the module named in the control plane's filter config.
ENV ENVOY_DYNAMIC_MODULES_SEARCH_PATH=/usr/local/lib/llmedge
# extauthz's state dir (LLMEDGE_STATE_DIR: the last caller policy), owned by the uid compose
# runs Envoy as, so the named volume Docker fills from it is that user's too.
COPY --from=module --chown=65532:65532 --chmod=0700 /out/state/ /var/lib/llmedge/

# --- runtime: distroless static, non-root (the default target) --------------------------
FROM ${RUNTIME_IMAGE} AS llmedge
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
