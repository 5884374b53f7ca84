package webhookhttp

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"syscall"
	"time"
)

// Bounds of one delivery. The whole exchange is bound by the timeout given
// to NewClient; these bound its parts so a slow peer fails early.
const (
	dialTimeout           = 5 * time.Second
	tlsHandshakeTimeout   = 5 * time.Second
	maxResponseHeaderSize = 16 << 10
)

// clientOptions are what tests change: where names resolve, which
// certificates are trusted, and a last check of each socket address after
// the Policy's (the tests' net that no packet leaves the machine even if
// the Policy were wrong).
type clientOptions struct {
	resolver *net.Resolver
	rootCAs  *x509.CertPool
	control  func(network, address string) error
}

// NewClient returns an http.Client that connects only where p allows, does
// not follow redirects, ignores proxy settings and gives up after timeout.
func NewClient(p Policy, timeout time.Duration) *http.Client {
	return newClient(p, timeout, clientOptions{})
}

func newClient(p Policy, timeout time.Duration, o clientOptions) *http.Client {
	control := p.control
	if o.control != nil {
		control = func(ctx context.Context, network, address string, c syscall.RawConn) error {
			if err := p.control(ctx, network, address, c); err != nil {
				return err
			}
			return o.control(network, address)
		}
	}
	dialer := &net.Dialer{
		Timeout:        dialTimeout,
		KeepAlive:      30 * time.Second,
		Resolver:       o.resolver,
		ControlContext: control,
	}
	t := &http.Transport{
		Proxy:             nil,
		DialContext:       dialer.DialContext,
		ForceAttemptHTTP2: true,
		// RootCAs nil is the system's roots.
		TLSClientConfig:        &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: o.rootCAs},
		TLSHandshakeTimeout:    tlsHandshakeTimeout,
		ResponseHeaderTimeout:  timeout,
		MaxResponseHeaderBytes: maxResponseHeaderSize,
		MaxIdleConnsPerHost:    2,
		IdleConnTimeout:        90 * time.Second,
	}
	return &http.Client{
		Transport: schemeGuard{allowHTTP: p.AllowHTTP, next: t},
		Timeout:   timeout,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
}

// schemeGuard refuses every request that is not https (or http when
// allowed) before anything is dialled.
type schemeGuard struct {
	allowHTTP bool
	next      http.RoundTripper
}

func (g schemeGuard) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.URL.Scheme != "https" && !(g.allowHTTP && r.URL.Scheme == "http") {
		if r.Body != nil {
			r.Body.Close()
		}
		return nil, fmt.Errorf("%w: %s://%s", ErrForbiddenScheme, r.URL.Scheme, r.URL.Host)
	}
	return g.next.RoundTrip(r)
}
