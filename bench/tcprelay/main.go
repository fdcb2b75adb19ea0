// Command tcprelay is the benchmark harness's floor: a relay that passes
// bytes between a client and an upstream and does nothing else. Each
// direction is one goroutine that reads into a 32 KiB buffer and writes
// what it read; TLS, if any, runs end to end through it. No proxy that
// reads the requests it forwards can do less per hop in user space, so
// its rows show what the hops alone cost on the machine. With -connect it
// is also a forward proxy that only tunnels: it answers a CONNECT to a
// loopback address and relays the tunnel the same way.
//
//	tcprelay -listen 127.0.0.1:18190=127.0.0.1:18443 -listen 127.0.0.1:18191=127.0.0.1:18444 -connect 127.0.0.1:18192
package main

import (
	"bufio"
	"flag"
	"log"
	"net"
	"net/http"
	"strings"
	"time"
)

type pairs []string

func (p *pairs) String() string     { return strings.Join(*p, ",") }
func (p *pairs) Set(v string) error { *p = append(*p, v); return nil }

func main() {
	var listen pairs
	flag.Var(&listen, "listen", "ADDR=UPSTREAM: accept on ADDR and relay each connection to UPSTREAM (repeatable)")
	connect := flag.String("connect", "", "ADDR: a forward proxy that answers CONNECT to loopback addresses with a tunnel")
	flag.Parse()
	log.SetFlags(0)
	if len(listen) == 0 && *connect == "" {
		log.Fatal("tcprelay: no -listen ADDR=UPSTREAM and no -connect ADDR")
	}
	if *connect != "" {
		ln, err := net.Listen("tcp", *connect)
		if err != nil {
			log.Fatalf("tcprelay: %v", err)
		}
		go serveConnect(ln)
	}
	for _, p := range listen {
		addr, up, ok := strings.Cut(p, "=")
		if !ok {
			log.Fatalf("tcprelay: -listen %q is not ADDR=UPSTREAM", p)
		}
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			log.Fatalf("tcprelay: %v", err)
		}
		go serve(ln, up)
	}
	select {}
}

func serve(ln net.Listener, upstream string) {
	for {
		c, err := ln.Accept()
		if err != nil {
			log.Fatalf("tcprelay: %v", err)
		}
		go func() {
			u, err := net.Dial("tcp", upstream)
			if err != nil {
				log.Printf("tcprelay: %v", err)
				c.Close()
				return
			}
			go pipe(u.(*net.TCPConn), c.(*net.TCPConn))
			pipe(c.(*net.TCPConn), u.(*net.TCPConn))
		}()
	}
}

// pipe copies src to dst through a user-space buffer (not io.Copy, which
// would splice in the kernel), then half-closes dst; the second direction
// to end closes both.
func pipe(dst, src *net.TCPConn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				break
			}
		}
		if err != nil {
			break
		}
	}
	_ = dst.CloseWrite()
	_ = src.CloseRead()
}

// serveConnect answers each connection's CONNECT request with a tunnel to
// its target, which must be a loopback address.
func serveConnect(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			log.Fatalf("tcprelay: %v", err)
		}
		go tunnel(c.(*net.TCPConn))
	}
}

func tunnel(c *net.TCPConn) {
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReaderSize(c, 4<<10)
	req, err := http.ReadRequest(br)
	if err != nil || req.Method != http.MethodConnect || br.Buffered() > 0 {
		_, _ = c.Write([]byte("HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n"))
		c.Close()
		return
	}
	host, _, err := net.SplitHostPort(req.Host)
	if ip := net.ParseIP(host); err != nil || ip == nil || !ip.IsLoopback() {
		_, _ = c.Write([]byte("HTTP/1.1 403 Forbidden\r\nConnection: close\r\n\r\n"))
		c.Close()
		return
	}
	u, err := net.Dial("tcp", req.Host)
	if err != nil {
		_, _ = c.Write([]byte("HTTP/1.1 502 Bad Gateway\r\nConnection: close\r\n\r\n"))
		c.Close()
		return
	}
	_ = c.SetReadDeadline(time.Time{})
	if _, err := c.Write([]byte("HTTP/1.1 200 Connection established\r\n\r\n")); err != nil {
		c.Close()
		u.Close()
		return
	}
	go pipe(u.(*net.TCPConn), c)
	pipe(c, u.(*net.TCPConn))
}
