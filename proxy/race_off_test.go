//go:build !race

package proxy_test

// raceBuild: the race detector slows the proxy several times over.
const raceBuild = false
