//go:build e2e

package e2e

import (
	"context"
	"net"
	"net/http"
	"testing"
	"time"

	"connectrpc.com/connect"

	parleyv1 "github.com/parley-dev/parley/internal/gen/parley/v1"
)

// TestStreamResetIsRetryable reproduces what an agent sees when the replica
// behind the balancer dies between its response headers and its trailers:
// the balancer resets the stream, and the call fails as internal. The
// outcome is unknown, so an idempotent SaveTurn must be tried again.
func TestStreamResetIsRetryable(t *testing.T) {
	srv := &http.Server{
		Protocols: new(http.Protocols),
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/grpc")
			w.WriteHeader(http.StatusOK)
			w.(http.Flusher).Flush()
			// What httputil.ReverseProxy does when the upstream breaks
			// mid-response: the server resets the stream (INTERNAL_ERROR).
			panic(http.ErrAbortHandler)
		}),
	}
	srv.Protocols.SetUnencryptedHTTP2(true)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })

	ag := newAgent("http://"+ln.Addr().String(), "reset", "unused")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = ag.conversations.SaveTurn(ctx, connect.NewRequest(&parleyv1.SaveTurnRequest{}))
	if connect.CodeOf(err) != connect.CodeInternal {
		t.Fatalf("got %v, want internal from the stream reset", err)
	}
	if !retryable(err) {
		t.Fatalf("%v is not retried", err)
	}
	// An internal error the server answers with is not a reset: retrying
	// would repeat it.
	if retryable(connect.NewError(connect.CodeInternal, nil)) {
		t.Fatal("a plain internal error is retried")
	}
}
