package rpc

import (
	"net/http"
	"net/http/httptest"
	"testing"
)

// serveH2C serves h over HTTP/1.1 and h2c, as NewServer's server does, and
// returns its URL and a client that speaks h2c to it (which gRPC needs).
func serveH2C(t testing.TB, h http.Handler) (string, *http.Client) {
	t.Helper()
	srv := httptest.NewUnstartedServer(h)
	srv.Config.Protocols = new(http.Protocols)
	srv.Config.Protocols.SetHTTP1(true)
	srv.Config.Protocols.SetUnencryptedHTTP2(true)
	srv.Start()
	t.Cleanup(srv.Close)
	transport := &http.Transport{Protocols: new(http.Protocols)}
	transport.Protocols.SetUnencryptedHTTP2(true)
	t.Cleanup(transport.CloseIdleConnections)
	return srv.URL, &http.Client{Transport: transport}
}
