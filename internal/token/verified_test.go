package token

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/parley-dev/parley/internal/auth"
)

func TestVerifiedTokensAreRememberedOnlyUntilExp(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	clock := testNow
	m := f.manager(t, Options{Leeway: 30 * time.Second, Now: func() time.Time { return clock }}, "A")
	iss, err := m.Issue(uuid.New(), auth.KindUser, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	first, err := m.Verify(iss.Token)
	if err != nil {
		t.Fatal(err)
	}
	if again, err := m.Verify(iss.Token); err != nil || again != first {
		t.Fatalf("second Verify = %+v, %v; want %+v", again, err, first)
	}
	// Within the leeway after exp the full check still accepts it...
	clock = iss.ExpiresAt.Add(10 * time.Second)
	if _, err := m.Verify(iss.Token); err != nil {
		t.Errorf("refused within the leeway: %v", err)
	}
	// ...and past it nothing remembered lets it through.
	clock = iss.ExpiresAt.Add(31 * time.Second)
	if _, err := m.Verify(iss.Token); !errors.Is(err, auth.ErrUnauthenticated) {
		t.Errorf("expired token: err = %v, want unauthenticated", err)
	}
}

func TestVerifiedTokensMatchOnExactText(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	m := f.manager(t, Options{}, "A")
	iss, err := m.Issue(uuid.New(), auth.KindUser, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Verify(iss.Token); err != nil {
		t.Fatal(err)
	}
	// The same token with one character of its signature changed. Not the
	// last: base64url's final character of a 64-byte signature carries
	// padding bits that lenient decoders ignore, so changing it can leave
	// the signature's bytes, and so its validity, as they were.
	sig := strings.LastIndexByte(iss.Token, '.') + 1
	swap := byte('A')
	if iss.Token[sig] == 'A' {
		swap = 'B'
	}
	forged := iss.Token[:sig] + string(swap) + iss.Token[sig+1:]
	if _, err := m.Verify(forged); !errors.Is(err, auth.ErrUnauthenticated) {
		t.Errorf("altered signature after a good verify: err = %v, want unauthenticated", err)
	}
}

func TestVerifiedCacheStaysBounded(t *testing.T) {
	t.Parallel()
	var c verifiedCache
	exp := testNow.Add(time.Hour)
	for i := range 3 * verifiedCacheSize {
		c.put(fmt.Sprintf("token-%d", i), auth.Principal{ExpiresAt: exp}, testNow)
	}
	if n := len(c.entries); n > verifiedCacheSize {
		t.Errorf("%d entries, want at most %d", n, verifiedCacheSize)
	}
	if _, ok := c.get(fmt.Sprintf("token-%d", 3*verifiedCacheSize-1), testNow); !ok {
		t.Error("the newest token was not remembered")
	}
	if _, ok := c.get("token-1", exp); ok {
		t.Error("a token was taken at its exp")
	}
}

// BenchmarkVerifyUncached is the full check a token gets the first time a
// replica sees it; BenchmarkVerify (the same token again) is the cached path.
func BenchmarkVerifyUncached(b *testing.B) {
	for _, alg := range []string{"EdDSA", "ES256"} {
		m := benchmarkManagers(b)[alg]
		iss, err := m.Issue(uuid.New(), auth.KindUser, time.Hour)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(alg, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := m.verify(iss.Token); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
