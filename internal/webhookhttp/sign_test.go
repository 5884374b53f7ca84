package webhookhttp

import (
	"testing"
	"time"

	"github.com/parley-dev/parley/internal/webhook"
)

// The example of the Standard Webhooks libraries' own tests, which the
// pinned reference library also signs so.
func TestSignatureKnownAnswer(t *testing.T) {
	t.Parallel()
	s, err := webhook.ParseSecret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
	if err != nil {
		t.Fatal(err)
	}
	got := Signature("msg_p5jXN8AQM9LWM0D4loKWxJek", time.Unix(1614265330, 0), []byte(`{"test": 2432232314}`), s)
	if want := "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="; got != want {
		t.Fatalf("Signature = %s, want %s", got, want)
	}
}

func TestSendRefusesBadDeliveries(t *testing.T) {
	t.Parallel()
	s := NewSender(NewClient(Policy{}, time.Second))
	for name, d := range map[string]webhook.Attempt{
		"no id":      {URL: "https://example.invalid/", Secrets: []webhook.Secret{webhook.NewSecret()}},
		"spaced id":  {URL: "https://example.invalid/", ID: "msg 1", Secrets: []webhook.Secret{webhook.NewSecret()}},
		"no secrets": {URL: "https://example.invalid/", ID: "msg_1"},
	} {
		if _, err := s.Send(t.Context(), d); err == nil {
			t.Errorf("%s: Send succeeded", name)
		}
	}
}

// While a rotation overlaps each secret adds its own signature, in order.
func TestSignatureRotation(t *testing.T) {
	t.Parallel()
	a, b := webhook.NewSecret(), webhook.NewSecret()
	ts := time.Unix(1700000000, 0)
	both := Signature("msg_1", ts, []byte("{}"), a, b)
	if want := Signature("msg_1", ts, []byte("{}"), a) + " " + Signature("msg_1", ts, []byte("{}"), b); both != want || Signature("msg_1", ts, []byte("{}"), a) == Signature("msg_1", ts, []byte("{}"), b) {
		t.Fatalf("Signature with two secrets = %q, want %q", both, want)
	}
}
