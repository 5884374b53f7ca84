package account

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"strings"
)

// Opaque secrets handed to clients: a prefix that says what the secret is
// (so a leaked one is recognisable, e.g. by secret scanners) and 256 random
// bits. Only their SHA-256 is stored: they carry full entropy, so a slow hash
// would add nothing.
const (
	refreshTokenPrefix = "prt_"
	agentKeyPrefix     = "pk_agent_"
	secretBytes        = 32
)

var secretEncoding = base64.RawURLEncoding

// newSecret returns a fresh secret with the prefix and its hash.
func newSecret(prefix string) (plain string, hash []byte, err error) {
	b := make([]byte, secretBytes)
	if _, err := rand.Read(b); err != nil {
		return "", nil, fmt.Errorf("read random: %w", err)
	}
	plain = prefix + secretEncoding.EncodeToString(b)
	return plain, hashSecret(plain), nil
}

// parseSecret returns the hash of a secret presented by a client, or false
// when it cannot be one of ours (and so needs no database lookup).
func parseSecret(prefix, s string) ([]byte, bool) {
	rest, ok := strings.CutPrefix(s, prefix)
	if !ok || secretEncoding.DecodedLen(len(rest)) != secretBytes {
		return nil, false
	}
	if _, err := secretEncoding.DecodeString(rest); err != nil {
		return nil, false
	}
	return hashSecret(s), true
}

func hashSecret(s string) []byte {
	h := sha256.Sum256([]byte(s))
	return h[:]
}
