// Command tcprelay is the benchmark harness's floor: a relay that passes
// bytes between a client and an upstream and does nothing else. Each
// direction is one goroutine that reads into a 32 KiB buffer and writes
// what it read; TLS, if any, runs end to end through it. No proxy that
// reads the requests it forwards can do less per hop in user space, so
// its rows show what the hops alone cost on the machine.
//
//	tcprelay -listen 127.0.0.1:18190=127.0.0.1:18443 -listen 127.0.0.1:18191=127.0.0.1:18444
package main

import (
	"flag"
	"log"
	"net"
	"strings"
)

type pairs []string

func (p *pairs) String() string     { return strings.Join(*p, ",") }
func (p *pairs) Set(v string) error { *p = append(*p, v); return nil }

func main() {
	var listen pairs
	flag.Var(&listen, "listen", "ADDR=UPSTREAM: accept on ADDR and relay each connection to UPSTREAM (repeatable)")
	flag.Parse()
	log.SetFlags(0)
	if len(listen) == 0 {
		log.Fatal("tcprelay: no -listen ADDR=UPSTREAM")
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
