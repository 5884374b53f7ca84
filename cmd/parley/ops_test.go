package main

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/parley-dev/parley/internal/testenv"
)

// TestOpsAddress: with an operations address, /metrics and the profiles are
// served there and not on the public port. PARLEY_PPROF_ADDR, its older
// name, does the same.
func TestOpsAddress(t *testing.T) {
	dbURL := testenv.DatabaseURL(t)
	get := func(t *testing.T, url string) (int, string) {
		t.Helper()
		resp, err := http.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	for _, name := range []string{"PARLEY_OPS_ADDR", "PARLEY_PPROF_ADDR"} {
		t.Run(name, func(t *testing.T) {
			env := baseEnv(t, dbURL)
			ops := "http://" + fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
			env[name] = strings.TrimPrefix(ops, "http://")
			s := startServer(t, env)
			// One call, so the RPC metrics have a sample.
			if code, _ := get(t, s.base+"/healthz"); code != http.StatusOK {
				t.Fatalf("/healthz = %d", code)
			}
			resp, err := http.Post(s.base+"/parley.v1.AuthService/Login", "application/json", strings.NewReader(`{"email":"a@b.co","password":"whatever1"}`))
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()

			for _, path := range []string{"/metrics", "/debug/pprof/goroutine?debug=1"} {
				if code, body := get(t, s.base+path); code != http.StatusNotFound {
					t.Errorf("public port %s = %d %.100q, want 404", path, code, body)
				}
			}
			code, body := get(t, ops+"/metrics")
			if code != http.StatusOK || !strings.Contains(body, "go_goroutines") || !strings.Contains(body, `parley_rpc_requests_total{code="unauthenticated",procedure="/parley.v1.AuthService/Login"} 1`) {
				t.Errorf("ops /metrics = %d %.300s", code, body)
			}
			if code, body := get(t, ops+"/debug/pprof/goroutine?debug=1"); code != http.StatusOK || !strings.Contains(body, "goroutine profile") {
				t.Errorf("ops goroutine profile = %d %.200s", code, body)
			}
			// The ops port serves nothing of the API.
			if code, _ := get(t, ops+"/readyz"); code != http.StatusNotFound {
				t.Errorf("ops /readyz = %d, want 404", code)
			}
		})
	}
}
