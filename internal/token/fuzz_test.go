package token

import (
	"crypto/ed25519"
	"crypto/elliptic"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/parley-dev/parley/internal/auth"
)

// FuzzVerify tampers with real access tokens, Ed25519 and P-256 signed, by
// cutting and inserting anywhere, and verifies any other string too. Every
// refusal is unauthenticated; a tampered token that verifies has the very
// header and claims that were signed, so it names the issued principal.
func FuzzVerify(f *testing.F) {
	fx := newFixture(f)
	ed := fx.manager(f, Options{}, "A", "ec1")
	ec := fx.manager(f, Options{}, "ec1", "A")
	sub := uuid.MustParse("0190a5b1-3c4d-7e6f-8a9b-0c1d2e3f4a5b")
	forged := []string{
		forge(with(validHeader("A"), "alg", "none"), validClaims(sub), func([]byte) []byte { return nil }),
		forge(validHeader("A"), validClaims(sub), edSigner(ed25519.NewKeyFromSeed(make([]byte, 32)))),
		forge(with(validHeader("A"), "typ", "JWT"), validClaims(sub), edSigner(fx.ed["A"])),
		forge(with(validHeader("A"), "b64", false), validClaims(sub), edSigner(fx.ed["A"])),
		forge(validHeader("A"), with(validClaims(sub), "exp", testNow.Add(-time.Hour).Unix()), edSigner(fx.ed["A"])),
		forge(validHeader("A"), with(validClaims(sub), "role", "admin"), edSigner(fx.ed["A"])),
		`{"payload":"e30","signatures":[]}`, "a.b.c", "",
	}
	for i, s := range forged {
		f.Add(i%2 == 0, uint16(i), uint8(0), "", s)
	}
	for _, s := range []struct {
		pos    uint16
		cut    uint8
		insert string
	}{{0, 0, ""}, {0x8000, 0, "="}, {0x8000, 0, "\n"}, {0x8001, 1, ""}, {10, 3, "abc"}, {0x8000 + 86, 0, "."}} {
		f.Add(true, s.pos, s.cut, s.insert, "")
		f.Add(false, s.pos, s.cut, s.insert, "")
	}
	f.Fuzz(func(t *testing.T, useEC bool, pos uint16, cut uint8, insert, other string) {
		m, kind := ed, auth.KindUser
		if useEC {
			m, kind = ec, auth.KindAgent
		}
		issued, err := m.Issue(sub, kind, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		want := auth.Principal{ID: sub, Kind: kind, TokenID: issued.ID, ExpiresAt: issued.ExpiresAt}
		tok := issued.Token
		p := int(pos&0x7fff) % (len(tok) + 1)
		if pos&0x8000 != 0 { // from the end, where the signature is
			p = len(tok) - p
		}
		c := min(int(cut), len(tok)-p)
		tampered := tok[:p] + insert + tok[p+c:]

		got, err := m.Verify(tampered)
		if err != nil {
			if !errors.Is(err, auth.ErrUnauthenticated) {
				t.Fatalf("Verify(%q) = %v, want unauthenticated", tampered, err)
			}
			if tampered == tok {
				t.Fatalf("the issued token was refused: %v", err)
			}
		} else {
			if got != want {
				t.Fatalf("Verify(%q) = %+v, issued %+v", tampered, got, want)
			}
			if tampered != tok {
				t.Fatalf("Verify accepted %q, a second spelling of the issued %q", tampered, tok)
			}
		}

		if p, err := m.Verify(other); err == nil || !errors.Is(err, auth.ErrUnauthenticated) {
			t.Fatalf("Verify(%q) = %+v, %v; want unauthenticated", other, p, err)
		}
	})
}

// publicMembers are the JWK members a public EC or OKP key may carry
// (RFC 7517, 7518, 8037).
var publicMembers = map[string]bool{"kty": true, "crv": true, "x": true, "y": true, "kid": true, "alg": true,
	"use": true, "key_ops": true, "x5u": true, "x5c": true, "x5t": true, "x5t#S256": true}

// FuzzParseKeySet parses any JWK set. A set it accepts makes a Manager
// whose tokens verify, publishes no private member, and parses again from
// its own JSON to the same keys.
func FuzzParseKeySet(f *testing.F) {
	generated, err := GenerateKeySet()
	if err != nil {
		f.Fatal(err)
	}
	ed, p256 := newEd25519(f), newECDSA(f, elliptic.P256())
	for _, s := range [][]byte{
		generated,
		setJSON(f, rawJWK(f, ed, nil), rawJWK(f, p256, map[string]any{"kid": "ec-1", "alg": "ES256", "use": "sig", "key_ops": []string{"sign", "verify"}})),
		setJSON(f, rawJWK(f, ed.Public(), map[string]any{"kid": "a"})),
		setJSON(f, map[string]any{"kty": "oct", "kid": "h", "alg": "HS256", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0"}),
		setJSON(f, rawJWK(f, ed, map[string]any{"kid": "a", "alg": "ES256"})),
		setJSON(f, rawJWK(f, ed, map[string]any{"kid": "a"}), rawJWK(f, ed, map[string]any{"kid": "a"})),
		setJSON(f, rawJWK(f, ed, map[string]any{"kid": "a", "x": rawJWK(f, newEd25519(f), nil)["x"]})),
		setJSON(f, rawJWK(f, p256, map[string]any{"kid": "a", "y": rawJWK(f, newECDSA(f, elliptic.P256()), nil)["y"]})),
		setJSON(f, rawJWK(f, p256, map[string]any{"crv": "P-384"})),
		[]byte(`{"keys":[{"kty":"OKP","crv":"Ed25519","d":"","x":""}]}`),
		[]byte(`{"kty":"OKP","crv":"Ed25519"}`),
		[]byte("{"),
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		set, err := ParseKeySet(data)
		if err != nil {
			return
		}
		m, err := NewManager(set, Options{Issuer: testIssuer, Audience: testAudience, Now: func() time.Time { return testNow }})
		if err != nil {
			t.Fatalf("ParseKeySet accepted a set NewManager refuses: %v\n%s", err, data)
		}
		sub := uuid.New()
		issued, err := m.Issue(sub, auth.KindUser, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		if p, err := m.Verify(issued.Token); err != nil || p.ID != sub {
			t.Fatalf("a token of an accepted set does not verify: %+v, %v", p, err)
		}
		pub, err := m.PublicJWKS()
		if err != nil {
			t.Fatal(err)
		}
		var published struct{ Keys []map[string]any }
		if err := json.Unmarshal(pub, &published); err != nil || len(published.Keys) != set.Len() {
			t.Fatalf("public set %s: %v", pub, err)
		}
		for _, k := range published.Keys {
			for name := range k {
				if !publicMembers[name] {
					t.Fatalf("the public set publishes %q: %s", name, pub)
				}
			}
		}
		again, err := json.Marshal(set)
		if err != nil {
			t.Fatal(err)
		}
		reparsed, err := ParseKeySet(again)
		if err != nil || reparsed.Len() != set.Len() {
			t.Fatalf("the accepted set does not parse from its own JSON: %v\n%s", err, again)
		}
		for i := range set.Len() {
			a, _ := set.Key(i)
			b, _ := reparsed.Key(i)
			if a.KeyID() != b.KeyID() || a.Algorithm() != b.Algorithm() {
				t.Fatalf("key #%d was kid %q alg %q, parses again as kid %q alg %q", i, a.KeyID(), a.Algorithm(), b.KeyID(), b.Algorithm())
			}
		}
		m2, err := NewManager(reparsed, Options{Issuer: testIssuer, Audience: testAudience, Now: func() time.Time { return testNow }})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := m2.Verify(issued.Token); err != nil {
			t.Fatalf("the set parsed again does not verify its tokens: %v", err)
		}
	})
}
