package token

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwk"
	"github.com/lestrrat-go/jwx/v2/x25519"
)

// rawJWK returns the JSON object of a JWK built from a raw Go key, with extra
// fields set on it (a nil value removes the field).
func rawJWK(t testing.TB, raw any, fields map[string]any) map[string]any {
	t.Helper()
	key, err := jwk.FromRaw(raw)
	if err != nil {
		t.Fatalf("jwk.FromRaw: %v", err)
	}
	b, err := json.Marshal(key)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	for k, v := range fields {
		if v == nil {
			delete(m, k)
		} else {
			m[k] = v
		}
	}
	return m
}

func setJSON(t testing.TB, keys ...map[string]any) []byte {
	t.Helper()
	if keys == nil {
		keys = []map[string]any{}
	}
	b, err := json.Marshal(map[string]any{"keys": keys})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func newEd25519(t testing.TB) ed25519.PrivateKey {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return priv
}

func newECDSA(t testing.TB, c elliptic.Curve) *ecdsa.PrivateKey {
	t.Helper()
	priv, err := ecdsa.GenerateKey(c, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return priv
}

func TestGenerateKeySet(t *testing.T) {
	t.Parallel()
	data, err := GenerateKeySet()
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Keys []map[string]any `json:"keys"`
	}
	if err := json.Unmarshal(data, &doc); err != nil {
		t.Fatalf("output is not JSON: %v\n%s", err, data)
	}
	if len(doc.Keys) != 1 {
		t.Fatalf("got %d keys, want 1", len(doc.Keys))
	}
	k := doc.Keys[0]
	for field, want := range map[string]string{"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig"} {
		if k[field] != want {
			t.Errorf("%s = %v, want %q", field, k[field], want)
		}
	}
	if k["d"] == nil || k["x"] == nil {
		t.Errorf("key lacks d or x: %v", k)
	}
	set, err := ParseKeySet(data)
	if err != nil {
		t.Fatalf("ParseKeySet(GenerateKeySet()): %v", err)
	}
	key, _ := set.Key(0)
	if key.KeyID() != k["kid"] || key.KeyID() == "" {
		t.Errorf("kid = %q, generated %v", key.KeyID(), k["kid"])
	}

	again, err := GenerateKeySet()
	if err != nil {
		t.Fatal(err)
	}
	if string(again) == string(data) {
		t.Error("two generated sets are identical")
	}
}

func TestParseKeySetAccepts(t *testing.T) {
	t.Parallel()
	ed := newEd25519(t)
	p256 := newECDSA(t, elliptic.P256())

	set, err := ParseKeySet(setJSON(t,
		rawJWK(t, ed, nil), // no kid, no alg, no use
		rawJWK(t, p256, map[string]any{"kid": "ec-1", "alg": "ES256", "use": "sig", "key_ops": []string{"sign", "verify"}}),
	))
	if err != nil {
		t.Fatal(err)
	}
	if set.Len() != 2 {
		t.Fatalf("Len = %d", set.Len())
	}
	k0, _ := set.Key(0)
	if k0.KeyID() == "" {
		t.Error("key without kid was not given one")
	}
	if k0.Algorithm() != jwa.EdDSA {
		t.Errorf("key 0 alg = %q, want EdDSA", k0.Algorithm())
	}
	k1, _ := set.Key(1)
	if k1.KeyID() != "ec-1" || k1.Algorithm() != jwa.ES256 {
		t.Errorf("key 1 = kid %q alg %q", k1.KeyID(), k1.Algorithm())
	}
}

func TestParseKeySetRejects(t *testing.T) {
	t.Parallel()
	ed := newEd25519(t)
	other := newEd25519(t)
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	_, xPriv, err := x25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	otherX := rawJWK(t, other, nil)["x"]

	tests := []struct {
		name string
		data []byte
		want string
	}{
		{"not JSON", []byte("{"), "parse jwk set"},
		{"empty set", setJSON(t), "no keys"},
		{"public only", setJSON(t, rawJWK(t, ed.Public(), map[string]any{"kid": "a"})), "public only"},
		{"public EC", setJSON(t, rawJWK(t, newECDSA(t, elliptic.P256()).Public(), map[string]any{"kid": "a"})), "public only"},
		{"oct key", setJSON(t, map[string]any{"kty": "oct", "kid": "h", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0"}), "symmetric"},
		{"oct key with HS256", setJSON(t, map[string]any{"kty": "oct", "kid": "h", "alg": "HS256", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0"}), "symmetric"},
		{"RSA", setJSON(t, rawJWK(t, rsaKey, map[string]any{"kid": "r"})), "not supported"},
		{"X25519", setJSON(t, rawJWK(t, xPriv, map[string]any{"kid": "x"})), "X25519"},
		{"P-384", setJSON(t, rawJWK(t, newECDSA(t, elliptic.P384()), map[string]any{"kid": "p"})), "P-384"},
		{"alg ES256 on Ed25519", setJSON(t, rawJWK(t, ed, map[string]any{"kid": "a", "alg": "ES256"})), "does not fit"},
		{"alg HS256 on Ed25519", setJSON(t, rawJWK(t, ed, map[string]any{"kid": "a", "alg": "HS256"})), "does not fit"},
		{"alg EdDSA on P-256", setJSON(t, rawJWK(t, newECDSA(t, elliptic.P256()), map[string]any{"kid": "a", "alg": "EdDSA"})), "does not fit"},
		{"use enc", setJSON(t, rawJWK(t, ed, map[string]any{"kid": "a", "use": "enc"})), "use"},
		{"key_ops without sign", setJSON(t, rawJWK(t, ed, map[string]any{"kid": "a", "key_ops": []string{"verify"}})), "key_ops"},
		{"duplicate kid", setJSON(t, rawJWK(t, ed, map[string]any{"kid": "a"}), rawJWK(t, other, map[string]any{"kid": "a"})), "duplicate kid"},
		// Found by FuzzParseKeySet: jwx panicked taking the thumbprint.
		{"EC x longer than the curve's", []byte(`{"keys":[{"kty":"EC","crv":"P-256","x":"00000000000000000000000000000000000000000000","y":"","d":"AA"}]}`), "invalid"},
		{"x does not match d", setJSON(t, rawJWK(t, ed, map[string]any{"kid": "a", "x": otherX})), ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			set, err := ParseKeySet(tt.data)
			if err == nil {
				t.Fatalf("ParseKeySet accepted it: %d keys", set.Len())
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not mention %q", err, tt.want)
			}
			if d, ok := rawJWK(t, ed, nil)["d"].(string); ok && strings.Contains(err.Error(), d) {
				t.Errorf("error leaks private key material: %q", err)
			}
		})
	}
}

func TestWriteAndReadKeySet(t *testing.T) {
	path := filepath.Join(t.TempDir(), "jwks.json")
	if err := WriteKeySet(path, true); err != nil {
		t.Fatal(err)
	}
	first, err := ReadKeySet(path)
	if err != nil {
		t.Fatalf("read what WriteKeySet wrote: %v", err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v, %v; want 0600", fi.Mode().Perm(), err)
	}
	kid := func(s jwk.Set) string { k, _ := s.Key(0); return k.KeyID() }
	if err := WriteKeySet(path, true); err != nil {
		t.Fatal(err)
	}
	if kept, err := ReadKeySet(path); err != nil || kid(kept) != kid(first) {
		t.Fatalf("keep replaced the key set (%v)", err)
	}
	if err := WriteKeySet(path, false); err != nil {
		t.Fatal(err)
	}
	if fresh, err := ReadKeySet(path); err != nil || kid(fresh) == kid(first) {
		t.Fatalf("without keep the key set stayed (%v)", err)
	}
	if _, err := ReadKeySet(filepath.Join(t.TempDir(), "none.json")); err == nil || !strings.Contains(err.Error(), "none.json") {
		t.Fatalf("a missing file: %v; want an error naming it", err)
	}
}
