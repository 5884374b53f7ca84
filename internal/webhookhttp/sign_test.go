package webhookhttp

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

// The example of the Standard Webhooks libraries' own tests, which the
// pinned reference library also signs so.
func TestSignatureKnownAnswer(t *testing.T) {
	t.Parallel()
	s, err := ParseSecret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
	if err != nil {
		t.Fatal(err)
	}
	got := Signature("msg_p5jXN8AQM9LWM0D4loKWxJek", time.Unix(1614265330, 0), []byte(`{"test": 2432232314}`), s)
	if want := "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="; got != want {
		t.Fatalf("Signature = %s, want %s", got, want)
	}
}

func TestSecrets(t *testing.T) {
	t.Parallel()
	a, b := NewSecret(), NewSecret()
	if a.Equal(b) {
		t.Fatal("two new secrets are equal")
	}
	parsed, err := ParseSecret(a.Text())
	if err != nil || !parsed.Equal(a) {
		t.Fatalf("ParseSecret(Text()) = %v, %v", parsed, err)
	}
	if !strings.HasPrefix(a.Text(), "whsec_") || len(a.key) != 32 {
		t.Fatalf("Text() = %s with a %d-byte key, want whsec_ and 32 bytes", a.Text(), len(a.key))
	}
	if s := fmt.Sprint(a); strings.Contains(s, a.Text()[6:]) {
		t.Fatalf("a printed secret shows its key: %s", s)
	}
	for _, bad := range []string{"", "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_", "whsec_not base64!",
		"whsec_" + strings.Repeat("A", 28) /* 21 bytes */, "whsec_" + strings.Repeat("A", 88) /* 66 bytes */} {
		if _, err := ParseSecret(bad); !errors.Is(err, ErrBadSecret) {
			t.Errorf("ParseSecret(%q) = %v, want ErrBadSecret", bad, err)
		}
	}
	// Rotation: one signature per secret, in order, space-separated.
	ts := time.Unix(1700000000, 0)
	both := Signature("msg_1", ts, []byte("{}"), a, b)
	if want := Signature("msg_1", ts, []byte("{}"), a) + " " + Signature("msg_1", ts, []byte("{}"), b); both != want {
		t.Fatalf("Signature with two secrets = %q, want %q", both, want)
	}
}

func TestSendRefusesBadDeliveries(t *testing.T) {
	t.Parallel()
	s := NewSender(NewClient(Policy{}, time.Second))
	for name, d := range map[string]Delivery{
		"no id":      {URL: "https://example.invalid/", Secrets: []Secret{NewSecret()}},
		"spaced id":  {URL: "https://example.invalid/", ID: "msg 1", Secrets: []Secret{NewSecret()}},
		"no secrets": {URL: "https://example.invalid/", ID: "msg_1"},
	} {
		if _, err := s.Send(t.Context(), d); err == nil {
			t.Errorf("%s: Send succeeded", name)
		}
	}
}
