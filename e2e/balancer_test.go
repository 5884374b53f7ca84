//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// clientHeader names the test client a request comes from. The balancer
// keeps one round-robin position per client, so each client's consecutive
// requests land on different replicas even while other clients' requests
// interleave. That is the opposite of session affinity.
const clientHeader = "X-E2E-Client"

// balancer is a round-robin HTTP reverse proxy in front of the replicas, the
// way a Kubernetes Service or nginx would be: per request (not per
// connection), HTTP/1.1 passed on as HTTP/1.1 and h2c (gRPC) as h2c,
// streaming responses flushed as they come, and only replicas whose /readyz
// answers 200 in rotation. It keeps a record of which replica each request
// went to.
type balancer struct {
	URL      string
	backends []*backend

	proxy *httputil.ReverseProxy

	mu     sync.Mutex
	last   map[string]int // client -> index of the backend it was sent to last
	picks  []pick
	count  map[int]int // backend -> requests sent to it
	errors map[int]int // backend -> requests it failed (connection refused, reset)
	// probeMax is the slowest answer to /readyz, per backend.
	probeMax map[int]time.Duration
}

type backend struct {
	index int
	url   *url.URL
	ready atomic.Bool
}

// pick is one request as the balancer routed it.
type pick struct {
	client    string
	procedure string
	proto     string // HTTP/1.1 or HTTP/2.0, as it came in and went on
	backend   int
}

type backendKey struct{}

func newBalancer(t *testing.T, addrs []string) *balancer {
	t.Helper()
	b := &balancer{last: map[string]int{}, count: map[int]int{}, errors: map[int]int{}, probeMax: map[int]time.Duration{}}
	for i, a := range addrs {
		b.backends = append(b.backends, &backend{index: i, url: &url.URL{Scheme: "http", Host: a}})
	}

	dialer := &net.Dialer{Timeout: time.Second}
	h1 := &http.Transport{DialContext: dialer.DialContext, MaxIdleConnsPerHost: 64, IdleConnTimeout: 30 * time.Second}
	h2c := &http.Transport{DialContext: dialer.DialContext, Protocols: new(http.Protocols)}
	h2c.Protocols.SetUnencryptedHTTP2(true)
	b.proxy = &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(pr.In.Context().Value(backendKey{}).(*backend).url)
			pr.SetXForwarded()
		},
		Transport: byProtocol{h1: h1, h2c: h2c},
		// Streams (WatchMessages) must reach the client message by message.
		FlushInterval: -1,
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			be := r.Context().Value(backendKey{}).(*backend)
			b.mu.Lock()
			b.errors[be.index]++
			b.mu.Unlock()
			// What nginx answers when the upstream is gone; Connect and
			// gRPC clients read it as unavailable.
			w.WriteHeader(http.StatusBadGateway)
		},
		ErrorLog: log.New(io.Discard, "", 0),
	}

	front := &http.Server{
		Handler:           b,
		Protocols:         new(http.Protocols),
		ReadHeaderTimeout: 5 * time.Second,
		ErrorLog:          log.New(io.Discard, "", 0),
	}
	front.Protocols.SetHTTP1(true)
	front.Protocols.SetUnencryptedHTTP2(true)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b.URL = "http://" + ln.Addr().String()
	go func() { _ = front.Serve(ln) }()

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		b.checkHealth(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		_ = front.Close()
		h1.CloseIdleConnections()
		h2c.CloseIdleConnections()
	})
	return b
}

// byProtocol sends a request upstream in the protocol it came in.
type byProtocol struct{ h1, h2c http.RoundTripper }

func (p byProtocol) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.ProtoMajor == 2 {
		return p.h2c.RoundTrip(r)
	}
	return p.h1.RoundTrip(r)
}

func (b *balancer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	be := b.pick(r.Header.Get(clientHeader), r.URL.Path, r.Proto)
	if be == nil {
		w.WriteHeader(http.StatusServiceUnavailable)
		return
	}
	b.proxy.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), backendKey{}, be)))
}

// pick returns the next ready backend after the one client was sent to last.
func (b *balancer) pick(client, procedure, proto string) *backend {
	b.mu.Lock()
	defer b.mu.Unlock()
	last, ok := b.last[client]
	if !ok {
		last = -1
	}
	n := len(b.backends)
	for k := 1; k <= n; k++ {
		be := b.backends[(last+k+n)%n]
		if be.ready.Load() {
			b.last[client] = be.index
			b.picks = append(b.picks, pick{client: client, procedure: procedure, proto: proto, backend: be.index})
			b.count[be.index]++
			return be
		}
	}
	return nil
}

// Readiness is judged as the Kubernetes manifests in deploy/k8s do, only
// faster: a probe times out after 2s, and 2 failures in a row (an error, a
// timeout or a non-200 answer) take a backend out of rotation; 1 success
// puts it back.
const (
	probePeriod           = 50 * time.Millisecond
	probeTimeout          = 2 * time.Second
	probeFailureThreshold = 2
)

// checkHealth polls each backend's /readyz, as an endpoint controller
// would, until ctx ends.
func (b *balancer) checkHealth(ctx context.Context) {
	var wg sync.WaitGroup
	for _, be := range b.backends {
		wg.Go(func() { b.probe(ctx, be) })
	}
	wg.Wait()
}

func (b *balancer) probe(ctx context.Context, be *backend) {
	client := &http.Client{Timeout: probeTimeout}
	tick := time.NewTicker(probePeriod)
	defer tick.Stop()
	failures := 0
	for {
		start := time.Now()
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, be.url.String()+"/readyz", nil)
		resp, err := client.Do(req)
		ok := err == nil && resp.StatusCode == http.StatusOK
		if err == nil {
			resp.Body.Close()
		}
		if ctx.Err() != nil {
			return
		}
		if took := time.Since(start); err == nil {
			b.mu.Lock()
			b.probeMax[be.index] = max(b.probeMax[be.index], took)
			b.mu.Unlock()
		}
		if ok {
			failures = 0
			be.ready.Store(true)
		} else if failures++; failures >= probeFailureThreshold {
			be.ready.Store(false)
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// waitReady waits until the balancer sees backend i as ready (or not).
func (b *balancer) waitReady(ctx context.Context, i int, ready bool) error {
	for b.backends[i].ready.Load() != ready {
		select {
		case <-ctx.Done():
			return fmt.Errorf("balancer: backend %d ready=%t not reached: %w", i, ready, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
	return nil
}

// route returns the backends client's requests went to, in order, and their
// procedures.
func (b *balancer) route(client string) []pick {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []pick
	for _, p := range b.picks {
		if p.client == client {
			out = append(out, p)
		}
	}
	return out
}

// served returns how many requests have been sent to backend i.
func (b *balancer) served(i int) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.count[i]
}

// failed returns how many proxied requests failed upstream, per backend.
func (b *balancer) failed() map[int]int {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make(map[int]int, len(b.errors))
	for k, v := range b.errors {
		out[k] = v
	}
	return out
}

// slowestProbe returns the slowest /readyz answer of each backend.
func (b *balancer) slowestProbe() map[int]time.Duration {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make(map[int]time.Duration, len(b.probeMax))
	for k, v := range b.probeMax {
		out[k] = v.Round(time.Millisecond)
	}
	return out
}

// labelled sets clientHeader on every request, so the balancer can tell the
// test's clients apart.
type labelled struct {
	client string
	next   http.RoundTripper
}

func (l labelled) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set(clientHeader, l.client)
	return l.next.RoundTrip(r)
}
