package main

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"strings"
	"testing"

	"connectrpc.com/connect"

	parleyv1 "github.com/parley-dev/parley/internal/gen/parley/v1"
	"github.com/parley-dev/parley/internal/gen/parley/v1/parleyv1connect"
	"github.com/parley-dev/parley/internal/testenv"
)

// TestWrongCredentialsAreUnauthenticated presents the wrong secret (an
// access token, an agent key, an empty or random string) where a refresh
// token or an agent key belongs: each is a wrong credential, not bad input,
// whatever its length up to the resource bound.
func TestWrongCredentialsAreUnauthenticated(t *testing.T) {
	env := baseEnv(t, testenv.DatabaseURL(t))
	s := startServer(t, env)
	var keyOut bytes.Buffer
	if code := run(t.Context(), []string{"agent-key", "create", "--name", "creds"}, func(k string) string { return env[k] }, &keyOut, io.Discard); code != 0 {
		t.Fatalf("agent-key create exited %d", code)
	}
	lines := strings.Split(strings.TrimSpace(keyOut.String()), "\n")
	agentKey := lines[len(lines)-1]

	ctx := context.Background()
	reg, err := parleyv1connect.NewAuthServiceClient(http.DefaultClient, s.base).Register(ctx,
		connect.NewRequest(&parleyv1.RegisterRequest{Email: "creds@example.com", Password: "correct horse"}))
	if err != nil {
		t.Fatal(err)
	}
	access, refresh := reg.Msg.GetTokens().GetAccessToken(), reg.Msg.GetTokens().GetRefreshToken()
	if len(access) <= 256 {
		t.Fatalf("access token has %d bytes; the test needs one longer than the old bound", len(access))
	}
	wrong := map[string]string{
		"access token":        access,
		"empty":               "",
		"random 4 KiB":        strings.Repeat("x", 4096),
		"refresh-like prefix": "prt_" + strings.Repeat("A", 43),
	}
	for _, p := range protocols {
		t.Run(p.name, func(t *testing.T) {
			c := parleyv1connect.NewAuthServiceClient(p.client(), s.base, p.opts...)
			for name, secret := range wrong {
				if _, err := c.Refresh(ctx, connect.NewRequest(&parleyv1.RefreshRequest{RefreshToken: secret})); connect.CodeOf(err) != connect.CodeUnauthenticated {
					t.Errorf("Refresh with %s: %v, want unauthenticated", name, err)
				}
				if _, err := c.ExchangeAgentKey(ctx, connect.NewRequest(&parleyv1.ExchangeAgentKeyRequest{ApiKey: secret})); connect.CodeOf(err) != connect.CodeUnauthenticated {
					t.Errorf("ExchangeAgentKey with %s: %v, want unauthenticated", name, err)
				}
			}
			if _, err := c.Refresh(ctx, connect.NewRequest(&parleyv1.RefreshRequest{RefreshToken: agentKey})); connect.CodeOf(err) != connect.CodeUnauthenticated {
				t.Errorf("Refresh with an agent key: %v, want unauthenticated", err)
			}
			if _, err := c.ExchangeAgentKey(ctx, connect.NewRequest(&parleyv1.ExchangeAgentKeyRequest{ApiKey: refresh})); connect.CodeOf(err) != connect.CodeUnauthenticated {
				t.Errorf("ExchangeAgentKey with a refresh token: %v, want unauthenticated", err)
			}
			// Past the bound it is a resource matter again, not a credential.
			huge := strings.Repeat("x", 4097)
			if _, err := c.Refresh(ctx, connect.NewRequest(&parleyv1.RefreshRequest{RefreshToken: huge})); connect.CodeOf(err) != connect.CodeInvalidArgument {
				t.Errorf("Refresh with 4097 bytes: %v, want invalid_argument", err)
			}
			if _, err := c.ExchangeAgentKey(ctx, connect.NewRequest(&parleyv1.ExchangeAgentKeyRequest{ApiKey: huge})); connect.CodeOf(err) != connect.CodeInvalidArgument {
				t.Errorf("ExchangeAgentKey with 4097 bytes: %v, want invalid_argument", err)
			}
			// Logout ignores a refresh token that is not one of the caller's,
			// whatever it is, and still revokes the access token; so each
			// Logout needs a fresh sign-in.
			for name, secret := range map[string]string{"access token": access, "random 4 KiB": wrong["random 4 KiB"]} {
				login, err := c.Login(ctx, connect.NewRequest(&parleyv1.LoginRequest{Email: "creds@example.com", Password: "correct horse"}))
				if err != nil {
					t.Fatal(err)
				}
				req := bearer(connect.NewRequest(&parleyv1.LogoutRequest{RefreshToken: secret}), login.Msg.GetTokens().GetAccessToken())
				if _, err := c.Logout(ctx, req); err != nil {
					t.Errorf("Logout with %s as refresh token: %v, want ok", name, err)
				}
			}
		})
	}
	// The real refresh token still works: nothing above spent it.
	if _, err := parleyv1connect.NewAuthServiceClient(http.DefaultClient, s.base).Refresh(ctx,
		connect.NewRequest(&parleyv1.RefreshRequest{RefreshToken: refresh})); err != nil {
		t.Fatalf("Refresh with the real token: %v", err)
	}
}
