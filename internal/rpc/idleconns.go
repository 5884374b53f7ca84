package rpc

import (
	"net"
	"net/http"
	"sync"
	"time"
)

// IdleGrace is how long a connection must have been idle, and Shutdown
// under way, before idleConns half-closes it: ample for the HTTP/2 server
// to have written its GOAWAY and flushed the last stream's frames. It need
// not cover a round trip: a half-close loses nothing the client has not
// read yet, however far away the client is.
const IdleGrace = 100 * time.Millisecond

// idleConns ends idle HTTP/2 connections promptly once the server shuts
// down.
//
// net/http marks an h2c connection active for its whole life, so
// Server.Shutdown never closes it as idle: it sends GOAWAY and waits for
// the HTTP/2 server to close the connection, which that does only a second
// after the connection's last stream has ended (http2goAwayTimeout), so
// that a TCP reset cannot destroy the GOAWAY before the client has read
// it. A client that keeps an idle connection until the server closes it
// (Go's does) thus held every SIGTERM a second past the drain.
//
// The ConnState hook learns when each connection has nothing in flight:
// net/http reports an HTTP/1 connection idle between requests, and the
// HTTP/2 server reports its connection active when the first stream opens
// and idle when the last one ends. No stream opens after GOAWAY, so once
// Shutdown has run for IdleGrace, a connection idle for that long stays
// idle, and idleConns half-closes it: the client reads GOAWAY, then the
// end of the stream, and closes its side; the server reads that end and
// closes the connection, and no reset is sent. Connections with streams in
// flight are left alone until those end. Shutdown closes idle HTTP/1
// connections itself, at once, so in practice only HTTP/2 ones are left
// for idleConns. A client that never closes is still closed by the HTTP/2
// server's own timer.
type idleConns struct {
	mu       sync.Mutex
	since    map[net.Conn]time.Time // since when each connection is idle; zero while it is not
	shutdown time.Time              // when Shutdown began; zero until then
}

func newIdleConns() *idleConns {
	return &idleConns{since: make(map[net.Conn]time.Time)}
}

// track is the server's ConnState hook. Both net/http and its HTTP/2
// server report the TCP connection itself.
func (c *idleConns) track(conn net.Conn, state http.ConnState) {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch state {
	case http.StateIdle:
		c.since[conn] = time.Now()
	case http.StateClosed, http.StateHijacked:
		delete(c.since, conn)
	default:
		c.since[conn] = time.Time{}
	}
}

// closeIdle half-closes, until stop is called, every connection that has
// been idle for IdleGrace since closeIdle was called. Call it just before
// Shutdown.
func (c *idleConns) closeIdle() (stop func()) {
	c.mu.Lock()
	c.shutdown = time.Now()
	c.mu.Unlock()
	done := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		tick := time.NewTicker(IdleGrace / 4)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case now := <-tick.C:
				c.halfCloseIdle(now)
			}
		}
	}()
	return func() {
		close(done)
		<-stopped
	}
}

func (c *idleConns) halfCloseIdle(now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if now.Sub(c.shutdown) < IdleGrace {
		return
	}
	for conn, since := range c.since {
		if since.IsZero() || now.Sub(since) < IdleGrace {
			continue
		}
		if cw, ok := conn.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
		} else {
			_ = conn.Close()
		}
		delete(c.since, conn)
	}
}
