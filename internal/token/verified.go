package token

import (
	"sync"
	"time"

	"github.com/parley-dev/parley/internal/auth"
)

// verifiedCacheSize bounds the tokens a Manager remembers: a few hundred
// bytes each, so at most about 2 MiB.
const verifiedCacheSize = 4096

// verifiedCache remembers the principal of each token that verified, keyed
// by the token's exact text, until the token's exp. A client sends the same
// access token on every call for its whole lifetime, and parsing and
// checking it (JSON, then an Ed25519 or ECDSA signature) was the largest
// single cost of a cheap RPC. Only successes are kept, so a refused token
// is checked in full every time; and a hit needs the very same bytes, whose
// signature, issuer, audience and required claims cannot have changed since.
// Time only matters through exp: a hit is taken strictly before it, never
// inside the leeway after it, which the full check handles. Revocation is not
// the Manager's business and is checked by its caller on every call.
type verifiedCache struct {
	mu      sync.RWMutex
	entries map[string]auth.Principal
}

func (c *verifiedCache) get(token string, now time.Time) (auth.Principal, bool) {
	c.mu.RLock()
	p, ok := c.entries[token]
	c.mu.RUnlock()
	if !ok || !now.Before(p.ExpiresAt) {
		return auth.Principal{}, false
	}
	return p, true
}

func (c *verifiedCache) put(token string, p auth.Principal, now time.Time) {
	if !now.Before(p.ExpiresAt) {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.entries == nil {
		c.entries = make(map[string]auth.Principal)
	}
	if len(c.entries) >= verifiedCacheSize {
		// Expired tokens go first; if that is not enough, an arbitrary
		// eighth (map order is random), so eviction stays O(1) amortised.
		drop := verifiedCacheSize / 8
		for k, v := range c.entries {
			if !now.Before(v.ExpiresAt) {
				delete(c.entries, k)
			}
		}
		for k := range c.entries {
			if len(c.entries) < verifiedCacheSize-drop {
				break
			}
			delete(c.entries, k)
		}
	}
	c.entries[token] = p
}
