package main

import (
	"flag"
	"fmt"
	"io"
	"net"
	"net/url"
	"slices"
	"strings"

	"github.com/authproxy/authproxy/config"
	"github.com/authproxy/authproxy/route"
)

// cmdRoute answers "why did my request get 403/404" without traffic: the
// route a request would match on a listener, its injector, whether a
// caller may use it, and why each other route of the listener did not
// match. It reads the configuration, not its secrets.
func cmdRoute(args []string, stdout, stderr io.Writer) int {
	var listener, client string
	flags, rest := firstFlags(args), positional(args)
	if len(rest) == 3 { // FILE METHOD URL
		flags, rest = append(flags, rest[0]), rest[1:]
	}
	path, code := configFlag("route", flags, stderr, func(fs *flag.FlagSet) {
		fs.StringVar(&listener, "listener", "", "the listener the request arrives on (default: the first)")
		fs.StringVar(&client, "client", "", "the caller: a name under clients (default: anyone, a caller with no identity)")
	})
	if code >= 0 {
		return code
	}
	if len(rest) != 2 {
		fmt.Fprint(stderr, "usage: authproxy route [-listener NAME] [-client NAME] FILE METHOD URL (or -config FILE)\n")
		return 2
	}
	method, raw := strings.ToUpper(rest[0]), rest[1]
	cfg, err := config.Load(path)
	if err != nil {
		printProblems(stderr, path, err)
		return 1
	}
	var l *config.Listener
	for i := range cfg.Listeners {
		if listener == "" || cfg.Listeners[i].Name == listener {
			l = &cfg.Listeners[i]
			break
		}
	}
	if l == nil {
		fmt.Fprintf(stderr, "authproxy route: no listener %q\n", listener)
		return 2
	}
	if client != "" && client != "anyone" {
		if _, ok := cfg.Clients[client]; !ok {
			fmt.Fprintf(stderr, "authproxy route: no client %q under clients:\n", client)
			return 2
		}
	}
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		fmt.Fprintf(stderr, "authproxy route: %q is not an absolute URL such as https://api.example.com/v1/x\n", config.RedactURL(raw))
		return 2
	}
	hostname, port := u.Hostname(), u.Port()
	if l.Kind == "forward" && port == "" {
		port = map[string]string{"http": "80"}[u.Scheme]
		if port == "" {
			port = "443"
		}
	}
	if l.Kind == "sidecar" && l.Host != "" { // a sidecar matches its host:, not the URL's
		hostname, port, _ = strings.Cut(l.Host, ":")
	}
	escaped := u.EscapedPath()
	if escaped == "" {
		escaped = "/"
	}
	refs := cfg.RoutesByListener[l.Name]
	entries := make([]route.Entry[config.RouteRef], len(refs))
	for i, ref := range refs {
		entries[i] = route.Entry[config.RouteRef]{Pattern: ref.Pattern, Value: ref}
	}
	table, _ := route.NewTable(entries)
	fmt.Fprintf(stdout, "%s %s on listener %q (%s)\n", method, config.RedactURL(raw), l.Name, l.Kind)
	best, params, ok := table.Match(hostname, port, method, escaped)
	for _, ref := range refs {
		if ok && ref.Index == best.Value.Index {
			continue
		}
		why := noMatch(ref.Pattern, hostname, port, method, escaped)
		if why == "" {
			why = fmt.Sprintf("matches too, but %s is more specific", best.Value.Route.Name)
		}
		fmt.Fprintf(stdout, "  route %q (%s): %s\n", ref.Route.Name, ref.Path, why)
	}
	if !ok {
		fmt.Fprintf(stdout, "no route matches: the listener answers 404 (unmatched: %s)\n", orDefault(l.Unmatched, "deny"))
		return 1
	}
	r := best.Value.Route
	fmt.Fprintf(stdout, "matches route %q (%s), injector %q", r.Name, best.Value.Path, r.Injector)
	if len(params) > 0 {
		var ps []string
		for _, p := range params {
			ps = append(ps, p.Name+"="+p.Value)
		}
		fmt.Fprintf(stdout, ", path values %s", strings.Join(ps, " "))
	}
	fmt.Fprintln(stdout)
	if err := best.Value.Pattern.Path.CheckSafe(escaped, best.Value.Pattern.EncodedSlash); err != nil {
		fmt.Fprintf(stdout, "refused: the path %v: 400, no credential\n", err)
		return 1
	}
	who := orDefault(client, "anyone")
	switch {
	case r.Clients == nil:
		fmt.Fprintf(stdout, "caller %s: allowed (the route names no clients: every caller)\n", who)
	case slices.Contains(r.Clients, who) || slices.Contains(r.Clients, "anyone"):
		fmt.Fprintf(stdout, "caller %s: allowed (clients: %s)\n", who, strings.Join(r.Clients, ", "))
	case who == "anyone":
		fmt.Fprintf(stdout, "caller %s: refused with 407 (gRPC UNAUTHENTICATED): the route is for clients %s\n", who, strings.Join(r.Clients, ", "))
		return 1
	default:
		fmt.Fprintf(stdout, "caller %s: refused with 403 (gRPC PERMISSION_DENIED): the route is for clients %s\n", who, strings.Join(r.Clients, ", "))
		return 1
	}
	return 0
}

// noMatch says why p does not match a request ("" when it does).
func noMatch(p route.Pattern, hostname, port, method, escapedPath string) string {
	switch {
	case !p.Host.Match(hostname, port):
		return fmt.Sprintf("host %s does not match %s", net.JoinHostPort(hostname, port), p.Host)
	case !p.Methods.Match(method):
		return fmt.Sprintf("method %s is not one of %s", method, strings.Join(p.Methods, ", "))
	}
	if _, ok := p.Path.Match(escapedPath); !ok {
		return fmt.Sprintf("path %s does not match %s", escapedPath, p.Path)
	}
	return ""
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}

// firstFlags and positional split route's arguments: flags (with their
// values) and the two positionals METHOD URL, in any order.
func firstFlags(args []string) []string {
	var out []string
	for i := 0; i < len(args); i++ {
		if strings.HasPrefix(args[i], "-") {
			out = append(out, args[i])
			if !strings.Contains(args[i], "=") && i+1 < len(args) && !isBoolFlag(args[i]) {
				out = append(out, args[i+1])
				i++
			}
		}
	}
	return out
}

func positional(args []string) []string {
	var out []string
	for i := 0; i < len(args); i++ {
		if strings.HasPrefix(args[i], "-") {
			if !strings.Contains(args[i], "=") && !isBoolFlag(args[i]) {
				i++
			}
			continue
		}
		out = append(out, args[i])
	}
	return out
}

func isBoolFlag(a string) bool { return a == "-h" || a == "-help" || a == "--help" }
