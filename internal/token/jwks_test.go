package token

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/lestrrat-go/jwx/v2/jwk"
	"github.com/lestrrat-go/jwx/v2/jwt"

	"github.com/parley-dev/parley/internal/auth"
)

func TestJWKSHandler(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	m := f.manager(t, Options{}, "A", "ec1")
	srv := httptest.NewServer(m.JWKSHandler())
	t.Cleanup(srv.Close)

	resp, err := http.Get(srv.URL + JWKSPath)
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET status %d", resp.StatusCode)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/jwk-set+json" {
		t.Errorf("Content-Type = %q", ct)
	}
	if cc := resp.Header.Get("Cache-Control"); cc != "public, max-age=300" {
		t.Errorf("Cache-Control = %q", cc)
	}

	var doc struct {
		Keys []map[string]any `json:"keys"`
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		t.Fatalf("body is not JSON: %v", err)
	}
	if len(doc.Keys) != 2 {
		t.Fatalf("got %d keys, want 2", len(doc.Keys))
	}
	wantKid := []string{"A", "ec1"}
	wantAlg := []string{"EdDSA", "ES256"}
	for i, k := range doc.Keys {
		for _, private := range []string{"d", "p", "q", "dp", "dq", "qi", "k"} {
			if _, ok := k[private]; ok {
				t.Errorf("key %d has private member %q", i, private)
			}
		}
		if k["kid"] != wantKid[i] || k["alg"] != wantAlg[i] {
			t.Errorf("key %d = kid %v alg %v, want %s %s", i, k["kid"], k["alg"], wantKid[i], wantAlg[i])
		}
	}

	// A third party holding only the published set can verify our tokens.
	published, err := jwk.Parse(body)
	if err != nil {
		t.Fatal(err)
	}
	iss, err := m.Issue(uuid.New(), auth.KindAgent, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := jwt.ParseString(iss.Token, jwt.WithKeySet(published), jwt.WithValidate(false)); err != nil {
		t.Errorf("published set does not verify an issued token: %v", err)
	}

	fromMethod, err := m.PublicJWKS()
	if err != nil {
		t.Fatal(err)
	}
	if string(fromMethod) != string(body) {
		t.Errorf("PublicJWKS differs from the handler's body")
	}
	fromMethod[0] = 'X' // the caller's copy, not the served one
	if again, _ := m.PublicJWKS(); again[0] == 'X' {
		t.Error("PublicJWKS returns shared bytes")
	}

	head, err := http.Head(srv.URL + JWKSPath)
	if err != nil {
		t.Fatal(err)
	}
	headBody, _ := io.ReadAll(head.Body)
	head.Body.Close()
	if head.StatusCode != http.StatusOK || len(headBody) != 0 {
		t.Errorf("HEAD = %d with %d body bytes", head.StatusCode, len(headBody))
	}

	post, err := http.Post(srv.URL+JWKSPath, "application/json", nil)
	if err != nil {
		t.Fatal(err)
	}
	post.Body.Close()
	if post.StatusCode != http.StatusMethodNotAllowed || post.Header.Get("Allow") != "GET, HEAD" {
		t.Errorf("POST = %d, Allow %q", post.StatusCode, post.Header.Get("Allow"))
	}
}

// TestJWKSPublishesOnlyPublicMembers: jwx copied members it does not know
// from the key file into the public set (found by FuzzParseKeySet).
func TestJWKSPublishesOnlyPublicMembers(t *testing.T) {
	t.Parallel()
	set, err := ParseKeySet(setJSON(t, rawJWK(t, newEd25519(t), map[string]any{"kid": "a", "backup_d": "private material", "k": ""})))
	if err != nil {
		t.Fatal(err)
	}
	m, err := NewManager(set, Options{Issuer: testIssuer, Audience: testAudience})
	if err != nil {
		t.Fatal(err)
	}
	pub, err := m.PublicJWKS()
	if err != nil {
		t.Fatal(err)
	}
	var doc struct{ Keys []map[string]any }
	if err := json.Unmarshal(pub, &doc); err != nil || len(doc.Keys) != 1 {
		t.Fatalf("public set %s: %v", pub, err)
	}
	for name := range doc.Keys[0] {
		if !publicMembers[name] {
			t.Errorf("the public set publishes %q: %s", name, pub)
		}
	}
}
