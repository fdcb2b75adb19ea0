# Static authproxy binary in a distroless, non-root image.
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/authproxy ./cmd/authproxy

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/authproxy /authproxy
USER nonroot:nonroot
ENTRYPOINT ["/authproxy"]
CMD ["run", "-config", "/etc/authproxy/config.yaml"]
