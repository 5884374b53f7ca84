package webhookhttp

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/parley-dev/parley/internal/webhook"
)

// Signature is the webhook-signature header's value for a message: one
// "v1,<base64 HMAC-SHA256 of id.timestamp.body>" per secret, separated by
// spaces, so that a receiver holding either the old or the new secret
// verifies it while a rotation overlaps.
func Signature(id string, timestamp time.Time, body []byte, secrets ...webhook.Secret) string {
	ts := strconv.FormatInt(timestamp.Unix(), 10)
	sigs := make([]string, 0, len(secrets))
	for _, s := range secrets {
		mac := hmac.New(sha256.New, s.Key())
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
