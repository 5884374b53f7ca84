package token

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"

	"github.com/lestrrat-go/jwx/v2/jwk"
)

// JWKSPath is where JWKSHandler is meant to be mounted.
const JWKSPath = "/.well-known/jwks.json"

// publicJWKS renders the public halves of keys, in order, as a JWK set.
func publicJWKS(keys jwk.Set) ([]byte, error) {
	pub, err := jwk.PublicSetOf(keys)
	if err != nil {
		return nil, fmt.Errorf("public jwk set: %w", err)
	}
	// jwx carries members it does not know into the public keys; the key
	// file's could be anything, private material included.
	for i := range pub.Len() {
		key, _ := pub.Key(i)
		for name := range key.PrivateParams() {
			if err := key.Remove(name); err != nil {
				return nil, fmt.Errorf("public jwk set: remove %q: %w", name, err)
			}
		}
	}
	out, err := json.Marshal(pub)
	if err != nil {
		return nil, fmt.Errorf("marshal public jwk set: %w", err)
	}
	return out, nil
}

// PublicJWKS returns the JSON of the public JWK set: every key's public half,
// with its kid, alg and use, and nothing private.
func (m *Manager) PublicJWKS() ([]byte, error) {
	return append([]byte(nil), m.jwks...), nil
}

// JWKSHandler serves the public JWK set for GET and HEAD, cacheable for five
// minutes so that clients pick up a new key soon after a rotation.
func (m *Manager) JWKSHandler() http.Handler {
	body := m.jwks
	length := strconv.Itoa(len(body))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, http.StatusText(http.StatusMethodNotAllowed), http.StatusMethodNotAllowed)
			return
		}
		h := w.Header()
		h.Set("Content-Type", "application/jwk-set+json")
		h.Set("Content-Length", length)
		h.Set("Cache-Control", "public, max-age=300")
		h.Set("X-Content-Type-Options", "nosniff")
		w.WriteHeader(http.StatusOK)
		if r.Method == http.MethodHead {
			return
		}
		_, _ = w.Write(body)
	})
}
