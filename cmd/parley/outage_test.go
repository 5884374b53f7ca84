package main

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"testing"

	"connectrpc.com/connect"

	parleyv1 "github.com/parley-dev/parley/internal/gen/parley/v1"
	"github.com/parley-dev/parley/internal/gen/parley/v1/parleyv1connect"
	"github.com/parley-dev/parley/internal/testenv"
)

// TestPostgresOutage stops PostgreSQL under two running replicas. Calls
// that need it answer unavailable (retryable) over every protocol and REST,
// not internal. /readyz keeps answering 200 and reports the outage in its
// body, as the contract says, unless PARLEY_READYZ_REQUIRE_DATABASE is set:
// then it answers 503.
func TestPostgresOutage(t *testing.T) {
	pg := testenv.StartPostgres(t, testenv.PostgresOptions{})
	dbURL := pg.CreateDatabase(t, "parley")
	plain := startServer(t, baseEnv(t, dbURL))
	strictEnv := baseEnv(t, dbURL)
	strictEnv["PARLEY_READYZ_REQUIRE_DATABASE"] = "true"
	strict := startServer(t, strictEnv)

	ctx := context.Background()
	reg, err := parleyv1connect.NewAuthServiceClient(http.DefaultClient, plain.base).Register(ctx,
		connect.NewRequest(&parleyv1.RegisterRequest{Email: "outage@example.com", Password: "correct horse"}))
	if err != nil {
		t.Fatal(err)
	}
	tok := reg.Msg.GetTokens().GetAccessToken()
	conv, err := parleyv1connect.NewConversationServiceClient(http.DefaultClient, plain.base).CreateConversation(ctx,
		bearer(connect.NewRequest(&parleyv1.CreateConversationRequest{Title: "before"}), tok))
	if err != nil {
		t.Fatal(err)
	}
	convID := conv.Msg.GetConversation().GetId()
	for _, s := range []*server{plain, strict} {
		if code, body := readyz(t, s); code != http.StatusOK || body.Dependencies["postgres"] != "ok" {
			t.Fatalf("before the outage: /readyz = %d %+v", code, body)
		}
	}

	pg.Stop()
	for _, p := range protocols {
		t.Run(p.name, func(t *testing.T) {
			auth := parleyv1connect.NewAuthServiceClient(p.client(), plain.base, p.opts...)
			users := parleyv1connect.NewUserServiceClient(p.client(), plain.base, p.opts...)
			convs := parleyv1connect.NewConversationServiceClient(p.client(), plain.base, p.opts...)
			calls := map[string]func() error{
				"Login": func() error {
					_, err := auth.Login(ctx, connect.NewRequest(&parleyv1.LoginRequest{Email: "outage@example.com", Password: "correct horse"}))
					return err
				},
				"GetProfile": func() error {
					_, err := users.GetProfile(ctx, bearer(connect.NewRequest(&parleyv1.GetProfileRequest{}), tok))
					return err
				},
				"CreateConversation": func() error {
					_, err := convs.CreateConversation(ctx, bearer(connect.NewRequest(&parleyv1.CreateConversationRequest{Title: "during"}), tok))
					return err
				},
				"SaveTurn": func() error {
					_, err := convs.SaveTurn(ctx, bearer(connect.NewRequest(&parleyv1.SaveTurnRequest{ConversationId: convID, UserMessage: "hello?"}), tok))
					return err
				},
			}
			for name, call := range calls {
				if err := call(); connect.CodeOf(err) != connect.CodeUnavailable {
					t.Errorf("%s: %v, want unavailable", name, err)
				}
			}
		})
	}
	req, err := http.NewRequest(http.MethodGet, plain.base+"/api/v1/profile", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("REST GET /api/v1/profile: %d, want 503", resp.StatusCode)
	}

	if code, body := readyz(t, plain); code != http.StatusOK || body.Status != "ready" || body.Dependencies["postgres"] != "unavailable" {
		t.Errorf("default /readyz during the outage = %d %+v; want 200, ready, postgres unavailable", code, body)
	}
	if code, body := readyz(t, strict); code != http.StatusServiceUnavailable || body.Dependencies["postgres"] != "unavailable" {
		t.Errorf("/readyz with PARLEY_READYZ_REQUIRE_DATABASE during the outage = %d %+v; want 503, postgres unavailable", code, body)
	}
}

type readyzBody struct {
	Status       string
	Dependencies map[string]string
}

func readyz(t *testing.T, s *server) (int, readyzBody) {
	t.Helper()
	resp, err := http.Get(s.base + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var body readyzBody
	if err := json.Unmarshal(raw, &body); err != nil {
		t.Fatalf("/readyz body %q: %v", raw, err)
	}
	return resp.StatusCode, body
}
