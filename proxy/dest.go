package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/authproxy/authproxy/route"
)

// ErrDestinationRefused: a tunnel or an untouched forward would reach an
// address the forward listener does not open by default (loopback,
// link-local, private, the proxy itself) or could not be resolved.
var ErrDestinationRefused = errors.New("destination refused")

// destPolicy decides where a forward listener's tunnels and untouched
// forwards may go. Names are resolved once and the address checked is the
// address dialled, so a DNS answer cannot change between the two.
type destPolicy struct {
	allowNets  []netip.Prefix
	allowHosts []route.Host
	lookup     func(ctx context.Context, host string) ([]netip.Addr, error)
	timeout    time.Duration // bound on a lookup
	own        *ownAddrs
}

// ownAddrs are the addresses the proxy's listeners and its admin listener
// are bound to (every local address, for a listener on a wildcard
// address), set once bound: a tunnel or a forwarded request to one of them
// is a loop or a way into the admin listener, whatever tunnel_allow says.
type ownAddrs struct {
	p atomic.Pointer[map[netip.AddrPort]bool]
}

func (o *ownAddrs) set(addrs []net.Addr) {
	m := map[netip.AddrPort]bool{}
	var local []netip.Addr
	if ifAddrs, err := net.InterfaceAddrs(); err == nil {
		for _, a := range ifAddrs {
			if n, ok := a.(*net.IPNet); ok {
				if ip, ok := netip.AddrFromSlice(n.IP); ok {
					local = append(local, ip.Unmap())
				}
			}
		}
	}
	local = append(local, netip.MustParseAddr("127.0.0.1"), netip.IPv6Loopback())
	for _, a := range addrs {
		ap, err := netip.ParseAddrPort(a.String())
		if err != nil {
			continue
		}
		if ip := ap.Addr().Unmap(); !ip.IsUnspecified() {
			m[netip.AddrPortFrom(ip, ap.Port())] = true
			continue
		}
		for _, ip := range local {
			m[netip.AddrPortFrom(ip, ap.Port())] = true
		}
	}
	o.p.Store(&m)
}

func (o *ownAddrs) has(ap netip.AddrPort) bool {
	m := o.p.Load()
	return m != nil && (*m)[netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())]
}

// refusedRanges are the address ranges closed by default, each with why.
var refusedRanges = []struct {
	p   netip.Prefix
	why string
}{
	{netip.MustParsePrefix("0.0.0.0/8"), "a this-network address"},
	{netip.MustParsePrefix("100.64.0.0/10"), "a carrier-grade NAT address"},
	{netip.MustParsePrefix("192.0.0.0/24"), "an IETF protocol address"},
	{netip.MustParsePrefix("198.18.0.0/15"), "a benchmarking address"},
	{netip.MustParsePrefix("240.0.0.0/4"), "a reserved address"},
	{netip.MustParsePrefix("64:ff9b::/96"), "a NAT64 address"},
	{netip.MustParsePrefix("64:ff9b:1::/48"), "a NAT64 address"},
}

// closedBecause says why ip is closed by default, or "" when it is open.
func closedBecause(ip netip.Addr) string {
	ip = ip.Unmap()
	switch {
	case ip.IsUnspecified():
		return "an unspecified address"
	case ip.IsLoopback():
		return "a loopback address"
	case ip.IsLinkLocalUnicast(), ip.IsLinkLocalMulticast():
		return "a link-local address (where cloud metadata services answer)"
	case ip.IsPrivate() && ip.Is4():
		return "a private address"
	case ip.IsPrivate():
		return "a unique local address"
	case ip.IsMulticast(), ip.IsInterfaceLocalMulticast():
		return "a multicast address"
	case ip.Is4() && ip == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return "the broadcast address"
	}
	for _, r := range refusedRanges {
		if r.p.Contains(ip) {
			return r.why
		}
	}
	return ""
}

// check resolves hostname and returns the address (ip:port) to dial, or
// ErrDestinationRefused with the reason. It never dials.
func (p *destPolicy) check(ctx context.Context, hostname, port string) (string, error) {
	portNum, err := netip.ParseAddrPort("0.0.0.0:" + port)
	if err != nil {
		return "", fmt.Errorf("%w: %s: invalid port", ErrDestinationRefused, net.JoinHostPort(hostname, port))
	}
	byName := false
	for _, h := range p.allowHosts {
		if h.Match(hostname, port) {
			byName = true
			break
		}
	}
	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	ips, err := p.lookup(ctx, hostname)
	if err != nil || len(ips) == 0 {
		return "", fmt.Errorf("%w: %s does not resolve", ErrDestinationRefused, hostname)
	}
	why := ""
	for _, ip := range ips {
		ap := netip.AddrPortFrom(ip.Unmap(), portNum.Port())
		reason := ""
		switch {
		case p.own.has(ap):
			reason = "the proxy's own address (a loop)"
		case byName, p.allowedNet(ip):
		default:
			reason = closedBecause(ip)
		}
		if reason == "" {
			return ap.String(), nil
		}
		if why == "" {
			why = fmt.Sprintf("%s is %s", ap, reason)
		}
	}
	return "", fmt.Errorf("%w: %s: %s (tunnel_allow opens it)", ErrDestinationRefused, net.JoinHostPort(hostname, port), why)
}

func (p *destPolicy) allowedNet(ip netip.Addr) bool {
	ip = ip.Unmap()
	for _, n := range p.allowNets {
		if n.Contains(ip) {
			return true
		}
	}
	return false
}
