package webhookhttp

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// secretPrefix marks a Standard Webhooks secret; the base64 of its key
// follows.
const secretPrefix = "whsec_"

// The spec asks for keys of 24 to 64 bytes; Parley makes 32.
const (
	minSecretBytes = 24
	maxSecretBytes = 64
	newSecretBytes = 32
)

// ErrBadSecret is returned by ParseSecret for text that is not whsec_
// followed by the standard base64 of a 24 to 64 byte key.
var ErrBadSecret = errors.New("webhookhttp: not a whsec_ secret of 24 to 64 bytes")

// Secret is an endpoint's signing key. Its String is redacted, so that a
// logged value never leaks it; Text is the form a customer is shown.
type Secret struct {
	key []byte
}

// NewSecret returns a fresh random secret.
func NewSecret() Secret {
	key := make([]byte, newSecretBytes)
	rand.Read(key) // never fails: crypto/rand aborts the process instead
	return Secret{key: key}
}

// ParseSecret reads a secret in its Text form.
func ParseSecret(s string) (Secret, error) {
	b64, ok := strings.CutPrefix(s, secretPrefix)
	if !ok {
		return Secret{}, ErrBadSecret
	}
	key, err := base64.StdEncoding.Strict().DecodeString(b64)
	if err != nil || len(key) < minSecretBytes || len(key) > maxSecretBytes {
		return Secret{}, ErrBadSecret
	}
	return Secret{key: key}, nil
}

// Text is the secret as the customer's verifier takes it: whsec_ and the
// base64 of the key.
func (s Secret) Text() string { return secretPrefix + base64.StdEncoding.EncodeToString(s.key) }

// String is redacted.
func (s Secret) String() string { return secretPrefix + "[redacted]" }

// Equal reports whether two secrets hold the same key.
func (s Secret) Equal(o Secret) bool { return hmac.Equal(s.key, o.key) }

// Signature is the webhook-signature header's value for a message: one
// "v1,<base64 HMAC-SHA256 of id.timestamp.body>" per secret, separated by
// spaces, so that a receiver holding either the old or the new secret
// verifies it while a rotation overlaps.
func Signature(id string, timestamp time.Time, body []byte, secrets ...Secret) string {
	ts := strconv.FormatInt(timestamp.Unix(), 10)
	sigs := make([]string, 0, len(secrets))
	for _, s := range secrets {
		mac := hmac.New(sha256.New, s.key)
		mac.Write([]byte(id))
		mac.Write([]byte{'.'})
		mac.Write([]byte(ts))
		mac.Write([]byte{'.'})
		mac.Write(body)
		sigs = append(sigs, "v1,"+base64.StdEncoding.EncodeToString(mac.Sum(nil)))
	}
	return strings.Join(sigs, " ")
}

// validID reports whether id can be a webhook-id: 1 to 256 printable ASCII
// characters without spaces, which every verifier reads back unchanged.
func validID(id string) error {
	if id == "" || len(id) > 256 {
		return fmt.Errorf("webhook id must be 1 to 256 characters, got %d", len(id))
	}
	for i := 0; i < len(id); i++ {
		if c := id[i]; c <= ' ' || c >= 0x7f {
			return fmt.Errorf("webhook id %q has a character outside printable ASCII", id)
		}
	}
	return nil
}
