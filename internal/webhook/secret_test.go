package webhook

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

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
	if !strings.HasPrefix(a.Text(), "whsec_") || len(a.Key()) != 32 {
		t.Fatalf("Text() = %s with a %d-byte key, want whsec_ and 32 bytes", a.Text(), len(a.Key()))
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
}
