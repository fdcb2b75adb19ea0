# Static authproxy binary in a distroless, non-root image.
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/authproxy ./cmd/authproxy
# The state directory (a CA made by ca.generate, a VISS key), the nonroot user's.
RUN mkdir -p /out/state

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/authproxy /authproxy
COPY --from=build --chown=65532:65532 /out/state /var/lib/authproxy
USER nonroot:nonroot
WORKDIR /var/lib/authproxy
ENV AUTHPROXY_CONFIG=/etc/authproxy/config.yaml
# admin, the example sidecar, the example forward proxy
EXPOSE 15000 15001 3128
# The image has no shell: the binary asks its own admin listener.
HEALTHCHECK --interval=10s --timeout=6s CMD ["/authproxy", "health"]
ENTRYPOINT ["/authproxy"]
CMD ["run"]
